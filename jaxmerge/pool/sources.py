"""Where adapters come from: folders, folders of folders, text files of paths or hub ids, hub ids, and
pool manifests (``jaxmerge.pool.manifest``: a shipped name such as ``paper-llama31-8b``, or its JSON).

``expand_sources`` turns what a user typed into one ``Source`` per adapter (order kept, nothing read
but directory listings and manifests). What the user typed must exist: a mistyped path is a
``SourceError`` naming it, never a silently smaller pool. Lines of a list file and manifest entries
are per-adapter: one that cannot be an adapter becomes a report row, never the end of the load.

``resolve`` gives a local folder for a source: a folder as is; a hub id through
``huggingface_hub.hf_hub_download`` of exactly ``HUB_FILES`` (``adapter_config.json``,
``adapter_model.safetensors``, ``README.md``; cache, ``cache_dir`` and ``HF_HUB_OFFLINE`` honoured; a
pickle ``adapter_model.bin`` is never fetched). A source that cannot be resolved raises ``OSError`` with
the reason, which the loaders turn into its report row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from ..errors import UserError
from . import manifest
from .manifest import Entry

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
HUB_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class SourceError(UserError, FileNotFoundError):
    """A pool source the user named that is not there (a mistyped path); the message names it."""


@dataclasses.dataclass(frozen=True)
class Source:
    spec: str                  # as the user gave it (a path or a hub id); the report's ``source``
    hub: bool = False          # a hub id (contributor = owner; license checked)
    error: str | None = None   # why it cannot be an adapter at all
    expected: Entry | None = None  # the config a manifest recorded for it (checked after download)

    @property
    def contributor(self) -> str:
        return self.spec.split("/")[0] if self.hub else "(local)"


def is_adapter_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ADAPTER_FILES)


def is_shapes_file(path: str) -> bool:
    """A JSON list of adapter shapes without ids (like ``llama31_8b_pool_shapes.json``): statistics only."""
    if not (os.path.isfile(path) and path.endswith(".json")) or manifest.is_manifest(path):
        return False
    try:
        with open(path) as f:
            return isinstance(json.load(f).get("adapters"), list)
    except (ValueError, AttributeError, OSError):
        return False


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.startswith(".")


def check_source(spec: str | os.PathLike) -> None:
    """Raise ``SourceError`` unless ``spec`` exists, is a manifest or can be a hub id. A string like
    ``adapters/lora1`` whose first part is a local folder is a mistyped path, not a hub id."""
    spec = os.fspath(spec)
    if os.path.exists(spec) or manifest.is_manifest(spec):
        return
    first = spec.split("/", 1)[0]
    if is_hub_id(spec) and not os.path.isdir(first):
        return
    why = (f"no such file or folder ({first}/ exists, so it is not read as a hub id)" if os.path.isdir(first)
           else "no such file or folder, not a pool manifest "
           f"({', '.join(manifest.names())}), and not a hub id 'owner/name'")
    raise SourceError(f"pool source {spec}: {why}")


def expand_sources(sources) -> list[Source]:
    """One ``Source`` per adapter, in the order given (folders walked in sorted order)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Source] = []
    for s in sources:
        s = os.fspath(s)
        check_source(s)
        if is_adapter_dir(s):
            out.append(Source(s))
        elif os.path.isdir(s):
            found = []
            for root, dirs, _ in os.walk(s):
                dirs.sort()
                for d in list(dirs):
                    if is_adapter_dir(os.path.join(root, d)):
                        found.append(os.path.join(root, d))
                        dirs.remove(d)  # an adapter folder is a leaf
            if not found:
                raise SourceError(f"pool source {s}: a folder with no adapter folders under it")
            out += [Source(p) for p in found]
        elif manifest.is_manifest(s):
            out += [Source(e.id, hub=True, expected=e if e.recorded else None) for e in manifest.load(s).entries]
        elif os.path.isfile(s) and not is_shapes_file(s):
            out += _read_list(s)
        elif os.path.isfile(s):
            out.append(Source(s, error="a shapes file describes adapters but holds no weights (stats only)"))
        else:
            out.append(Source(s, hub=True))
    return out


def _read_list(path: str) -> list[Source]:
    out = []
    here = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            local = line if os.path.exists(line) else os.path.join(here, line)
            if os.path.exists(local):
                out += expand_sources([local]) if os.path.isdir(local) else [Source(line, error="not a folder")]
            elif is_hub_id(line):
                out.append(Source(line, hub=True))
            else:
                out.append(Source(line, error="no such folder, and not a hub id 'owner/name'"))
    return out


def resolve(source: Source, cache_dir: str | None = None, local_only: bool = False) -> str:
    """A local folder holding the source's files; raises ``OSError`` with the reason otherwise.
    ``local_only``: from the cache alone (no network, whatever ``HF_HUB_OFFLINE`` says)."""
    if source.error:
        raise OSError(source.error)
    if not source.hub:
        return source.spec
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from ..params import hub_failure
    folder = None
    for name in HUB_FILES:
        try:
            folder = os.path.dirname(hf_hub_download(source.spec, name, cache_dir=cache_dir,
                                                     local_files_only=local_only))
        except LocalEntryNotFoundError as e:  # offline (or no connection) and not cached
            if name == "adapter_config.json":
                raise OSError(hub_failure(source.spec, e, cache_dir)) from None
        except EntryNotFoundError:
            continue  # README or safetensors absent: reported by the checks that need them
        except Exception as e:  # noqa: BLE001 — gated, missing, network: one line naming the id
            raise OSError(hub_failure(source.spec, e, cache_dir)) from None
    if folder is None:
        raise OSError("hub repository has no adapter_config.json")
    return folder
