"""``jaxmerge pool fetch MANIFEST|IDS…``: download exactly the allow-listed files of each hub adapter.

Allow-listed (``sources.HUB_FILES``): ``adapter_config.json``, ``adapter_model.safetensors`` and the
model card ``README.md`` (its front matter carries the licence the paper's filter needs) — never a
pickle ``.bin``, nothing else. Files go into the Hugging Face cache (``--cache-dir`` or the default),
where ``load_pool`` / ``--pool`` then find them, offline too.

* parallel (a thread per adapter, ``workers`` at a time), with a progress bar (``jaxmerge.progress``);
* resumable: an adapter whose required files are already cached is not contacted again, and
  huggingface_hub resumes a partial file;
* every adapter ends in one report row and none stops the rest: ``fetched`` / ``cached`` (ok),
  ``missing`` (no such repository, or no adapter config / weights in it), ``gated``, ``pickle-only``
  (only ``adapter_model.bin``), ``config mismatch`` (the downloaded config disagrees with what the
  manifest recorded: reported here and never merged by ``load_pool``), ``offline`` (``HF_HUB_OFFLINE``
  and not cached), ``error`` (anything else, with its message);
* ``dry_run``: what would be fetched, from the cache alone — no network.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os

from ..atomic import write_json
from ..progress import track
from .sources import HUB_FILES, Source, expand_sources

REQUIRED = ("adapter_config.json", "adapter_model.safetensors")
OK = ("fetched", "cached", "would fetch")
FAILURES = ("missing", "gated", "pickle-only", "config mismatch", "offline", "error")


@dataclasses.dataclass
class FetchReport:
    rows: list[dict]  # {"id", "status", "reason", "files", "folder"}

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in FAILURES]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def summary(self) -> str:
        c = self.counts()
        lines = [f"{len(self.rows)} adapters: " + ", ".join(f"{n} {s}" for s, n in c.items())]
        for r in self.failed:
            lines.append(f"  {r['status']:<15} {r['id']}: {r['reason']}")
        return "\n".join(lines)

    def save(self, path: str) -> None:
        write_json(path, {"adapters": self.rows, "counts": self.counts()}, indent=1)


def _cached(repo_id: str, cache_dir) -> dict[str, str]:
    """The allow-listed files of ``repo_id`` already in the cache: ``{name: path}`` (no network)."""
    from huggingface_hub import try_to_load_from_cache
    out = {}
    for name in HUB_FILES:
        p = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(p, str):
            out[name] = p
    return out


def _check_manifest(src: Source, config_path: str) -> str | None:
    """Why the fetched config disagrees with the manifest's record, or None."""
    if src.expected is None:
        return None
    from .peft_format import AdapterConfig, AdapterError
    try:
        with open(config_path) as f:
            cfg = AdapterConfig.from_dict(json.load(f))
    except (ValueError, AdapterError) as e:
        return f"unreadable adapter_config.json: {e}"
    return src.expected.mismatch(cfg)


def _row(src: Source, status: str, reason: str = "", files=()) -> dict:
    """``files``: names (to fetch, for a dry run) or ``{name: cached path}``; ``folder``: the snapshot."""
    folder = os.path.dirname(next(iter(files.values()))) if isinstance(files, dict) and files else None
    return {"id": src.spec, "status": status, "reason": reason, "files": sorted(files), "folder": folder}


def fetch_one(src: Source, cache_dir=None, dry_run: bool = False, endpoint: str | None = None) -> dict:
    """Fetch one hub adapter's allow-listed files; never raises (the failure is the row)."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        have = _cached(src.spec, cache_dir)
        if all(f in have for f in REQUIRED):
            why = _check_manifest(src, have["adapter_config.json"])
            return _row(src, "config mismatch", why, have) if why else _row(src, "cached", "", have)
        if dry_run:
            return _row(src, "would fetch", "", [f for f in HUB_FILES if f not in have])
        if constants.HF_HUB_OFFLINE:
            return _row(src, "offline", "not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading")
        names = {s.rfilename for s in (HfApi(endpoint=endpoint).model_info(src.spec).siblings or [])}
        if "adapter_config.json" not in names:
            return _row(src, "missing", "no adapter_config.json in the repository (not a PEFT adapter)")
        if "adapter_model.safetensors" not in names:
            if "adapter_model.bin" in names:
                return _row(src, "pickle-only", "only adapter_model.bin (pickle): never downloaded or unpickled")
            return _row(src, "missing", "no adapter_model.safetensors in the repository")
        got = {}
        for name in HUB_FILES:
            if name in names:
                got[name] = hf_hub_download(src.spec, name, cache_dir=cache_dir, endpoint=endpoint)
        why = _check_manifest(src, got["adapter_config.json"])
        return _row(src, "config mismatch", why, got) if why else _row(src, "fetched", "", got)
    except GatedRepoError:
        return _row(src, "gated", "gated repository: accept its licence on the hub and log in (hf auth login)")
    except RepositoryNotFoundError:
        return _row(src, "missing", "no such repository on the hub (or it is private)")
    except Exception as e:  # noqa: BLE001 — one adapter's failure never stops the rest
        return _row(src, "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


@contextlib.contextmanager
def _quiet_hub_bars():
    """Our bar counts adapters; huggingface_hub's per-file bars from parallel threads would interleave."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    was = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            enable_progress_bars()


def fetch(sources, *, cache_dir=None, dry_run: bool = False, workers: int = 8, progress: bool = True,
          endpoint: str | None = None) -> FetchReport:
    """Fetch every hub adapter of ``sources`` (manifest names or files, hub ids, list files); local
    folders are listed as ``cached``. Rows in source order."""
    srcs = expand_sources(sources)
    rows: list = [None] * len(srcs)
    with _quiet_hub_bars(), cf.ThreadPoolExecutor(max(1, workers)) as ex:
        futs = {}
        for i, s in enumerate(srcs):
            if s.error:
                rows[i] = _row(s, "error", s.error)
            elif not s.hub:
                rows[i] = _row(s, "cached", "local folder")
            else:
                futs[ex.submit(fetch_one, s, cache_dir, dry_run, endpoint)] = i
        for fut in track(cf.as_completed(futs), total=len(futs), desc="fetch adapters", unit="adapter",
                         enabled=progress):
            rows[futs[fut]] = fut.result()
    return FetchReport(rows)
