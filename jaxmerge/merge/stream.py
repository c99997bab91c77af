"""Streaming merge: ``jaxmerge merge`` into a checkpoint of any depth with the memory of one window.

    stream_merge(base, sources, out, method="ties")                 # a folded checkpoint
    stream_merge(base, sources, out, method="linear", fmt="peft")   # an exact PEFT adapter

Pass 1 inspects every adapter (``jaxmerge.pool.load.inspect_sources``: metadata only). Then, window by
window of ``layers_per_step`` layers, the adapters' factors of the window are read from their
safetensors memory maps (``build_pool(layers=…)``), each module's ΔW of the window is merged by the
registry's function (``static.merge_window``) and — ``fmt="model"`` — added in float32 to W read from
the base's memory map, cast to the output dtype (bf16 stays bf16) and written to its place in its
output shard (``jaxmerge.pool.shards.StreamWriter``); ``fmt="peft"`` writes the window's factors
(exact, or the best rank-r). Every other tensor of the base is copied in row blocks. Peak memory: one
window of factors and deltas, one W, one row block — independent of the number of layers (tested in a
subprocess on a generated multi-layer checkpoint).

The output is built in ``jaxmerge.atomic.partial_dir(out)`` and published whole: a run killed at any
point (SIGKILL included) leaves nothing under ``out``, and the same command run again resumes after
the last completed window. ``job.json`` fingerprints the base (config, index, file sizes and times),
the adapters' content digests, method, parameters, weights, seed, format and dtype; a different job
starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Mapping, Sequence

import jax
import numpy as np

from .. import __version__
from ..atomic import partial_dir, publish, write_json
from ..config import MODULES, ModelConfig
from ..errors import UserError
from ..hf_write import SHARD_BYTES
from ..params import abstract_params, hf_key, resolve
from ..pool.export import layer_folds, pad_rank, peft_factors, peft_plan, write_peft_config
from ..pool.shards import INDEX, Checkpoint, Plan, StreamWriter, copy_side_files, weight_key
from ..pool.filters import FilterPolicy
from ..pool.load import build_pool, inspect_sources
from ..pool.peft_write import lora_key
from ..progress import bar
from . import registry
from .sparse import uniform_noise
from .static import factored_window, merge_window, method_and_params

FORMATS = ("model", "peft")


class NothingKept(UserError):
    """No adapter passed the filter."""


def check_request(method: str, fmt: str, rank: int | None, weights, params: Mapping | None = None):
    """Everything the arguments alone decide (before any file is read): (MergeMethod, params)."""
    m, p = method_and_params(method, **(params or {}))
    if fmt not in FORMATS:
        raise UserError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if rank is not None and (fmt != "peft" or rank < 1):
        raise UserError(f"rank {rank}: only for the peft format, and ≥ 1")
    if weights is not None and not registry.takes_weights(method):
        raise registry.MergeMethodError(f"merge method {method!r} takes no weights (it weighs every adapter 1/N; "
                                        "use 'linear')")
    return m, p


def _base_fingerprint(folder: str, ckpt: Checkpoint | None) -> dict:
    h = hashlib.sha256()
    for name in ("config.json", INDEX):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    files = sorted({f.path for f in ckpt.files.values()}) if ckpt else []
    stats = [(os.path.basename(p), os.path.getsize(p), os.path.getmtime(p)) for p in files]
    return {"path": os.path.abspath(folder), "config_index_sha256": h.hexdigest(), "files": stats}


def _expected_keys(config: ModelConfig) -> dict[str, tuple]:
    """transformers key → shape of every parameter the config declares."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]:
        names = tuple(p.key for p in path)
        if names[0] == "layers":
            out.update({hf_key(names, l): leaf.shape[1:] for l in range(leaf.shape[0])})
        else:
            out[hf_key(names)] = leaf.shape
    return out


def _check_checkpoint(ckpt: Checkpoint, config: ModelConfig, folder: str) -> None:
    problems = []
    for key, shape in _expected_keys(config).items():
        if key not in ckpt.files:
            problems.append(f"missing tensor {key!r}")
        elif tuple(ckpt.spec(key)[1]) != tuple(shape):
            problems.append(f"mis-shaped tensor {key!r}: {ckpt.spec(key)[1]}, expected {tuple(shape)}")
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {folder}: " + "; ".join(problems[:5])
                        + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))


def stream_merge(base: str, sources: Sequence, out: str, *, method: str = "average", params: Mapping | None = None,
                 weights: Mapping[str, float] | Sequence[float] | None = None, fmt: str = "model",
                 rank: int | None = None, dtype=None, shard_bytes: int = SHARD_BYTES,
                 policy: FilterPolicy | None = None, seed: int = 0, layers_per_step: int = 1, progress: bool = True,
                 noise=uniform_noise, replace: bool = False, on_window=None) -> dict:
    """Merge the adapters of ``sources`` into ``out`` (see the module docstring); returns a summary.

    ``params``: the method's parameters by name (default: its recipe); ``weights``: per kept adapter,
    by source (a mapping; skipped adapters' weights are dropped) or in order; ``dtype``: of the written
    tensors (default: each tensor's dtype in the base for ``model``, float32 for ``peft``);
    ``seed``: the key of methods that draw masks; ``on_window(first_layer, stage)``: called when a window's
    tensors are queued for writing (``"written"``) and, on the writer thread, when they are recorded durably
    (``"recorded"``)."""
    t0 = time.perf_counter()
    m, p = check_request(method, fmt, rank, weights, params)
    if os.path.lexists(out) and not replace:
        raise UserError(f"{out} exists; choose another output folder or remove it")
    folder = resolve(base)
    config = ModelConfig.from_json(folder)
    ckpt = Checkpoint(folder) if fmt == "model" else None
    if ckpt is not None:
        _check_checkpoint(ckpt, config, folder)
    infos, report = inspect_sources(sources, config, policy or FilterPolicy(), progress=progress)
    tmp = partial_dir(out)
    if not infos:
        report.save(os.path.join(tmp, "report.json"))
        raise NothingKept(f"no adapter was kept (reasons in {tmp}/report.json)")
    names = [i.source for i in infos]
    L = config.num_hidden_layers
    w = registry.resolve_weights(method, len(infos), L, [weights[n] for n in names] if isinstance(weights, Mapping)
                                 else weights)
    key = jax.random.key(seed)
    windows = [(l0, min(layers_per_step, L - l0)) for l0 in range(0, L, layers_per_step)]
    first = build_pool(infos, config, layers=range(*windows[0]))  # every window has its shapes
    modules = list(first.modules)
    if fmt == "model":
        merged = [weight_key(mod, l) for l in range(L) for mod in modules]
        own = {k: ckpt.spec(k) for k in ckpt.keys()}
        out_dtype = {k: np.dtype(dtype) if dtype is not None else own[k][0] for k in own}
        passthrough = [k for k in ckpt.keys() if k not in set(merged)]
        plan = Plan.make([(k, out_dtype[k], own[k][1]) for k in passthrough + merged], shard_bytes)
        plan_dtype = out_dtype
    else:
        if rank is not None:
            r = rank
        elif m.factored is not None:
            r = max(factored_window(s, m, p, w[:, :windows[0][1]]).a.shape[1] for s in first.modules.values())
        else:
            r = max(i.rank(mod) for i in infos for mod in modules)  # PEFT's default for its SVD combinations
        plan = peft_plan(config, modules, r, np.dtype(dtype or np.float32))
    fingerprint = {"base": _base_fingerprint(folder, ckpt), "adapters": [[i.source, i.digest] for i in infos],
                   "method": method, "params": dataclasses.asdict(p), "weights": w.tolist(), "seed": seed,
                   "format": fmt, "rank": rank, "dtype": None if dtype is None else str(np.dtype(dtype)),
                   "layers_per_step": layers_per_step, "version": __version__}
    writer = StreamWriter(tmp, plan, fingerprint)
    if fmt == "model":
        for k in passthrough:
            if not writer.is_done(k):
                writer.write(k, ckpt[k])
        writer.checkpoint()

    def window_keys(l0, n):
        if fmt == "model":
            return [weight_key(mod, l) for l in range(l0, l0 + n) for mod in modules]
        return [lora_key(l, mod, f) for l in range(l0, l0 + n) for mod in modules for f in "AB"]

    done_layers = sum(n for l0, n in windows if all(writer.is_done(k) for k in window_keys(l0, n)))
    with bar(L, f"merge {method}", "layer", progress, initial=done_layers) as pbar:
        for l0, n in windows:
            if all(writer.is_done(k) for k in window_keys(l0, n)):
                continue
            pool = first if l0 == 0 else build_pool(infos, config, layers=range(l0, l0 + n))
            wl = w[:, l0:l0 + n]
            for mod, stack in pool.modules.items():
                if fmt == "model":  # an exactly low-rank merge is folded from its factors, never dense
                    f = factored_window(stack, m, p, wl)
                    fold_layer = layer_folds(f if f is not None else
                                             merge_window(stack, mod, m, p, wl, l0, key=key, noise=noise))
                    for j in range(n):
                        k = weight_key(mod, l0 + j)
                        if not writer.is_done(k):
                            writer.write(k, fold_layer(j, ckpt[k], plan_dtype[k]))
                else:
                    f = factored_window(stack, m, p, wl)
                    d = f if f is not None else merge_window(stack, mod, m, p, wl, l0, key=key, noise=noise)
                    b, a = pad_rank(*peft_factors(d, rank if f is not None else r), r)
                    for j in range(n):
                        writer.write(lora_key(l0 + j, mod, "A"), a[j])
                        writer.write(lora_key(l0 + j, mod, "B"), b[j])
                del stack
            del pool
            if on_window:
                on_window(l0, "written")
            writer.checkpoint(on_durable=(lambda l0=l0: on_window(l0, "recorded")) if on_window else None)
            pbar.update(n)
    resumed = writer.resumed
    writer.finish()
    if fmt == "model":
        copy_side_files(folder, tmp, dtype)
    else:
        write_peft_config(tmp, r, modules, base_model_name_or_path=base)
    report.save(os.path.join(tmp, "report.json"))
    summary = {"method": method, "params": dataclasses.asdict(p), "format": fmt, "rank": rank, "seed": seed,
               "adapters": names, "weights": w.tolist(), "base": base, "resumed": resumed,
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json(os.path.join(tmp, "merge.json"), summary)
    publish(tmp, out, replace=replace)
    return {**summary, "out": out}

