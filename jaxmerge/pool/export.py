"""Export a merge: a folded Hugging Face checkpoint, or a portable PEFT adapter — written tensor by
tensor into planned safetensors files, so that nothing holds a whole model.

The shards are planned and written by ``jaxmerge.pool.shards`` (``Plan``, ``StreamWriter``).

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

import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..atomic import partial_dir, publish, write_json
from ..config import MODULES, ModelConfig
from ..hf_write import SHARD_BYTES
from ..lora import Dense, Factored, fold_into
from ..merge.tsv import factor_svd, svd_each
from ..params import Base, params_to_hf
from .peft_write import lora_config, lora_key
from .shards import INDEX, Checkpoint, Plan, StreamWriter, copy_side_files, weight_key

NUMERICAL_RANK_RTOL = 1e-6


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
