"""The paper's Appendix A tables for any pool: adapters per contributor, ranks, target-module combinations.

Read from ``adapter_config.json`` and the safetensors header only (no tensor data), so statistics
over hundreds of adapters take seconds. The modules an adapter touches are those its weight keys
name; an adapter whose config or weights cannot be read is listed as unreadable, never counted.
Combinations are labelled as in the paper ("FFW (Down, Gate, Up) + Attn (K, O, Q, V) + LM_Head"), or
per layer ("L30.K + L30.V") when an adapter covers only some layers. A shapes file
(``{"adapters": [{"r", "lora_alpha", "target_modules"}]}``) and a pool manifest (its recorded configs,
no download) are accepted as sources too.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..models.schema import BLOCK, MODULES
from ..safetensors_io import SafeFile
from .peft_format import parse_key
from . import manifest
from .sources import expand_sources, is_shapes_file, resolve

# the paper's labels: q_proj → "Q", gate_proj → "Gate"; grouped by the schema's block
_LABEL = {m: m.removesuffix("_proj").capitalize() for m in MODULES}
_ATTN = {m: _LABEL[m] for m in MODULES if BLOCK[m] == "self_attn"}
_FFW = {m: _LABEL[m] for m in MODULES if BLOCK[m] == "mlp"}
PERCENTILES = (25, 50, 75, 90, 95, 99)


def _short(target: str) -> str:
    leaf = target.rsplit(".", 1)[-1]
    return {"lm_head": "LM_Head", "embed_tokens": "Embed"}.get(leaf, leaf)


def adapter_record(folder: str, source: str, contributor: str) -> dict:
    """``{source, contributor, r, alpha, modules: sorted names, layers: {module: [layer...]}}``; raises
    ``OSError``/``ValueError`` for an adapter whose config or weights cannot be read (never counted as an
    ordinary adapter from its config alone)."""
    with open(os.path.join(folder, "adapter_config.json")) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError("adapter_config.json is not a JSON object")
    weights = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.exists(weights):
        raise OSError("only adapter_model.bin (pickle): never read" if
                      os.path.exists(os.path.join(folder, "adapter_model.bin")) else "no adapter_model.safetensors")
    modules, layers = set(), {}
    try:
        keys = SafeFile(weights).keys()
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable adapter_model.safetensors: {e}") from None
    for key in keys:
        k = parse_key(key)
        if k.kind == "lora":
            modules.add(k.module)
            layers.setdefault(k.module, set()).add(k.layer)
        elif k.kind in ("other_lora", "unknown_module"):
            modules.add(_short(k.target))
    return {"source": source, "contributor": contributor, "r": cfg.get("r"), "alpha": cfg.get("lora_alpha"),
            "modules": sorted(modules), "layers": {m: sorted(v) for m, v in layers.items()}}


def _recorded(source: str, contributor: str, r, alpha, targets) -> dict:
    """A record from a recorded config (a shapes file or a manifest entry): no weights, so no layers."""
    tm = targets or []
    return {"source": source, "contributor": contributor, "r": r, "alpha": alpha,
            "modules": sorted(map(_short, [tm] if isinstance(tm, str) else tm)), "layers": {}}


def collect(sources, cache_dir: str | None = None) -> tuple[list[dict], list[dict]]:
    """Records of every readable adapter, and ``{source, reason}`` for the unreadable ones. A manifest's
    entries use their recorded configs; entries without one are read from the hub cache when fetched,
    else counted with an unknown config (``r`` None)."""
    records, errors = [], []
    for s in sources if not isinstance(sources, (str, os.PathLike)) else [sources]:
        s = os.fspath(s)
        if is_shapes_file(s):
            with open(s) as f:
                for i, a in enumerate(json.load(f)["adapters"]):
                    records.append(_recorded(f"{s}#{i}", "(unknown)", a.get("r"), a.get("lora_alpha"),
                                             a.get("target_modules")))
            continue
        for src in expand_sources([s]):
            entry = src.expected
            if entry is not None:
                records.append(_recorded(src.spec, src.contributor, entry.r, entry.lora_alpha, entry.target_modules))
                continue
            in_manifest = manifest.is_manifest(s)  # an id without a recorded config: from the cache, if fetched
            try:
                folder = resolve(src, cache_dir, local_only=in_manifest)
            except OSError as e:
                if in_manifest:
                    records.append(_recorded(src.spec, src.contributor, None, None, None))
                else:
                    errors.append({"source": src.spec, "reason": str(e)})
                continue
            try:
                records.append(adapter_record(folder, src.spec, src.contributor))
            except (OSError, ValueError) as e:
                errors.append({"source": src.spec, "reason": str(e)})
    return records, errors


def combination(rec: dict, num_layers: int) -> str:
    mods = set(rec["modules"])
    partial = [m for m in mods if m in rec["layers"] and len(rec["layers"][m]) < num_layers]
    if partial:
        return " + ".join(f"L{l}.{_ATTN.get(m) or _FFW.get(m)}" for l, m in
                          sorted((l, m) for m in mods if m in rec["layers"] for l in rec["layers"][m]))
    parts = []
    ffw = sorted(_FFW[m] for m in mods if m in _FFW)
    attn = sorted(_ATTN[m] for m in mods if m in _ATTN)
    if ffw:
        parts.append(f"FFW ({', '.join(ffw)})")
    if attn:
        parts.append(f"Attn ({', '.join(attn)})")
    rest = sorted(m for m in mods if m not in _FFW and m not in _ATTN)
    parts += [m for m in ("Embed", "LM_Head") if m in rest] + [m for m in rest if m not in ("Embed", "LM_Head")]
    return " + ".join(parts) or "(none)"


def pool_stats(records: list[dict], num_layers: int | None = None) -> dict:
    """The three tables: contributor percentiles (hub sources only), rank counts, combinations."""
    if num_layers is None:
        num_layers = 1 + max((l for r in records for v in r["layers"].values() for l in v), default=0)
    per: dict[str, int] = {}
    for r in records:
        if r["contributor"] not in ("(local)", "(unknown)"):
            per[r["contributor"]] = per.get(r["contributor"], 0) + 1
    counts = np.asarray(sorted(per.values()), float)
    contributors = None
    if len(counts):
        contributors = {"contributors": len(counts), "avg": float(counts.mean()),
                        **{f"{p}%": float(np.percentile(counts, p)) for p in PERCENTILES}, "max": float(counts.max())}
    ranks: dict[str, int] = {}
    combos: dict[str, int] = {}
    for r in records:
        rank = "unknown" if r["r"] is None else str(r["r"])
        ranks[rank] = ranks.get(rank, 0) + 1
        c = combination(r, num_layers) if r["r"] is not None else "(config unknown)"
        combos[c] = combos.get(c, 0) + 1
    order = lambda d: dict(sorted(d.items(), key=lambda x: (-x[1], x[0])))
    return {"num_adapters": len(records), "adapters_per_contributor": contributors, "ranks": order(ranks),
            "target_module_combinations": order(combos)}


def format_stats(stats: dict) -> str:
    lines = [f"{stats['num_adapters']} adapters", "", "(a) adapters per contributor"]
    c = stats["adapters_per_contributor"]
    if c is None:
        lines.append("  (no hub ids among the sources: contributors unknown)")
    else:
        lines.append(f"  {c['contributors']} contributors")
        for k in ["avg", *[f"{p}%" for p in PERCENTILES], "max"]:
            lines.append(f"  {k:>5}  {c[k]:.4g}")
    lines += ["", "(b) rank distribution", "   rank  adapters"]
    lines += [f"  {r:>5}  {n}" for r, n in stats["ranks"].items()]
    lines += ["", "(c) target-module combinations", "  adapters  combination"]
    lines += [f"  {n:8d}  {combo}" for combo, n in stats["target_module_combinations"].items()]
    return "\n".join(lines)
