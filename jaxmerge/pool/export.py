"""Export a merge: a folded Hugging Face checkpoint, or a portable PEFT adapter — written tensor by
tensor into planned safetensors files, so that nothing holds a whole model.

A ``Plan`` lists every output tensor (key, dtype, shape) in the order it is produced and cuts it into
shards of at most ``shard_bytes`` (transformers' ``model-0000i-of-0000n.safetensors`` names, or one
``model.safetensors``). Each shard's header is known up front, so ``StreamWriter`` writes every tensor
straight to its offset; ``checkpoint()`` fsyncs and records the keys done in ``progress.json``; a shard
is renamed to its final name when complete. Reopened on the same plan and fingerprint (``job.json``)
after a kill, the writer keeps what was recorded and the rest is written again — so the streaming merge
(``jaxmerge.merge.stream``) resumes at layer granularity; with another fingerprint it starts over.

``export_model`` / ``export_peft`` are the in-memory entry points (deltas already computed):

* ``export_model``: base weights + ΔW (float32 sum, cast to the checkpoint's dtype), every other tensor
  of the base as it is, config / generation config / tokenizer files copied.
* ``export_peft``: one uniform rank r, ``lora_alpha = r`` (scale folded into B), explicit target list,
  every layer present — what vLLM (r ≤ 512) and TGI load; the config through ``jaxmerge.pool.peft_write``.
  Exact (``rank=None``): factored input keeps its concatenated rows; dense input is factored by SVD at
  its numerical rank. Truncated (``rank=k``): the best rank-k approximation; from factors without a
  dense out×in SVD (QR of B·diag(m) and Aᵀ, SVD of the R×R core, √S to each side) unless R ≥ min(out, in).
  With ``lora_alpha=`` a trained LoRA's own factors and alpha are written unchanged instead.

Einsum letters: l layers, o out, d in, r / k rank rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..atomic import partial_dir, publish, read_json, write_json
from ..config import MODULES, ModelConfig
from ..errors import UserError
from ..hf_write import SHARD_BYTES
from ..lora import Dense, Factored, fold_into
from ..merge.tsv import factor_svd, svd_each
from ..models.schema import module_path
from ..params import Base, hf_key, params_to_hf
from ..safetensors_io import SafeFile, encode_header
from .peft_write import lora_config, lora_key

COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
NUMERICAL_RANK_RTOL = 1e-6
INDEX = "model.safetensors.index.json"


def weight_key(module: str, layer: int) -> str:
    """transformers' key of a projection's weight in one layer."""
    return hf_key(module_path(module), layer)


class Checkpoint:
    """The safetensors tensors of a checkpoint folder by key (index or single file). ``ckpt[key]`` maps
    the tensor from a file opened for that call alone, so its pages are unmapped once the array is
    dropped: reading a whole checkpoint tensor by tensor keeps one tensor resident, not the files."""

    def __init__(self, folder: str):
        index = os.path.join(folder, INDEX)
        if os.path.exists(index):
            files = dict.fromkeys(read_json(index)["weight_map"].values())
        elif os.path.exists(os.path.join(folder, "model.safetensors")):
            files = {"model.safetensors": None}
        else:
            raise UserError(f"{folder}: no model.safetensors or {INDEX} (safetensors checkpoints only)")
        self.files = {}
        for name in files:
            f = SafeFile(os.path.join(folder, name))
            self.files.update({k: f for k in f.keys()})

    def keys(self) -> list[str]:
        return list(self.files)

    def spec(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        return self.files[key].dtype(key), self.files[key].shape(key)

    def __getitem__(self, key: str) -> np.ndarray:
        return SafeFile(self.files[key].path)[key]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Output tensors ``entries [(key, dtype, shape)]`` in production order, cut into ``shards``
    ``[(file name, keys)]``."""
    entries: tuple
    shards: tuple

    @staticmethod
    def make(entries: Iterable[tuple[str, np.dtype, tuple]], shard_bytes: int = SHARD_BYTES,
             single: str | None = None) -> "Plan":
        """Shards filled in order up to ``shard_bytes``; ``single``: one file of that name, never sharded."""
        entries = tuple((k, np.dtype(d), tuple(int(x) for x in s)) for k, d, s in entries)
        groups, size = [[]], 0
        for k, d, s in entries:
            nbytes = int(np.prod(s, dtype=np.int64)) * d.itemsize
            if single is None and groups[-1] and size + nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += nbytes
        n = len(groups)
        names = [single or "model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                                  for i in range(n)]
        return Plan(entries, tuple(zip(names, map(tuple, groups))))


class StreamWriter:
    """Writes a ``Plan`` into ``folder``, any tensor at any time, resumable (see the module docstring)."""

    def __init__(self, folder: str, plan: Plan, fingerprint: Mapping | None):
        """``fingerprint``: what determines the output (JSON); None never resumes (in-memory exports)."""
        self.folder, self.plan = folder, plan
        self._specs = specs = {k: (d, s) for k, d, s in plan.entries}
        self._shard = {}
        self._heads = {}
        for name, keys in plan.shards:
            head, ranges = encode_header({k: specs[k] for k in keys})
            self._heads[name] = (head, len(head) + (max(e for _, e in ranges.values()) if ranges else 0))
            self._shard.update({k: (name, len(head) + lo, hi - lo) for k, (lo, hi) in ranges.items()})
        job = {"fingerprint": fingerprint, "plan": [list(s) for s in plan.shards]}
        jpath, ppath = os.path.join(folder, "job.json"), os.path.join(folder, "progress.json")
        same = fingerprint is not None and read_json(jpath) == json.loads(json.dumps(job))
        self.done = set(read_json(ppath, {}).get("done", [])) if same else set()
        self.resumed = bool(self.done)
        if not same:
            for entry in os.listdir(folder):
                p = os.path.join(folder, entry)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            write_json(jpath, job)
        self._open = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stream-writer")
        self._pending: list = []
        self._pending_ckpt: list = []  # checkpoints queued on the writer thread
        self._closed = {name for name, _ in plan.shards if os.path.exists(self._path(name, True))}
        self._slots = threading.BoundedSemaphore(2)  # at most two tensors waiting to be written

    def _path(self, name: str, final: bool) -> str:
        return os.path.join(self.folder, name if final else f".{name}.partial")

    def _fd(self, name: str) -> int:
        if name not in self._open:
            path = self._path(name, False)
            head, size = self._heads[name]
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(head)
                    f.truncate(size)
            fd = os.open(path, os.O_RDWR)
            if os.pread(fd, len(head), 0) != head:
                os.close(fd)
                raise UserError(f"{path}: its header does not match the plan; delete {self.folder} and rerun")
            self._open[name] = fd
        return self._open[name]

    def is_done(self, key: str) -> bool:
        return key in self.done

    def write(self, key: str, array: np.ndarray) -> None:
        """Write one tensor (any float dtype, a memory map included), cast to the plan's dtype in row blocks
        of ≤ 64 MiB (so a pass-through copy never holds the whole tensor). The write runs on a background
        thread while the caller computes the next tensor (at most two wait); ``checkpoint`` waits for it."""
        name, offset, _ = self._shard[key]
        if os.path.exists(self._path(name, True)):
            self.done.add(key)
            return  # its shard is complete already
        dtype, shape = self._specs[key]
        a = np.asarray(array)
        if a.shape != shape:
            raise ValueError(f"{key}: got shape {list(a.shape)}, the plan says {list(shape)}")
        fd = self._fd(name)
        self._slots.acquire()
        self._pending.append((key, self._pool.submit(self._write_now, fd, offset, a, dtype)))

    def _write_now(self, fd: int, offset: int, a: np.ndarray, dtype: np.dtype) -> None:
        try:
            rows = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
            step = max(1, (64 << 20) // max(1, rows.shape[1] * max(a.dtype.itemsize, dtype.itemsize)))
            for i in range(0, rows.shape[0], step):
                block = np.ascontiguousarray(rows[i:i + step]).astype(dtype, copy=False).reshape(-1).view(np.uint8)
                view = memoryview(block)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
        finally:
            self._slots.release()

    def checkpoint(self, on_durable=None) -> None:
        """Make what was written durable, record it, and close (rename) every completed shard — on the
        writer thread, after the writes queued so far, so that the disk flush of one window overlaps the
        computation of the next. ``on_durable()`` runs there once the window is recorded (tests kill
        the process from it); a failed write or flush raises at the next ``checkpoint`` or ``finish``."""
        pending, self._pending = self._pending, []
        done = self.done | {k for k, _ in pending}
        complete = [name for name, keys in self.plan.shards
                    if name not in self._closed and all(k in done for k in keys)]
        for name in complete:  # (a shard recorded complete by a killed run may still be unrenamed and unopened)
            self._fd(name)
        flush = dict(self._open)
        for name in complete:
            del self._open[name]  # the caller never writes a complete shard again
            self._closed.add(name)
        self._pending_ckpt.append(self._pool.submit(self._record, pending, done, flush, complete, on_durable))
        ready, self._pending_ckpt = [f for f in self._pending_ckpt if f.done()], [f for f in self._pending_ckpt if not f.done()]
        for f in ready:
            f.result()
        self.done = done

    def _record(self, pending, done, flush, complete, on_durable) -> None:
        for _, fut in pending:
            fut.result()  # FIFO on one thread: every queued write has finished; a failed one raises here
        for fd in flush.values():
            os.fsync(fd)
        write_json(os.path.join(self.folder, "progress.json"), {"done": sorted(done)})
        for name in complete:
            os.close(flush[name])
            os.replace(self._path(name, False), self._path(name, True))
        if on_durable is not None:
            on_durable()

    def _wait(self) -> None:
        pending, self._pending_ckpt = self._pending_ckpt, []
        for f in pending:
            f.result()

    def finish(self) -> None:
        """Every tensor written: close the last shards and write the index (when sharded)."""
        self.checkpoint()
        self._wait()
        missing = [k for k, _, _ in self.plan.entries if k not in self.done]
        if missing:
            raise RuntimeError(f"StreamWriter.finish: {len(missing)} tensors never written, e.g. {missing[0]}")
        if len(self.plan.shards) > 1:
            total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, d, s in self.plan.entries)
            write_json(os.path.join(self.folder, INDEX), {"metadata": {"total_size": total},
                       "weight_map": {k: name for name, keys in self.plan.shards for k in keys}}, indent=2)
        for extra in ("progress.json", "job.json"):
            os.remove(os.path.join(self.folder, extra))
        self._pool.shutdown()


def copy_side_files(base_folder: str, out_dir: str, dtype=None) -> None:
    """config.json, generation config and tokenizer files of the base, as they are — except that with
    ``dtype`` (the written tensors' dtype, when not the base's) config.json says so."""
    for fname in COPY_FILES:
        src = os.path.join(base_folder, fname)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, fname))
    cfg_path = os.path.join(out_dir, "config.json")
    if dtype is not None and os.path.exists(cfg_path):
        cfg = read_json(cfg_path)
        for k in [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]:
            cfg[k] = np.dtype(dtype).name
        write_json(cfg_path, cfg, indent=2)


_fold = jax.jit(fold_into, static_argnames="dtype")


def fold(w, delta, dtype) -> np.ndarray:
    """W + ΔW summed in float32 and rounded to ``dtype`` (the one fold of every export path), in XLA: the
    conversions run on all cores at memory speed (NumPy's bf16 casts were most of a streamed merge's time)."""
    return np.asarray(_fold(jnp.asarray(w), delta, np.dtype(dtype)))


FOLD_ROWS = 256


def fold_product(w, b, a, dtype, rows: int = FOLD_ROWS) -> np.ndarray:
    """``fold(w, b @ a, dtype)`` for a low-rank ΔW = b ``[out, R]`` · a ``[R, in]``, computed ``rows`` rows of W
    at a time: each block's product (NumPy's BLAS, faster than XLA:CPU's dot here: BUILD_NOTES) is folded
    while it is still in cache, and the whole ΔW never exists."""
    b, a = np.asarray(b, np.float32), np.asarray(a, np.float32)
    out = np.empty(w.shape, np.dtype(dtype))
    for r in range(0, w.shape[0], rows):
        out[r:r + rows] = fold(w[r:r + rows], b[r:r + rows] @ a, dtype)
    return out


def _dense(d) -> jax.Array:
    if isinstance(d, Factored):
        return d.dense()
    return d.delta if isinstance(d, Dense) else jnp.asarray(d)


def layer_folds(d):
    """``fold_layer(j, w, dtype)`` → W + ΔW[j] for a delta of layers ``[n, out, in]`` (array, ``Dense`` or
    ``Factored``): a factored delta goes through ``fold_product`` from its row-scaled factors, never dense."""
    if isinstance(d, Factored):
        b, a = np.asarray(d.b * d.m[:, None, :].astype(d.b.dtype)), np.asarray(d.a)
        return lambda j, w, dtype: fold_product(w, b[j], a[j], dtype)
    dense = _dense(d)
    return lambda j, w, dtype: fold(w, dense[j], dtype)


def export_model(base: Base, deltas: Mapping[str, object], out_dir: str, *, dtype=None,
                 shard_bytes: int = SHARD_BYTES) -> str:
    """Folded checkpoint W + ΔW from a loaded base (any dtype) and ``{module: [L, out, in]}`` (array,
    ``Dense`` or ``Factored``); other tensors as in ``base.params``. dtype: of the written tensors
    (default: each tensor's dtype in the base's files)."""
    unknown = set(deltas) - set(MODULES)
    if unknown:
        raise ValueError(f"deltas for unknown modules {sorted(unknown)}")
    ckpt = Checkpoint(base.path)
    tensors = params_to_hf(base.params, base.config)
    merged = {weight_key(m, l): (m, l) for m in deltas for l in range(base.config.num_hidden_layers)}
    out_dtype = {k: np.dtype(dtype) if dtype is not None else ckpt.spec(k)[0] for k in tensors}
    plan = Plan.make([(k, out_dtype[k], t.shape) for k, t in tensors.items()], shard_bytes)
    tmp = partial_dir(out_dir)
    writer = StreamWriter(tmp, plan, None)
    folds = {m: layer_folds(d) for m, d in deltas.items()}
    for k, t in tensors.items():
        m_l = merged.get(k)
        writer.write(k, folds[m_l[0]](m_l[1], t, out_dtype[k]) if m_l else t)
    writer.finish()
    copy_side_files(base.path, tmp, dtype)
    return publish(tmp, out_dir, replace=True)


def _svd_factors(delta: jax.Array, k: int | None) -> tuple[jax.Array, jax.Array]:
    """Dense [L, out, in] → B [L, out, k], A [L, k, in] (k=None: numerical rank, max over layers)."""
    u, s, vt = svd_each(delta.astype(jnp.float32))
    if k is None:
        k = max(1, int(jnp.max(jnp.sum(s > NUMERICAL_RANK_RTOL * s[:, :1], axis=1))))
    root = jnp.sqrt(s[:, :k])
    return u[:, :, :k] * root[:, None, :], root[:, :, None] * vt[:, :k, :]


def truncate_factored(f: Factored, k: int) -> tuple[jax.Array, jax.Array]:
    """Best rank-k B [L, out, k], A [L, k, in] of Σ_r m_r b_r a_r, through QR of the factors."""
    bm = (f.b * f.m[:, None, :].astype(f.b.dtype)).astype(jnp.float32)
    a = f.a.astype(jnp.float32)
    R, (out_dim, in_dim) = a.shape[1], (bm.shape[1], a.shape[2])
    if R >= min(out_dim, in_dim):
        return _svd_factors(jnp.einsum("lor,lrd->lod", bm, a), k)
    u, sv, v = factor_svd(a, bm, 1.0, k)                 # [L, out, k], [L, k], [L, in, k]
    root = jnp.sqrt(sv)
    return u * root[:, None, :], jnp.swapaxes(v * root[:, None, :], 1, 2)


def peft_factors(d, rank: int | None) -> tuple[jax.Array, jax.Array]:
    """(B [L, out, r], A [L, r, in]) float32 of a delta for a PEFT export with scale 1: a ``Factored``
    exactly (``rank=None`` or ≥ its rows) or truncated; a dense one by SVD (numerical rank by default)."""
    if isinstance(d, Factored):
        if d.batched:
            raise ValueError("a batched Factored delta cannot be exported")
        if rank is None or rank >= d.a.shape[1]:
            return (d.b * d.m[:, None, :].astype(d.b.dtype)).astype(jnp.float32), d.a.astype(jnp.float32)
        return truncate_factored(d, rank)
    return _svd_factors(_dense(d), rank)


def pad_rank(b, a, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero rows up to the uniform rank r (exact)."""
    pad = r - b.shape[-1]
    b, a = np.asarray(b), np.asarray(a)
    return np.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, pad)]), np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, 0)])


def _raw_factors(d, lora_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """A LoRA's own (B, A), unscaled, checked to carry the one multiplier ``lora_alpha / r``."""
    if not isinstance(d, Factored) or d.batched:
        raise ValueError("lora_alpha= exports a LoRA's own factors: every module must be an unbatched Factored")
    r = d.a.shape[1]
    if not np.allclose(np.asarray(d.m, np.float64), lora_alpha / r, rtol=1e-6, atol=0):
        raise ValueError(f"lora_alpha={lora_alpha}, rank {r}: the multipliers are not all alpha/r = {lora_alpha / r}")
    return np.asarray(d.b, np.float32), np.asarray(d.a, np.float32)


def peft_plan(config: ModelConfig, modules, r: int, dtype) -> Plan:
    """The tensors of a PEFT adapter of uniform rank r on ``modules`` in every layer (layer-major)."""
    entries = []
    for layer in range(config.num_hidden_layers):
        for m in modules:
            out_dim, in_dim = config.module_shape(m)
            entries += [(lora_key(layer, m, "A"), dtype, (r, in_dim)), (lora_key(layer, m, "B"), dtype, (out_dim, r))]
    return Plan.make(entries, single="adapter_model.safetensors")


def write_peft_config(folder: str, r: int, modules, *, lora_alpha: float | None = None,
                      base_model_name_or_path: str | None = None) -> None:
    write_json(os.path.join(folder, "adapter_config.json"),
               lora_config(r, r if lora_alpha is None else lora_alpha, list(modules), inference_mode=True,
                           base_model_name_or_path=base_model_name_or_path), indent=2)


def export_peft(deltas_or_factors: Mapping[str, object], base_config: ModelConfig, out_dir: str,
                rank: int | None = None, *, lora_alpha: float | None = None, dtype=np.float32,
                base_model_name_or_path: str | None = None) -> str:
    """A PEFT LoRA adapter folder. deltas_or_factors: ``{module: Dense | Factored | [L, out, in]}``.

    By default the scale is folded into B and ``lora_alpha = r``. With ``lora_alpha`` (a trained
    LoRA's own factors, all of one rank r with multiplier alpha/r) the factors are written as they are,
    with that alpha: the adapter reloads with the same A, B and scale (for further training)."""
    if rank is not None and rank < 1:
        raise ValueError(f"rank {rank} must be ≥ 1")
    if lora_alpha is not None and rank is not None:
        raise ValueError("lora_alpha= writes a LoRA's own factors; it cannot be combined with rank=")
    L = base_config.num_hidden_layers
    modules = [m for m in MODULES if m in deltas_or_factors]
    if len(modules) != len(deltas_or_factors):
        raise ValueError(f"unknown modules {sorted(set(deltas_or_factors) - set(MODULES))}")
    if lora_alpha is not None:
        factors = {m: _raw_factors(deltas_or_factors[m], lora_alpha) for m in modules}
        if len({b.shape[2] for b, _ in factors.values()}) != 1:
            raise ValueError("lora_alpha= needs one rank across modules")
    else:
        factors = {m: peft_factors(deltas_or_factors[m], rank) for m in modules}
    r = rank if rank is not None else max(b.shape[2] for b, _ in factors.values())
    tmp = partial_dir(out_dir)
    writer = StreamWriter(tmp, peft_plan(base_config, modules, r, np.dtype(dtype)), None)
    for m in modules:
        out_dim, in_dim = base_config.module_shape(m)
        b, a = factors[m]
        if b.shape != (L, out_dim, b.shape[2]) or a.shape != (L, b.shape[2], in_dim):
            raise ValueError(f"{m}: factors B {b.shape} A {a.shape} do not fit the base ({L}, {out_dim}, {in_dim})")
        b, a = pad_rank(b, a, r)
        for layer in range(L):
            writer.write(lora_key(layer, m, "A"), a[layer])
            writer.write(lora_key(layer, m, "B"), b[layer])
    writer.finish()
    write_peft_config(tmp, r, modules, lora_alpha=lora_alpha, base_model_name_or_path=base_model_name_or_path)
    return publish(tmp, out_dir, replace=True)
