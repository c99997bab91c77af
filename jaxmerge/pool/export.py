"""Export a merge: a folded Hugging Face checkpoint, or a portable PEFT adapter.

``export_model`` writes base weights + ΔW in transformers' format (safetensors shards + index when
large), with ``config.json``, generation config and tokenizer files copied from the base folder.

``export_peft`` writes an adapter every consumer loads: one uniform rank r, ``lora_alpha = r`` (scale
1, the merge's scale folded into B), an explicit ``target_modules`` list, every layer present, no
rank/alpha patterns — within vLLM's constraints (r ≤ 512) and TGI's (no module type missing a layer).
With ``lora_alpha=`` it writes a trained LoRA's own factors and alpha unchanged instead.

* exact (``rank=None``): factored input keeps its concatenated rows (B·diag(m), A); dense input is
  factored by SVD at its numerical rank (singular values above 1e-6·σ_max of that module).
* truncated (``rank=k``): the best rank-k approximation. From factors it needs no dense out×in SVD:
  B·diag(m) = Q_b R_b, Aᵀ = Q_a R_a, SVD of the R×R core R_b R_aᵀ = U S Vᵀ, so
  ΔW = (Q_b U) S (Q_a V)ᵀ; the top k are split √S to each side. Only when R ≥ min(out, in) is the
  dense SVD cheaper, and taken.

Einsum letters: l layers, o out, d in, r / k rank rows.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ATTN_MODULES, MODULES, LlamaConfig
from ..lora import Dense, Factored
from ..params import Base, params_to_hf
from ..safetensors_io import SafeFile, save
from ..merge.tsv import factor_svd, svd_each

COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
SHARD_BYTES = 4 << 30
NUMERICAL_RANK_RTOL = 1e-6


def _dense(d) -> jax.Array:
    if isinstance(d, Factored):
        return d.dense()
    return d.delta if isinstance(d, Dense) else jnp.asarray(d)


def _checkpoint_dtype(path: str, fallback) -> np.dtype:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if files:
        f = SafeFile(files[0])
        for k in f.keys():
            return f.dtype(k)
    return np.dtype(fallback)


def export_model(base: Base, deltas: Mapping[str, object], out_dir: str, *, dtype=None) -> str:
    """Folded checkpoint W + ΔW. deltas: ``{module: [L, out, in]}`` (array, ``Dense`` or ``Factored``).
    dtype: of the written tensors; default that of the base checkpoint's files."""
    os.makedirs(out_dir, exist_ok=True)
    unknown = set(deltas) - set(MODULES)
    if unknown:
        raise ValueError(f"deltas for unknown modules {sorted(unknown)}")
    dtype = np.dtype(dtype) if dtype is not None else _checkpoint_dtype(base.path, base.params["norm"].dtype)
    shards: list[dict] = [{}]
    size = 0
    for top, value in base.params.items():
        groups = value.items() if top == "layers" else [(None, value)]
        for group, sub in groups:
            leaves = sub.items() if isinstance(sub, dict) else [(None, sub)]
            for name, leaf in leaves:
                if name in deltas:
                    leaf = (leaf.astype(jnp.float32) + _dense(deltas[name]).astype(jnp.float32))
                tree = {top: leaf} if group is None else {top: {group: leaf if name is None else {name: leaf}}}
                for k, arr in params_to_hf(tree, base.config).items():
                    arr = np.asarray(arr, np.float32).astype(dtype) if arr.dtype != dtype else arr
                    if size + arr.nbytes > SHARD_BYTES and shards[-1]:
                        shards.append({})
                        size = 0
                    shards[-1][k] = arr
                    size += arr.nbytes
    if len(shards) == 1:
        save(os.path.join(out_dir, "model.safetensors"), shards[0])
    else:
        weight_map, total = {}, 0
        for i, sh in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save(os.path.join(out_dir, fname), sh)
            weight_map.update({k: fname for k in sh})
            total += sum(a.nbytes for a in sh.values())
        _write_json(os.path.join(out_dir, "model.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    for fname in COPY_FILES:
        src = os.path.join(base.path, fname)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, fname))
    return out_dir


def _write_json(path, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


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


def _factors(d, rank: int | None) -> tuple[jax.Array, jax.Array]:
    if isinstance(d, Factored):
        if d.batched:
            raise ValueError("a batched Factored delta cannot be exported")
        if rank is None or rank >= d.a.shape[1]:
            return (d.b * d.m[:, None, :].astype(d.b.dtype)).astype(jnp.float32), d.a.astype(jnp.float32)
        return truncate_factored(d, rank)
    return _svd_factors(_dense(d), rank)


def _raw_factors(d, lora_alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """A LoRA's own (B, A), unscaled, checked to carry the one multiplier ``lora_alpha / r``."""
    if not isinstance(d, Factored) or d.batched:
        raise ValueError("lora_alpha= exports a LoRA's own factors: every module must be an unbatched Factored")
    r = d.a.shape[1]
    if not np.allclose(np.asarray(d.m, np.float64), lora_alpha / r, rtol=1e-6, atol=0):
        raise ValueError(f"lora_alpha={lora_alpha}, rank {r}: the multipliers are not all alpha/r = {lora_alpha / r}")
    return np.asarray(d.b, np.float32), np.asarray(d.a, np.float32)


def export_peft(deltas_or_factors: Mapping[str, object], base_config: LlamaConfig, out_dir: str,
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
        factors = {m: _factors(deltas_or_factors[m], rank) for m in modules}
    r = rank if rank is not None else max(b.shape[2] for b, _ in factors.values())
    tensors = {}
    for m in modules:
        b, a = factors[m]
        out_dim, in_dim = base_config.module_shape(m)
        if b.shape != (L, out_dim, b.shape[2]) or a.shape != (L, b.shape[2], in_dim):
            raise ValueError(f"{m}: factors B {b.shape} A {a.shape} do not fit the base ({L}, {out_dim}, {in_dim})")
        pad = r - b.shape[2]  # zero rows up to the uniform rank: exact
        b = np.pad(np.asarray(b), ((0, 0), (0, 0), (0, pad)))
        a = np.pad(np.asarray(a), ((0, 0), (0, pad), (0, 0)))
        blk = "self_attn" if m in ATTN_MODULES else "mlp"
        for layer in range(L):
            key = f"base_model.model.model.layers.{layer}.{blk}.{m}"
            tensors[f"{key}.lora_A.weight"] = a[layer].astype(dtype)
            tensors[f"{key}.lora_B.weight"] = b[layer].astype(dtype)
    os.makedirs(out_dir, exist_ok=True)
    save(os.path.join(out_dir, "adapter_model.safetensors"), tensors)
    _write_json(os.path.join(out_dir, "adapter_config.json"), {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(r),
        "lora_alpha": int(r) if lora_alpha is None else float(lora_alpha), "use_rslora": False,
        "target_modules": modules, "lora_dropout": 0.0, "bias": "none", "use_dora": False,
        "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {},
        "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path})
    return out_dir
