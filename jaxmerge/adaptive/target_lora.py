"""Fresh LoRAs: the target-task LoRA (rank 64, α 16, all seven projections, 3e-4, 400 steps) and
π-tuning's extra LoRA; saved in PEFT's format so they can join a pool (slot 0).

A fresh LoRA is a trainable pytree ``{"a": {module: [L, r, in]}, "b": {module: [L, out, r]}}``; its
scale s = alpha / r is static. A is drawn like PEFT's default (``kaiming_uniform_(a=√5)`` on a
``[r, in]`` weight: U(−1/√in, 1/√in)) or N(0, std) (π-tuning); B = 0, so at step 0 it changes nothing.

Einsum letters: l layers, r rank rows, o out features, d in features.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..config import MODULES, LlamaConfig
from ..lora import Factored
from ..stacks import ModuleStack, Pool
from .space import LoraSpec

_GROUP = {m: ("self_attn" if m in MODULES[:4] else "mlp") for m in MODULES}


def init_lora(config: LlamaConfig, spec: LoraSpec, key: jax.Array, modules=None, dtype=jnp.float32) -> dict:
    """A fresh LoRA's factors for ``modules`` (default ``spec.modules`` or all seven)."""
    modules = tuple(modules or spec.modules or MODULES)
    L, r = config.num_hidden_layers, spec.rank
    a, b = {}, {}
    for j, m in enumerate(modules):
        out, inp = config.module_shape(m)
        k = jax.random.fold_in(key, j)
        if spec.a_init == "kaiming":
            bound = 1.0 / np.sqrt(inp)
            a[m] = jax.random.uniform(k, (L, r, inp), dtype, -bound, bound)
        elif spec.a_init == "normal":
            a[m] = spec.std * jax.random.normal(k, (L, r, inp), dtype)
        else:
            raise ValueError(f"LoRA A init {spec.a_init!r}: expected 'kaiming' or 'normal'")
        b[m] = jnp.zeros((L, out, r), dtype)
    return {"a": a, "b": b}


def lora_adapters(lora: Mapping, scale: float) -> dict[str, Factored]:
    """Forward-ready adapters of a fresh LoRA: s·B·A per module (factored)."""
    return {m: Factored(a, lora["b"][m], jnp.full(a.shape[:2], scale, a.dtype)) for m, a in lora["a"].items()}


def as_pool(lora: Mapping, scale: float, name: str = "target") -> Pool:
    """A one-adapter ``Pool`` of a fresh LoRA (to put in slot 0 of a pool)."""
    mods = {}
    for m in MODULES:
        if m not in lora["a"]:
            continue
        a, b = jnp.asarray(lora["a"][m]), jnp.asarray(lora["b"][m])
        mods[m] = ModuleStack(a, b, jnp.asarray([scale], jnp.float32), jnp.ones((1, a.shape[0]), bool), (a.shape[1],))
    return Pool(mods, (name,))


def save_peft(lora: Mapping, spec: LoraSpec, config: LlamaConfig, out_dir: str, base_model: str | None = None) -> str:
    """The LoRA as a PEFT adapter folder (``pool.export.export_peft`` with its own factors and alpha)."""
    from ..pool.export import export_peft
    adapters = {m: Factored(jnp.asarray(a, jnp.float32), jnp.asarray(lora["b"][m], jnp.float32),
                            jnp.full(a.shape[:2], np.float32(spec.alpha / spec.rank), jnp.float32))
                for m, a in lora["a"].items()}
    return export_peft(adapters, config, out_dir, lora_alpha=spec.alpha, base_model_name_or_path=base_model)


def load_peft(path: str, config: LlamaConfig) -> tuple[dict, LoraSpec]:
    """Read back a LoRA written by ``save_peft`` (uniform rank, every layer): (factors, spec)."""
    from ..safetensors_io import SafeFile
    with open(os.path.join(path, "adapter_config.json")) as f:
        cfg = json.load(f)
    st = SafeFile(os.path.join(path, "adapter_model.safetensors"))
    mods = list(cfg["target_modules"])
    a, b = {}, {}
    for m in MODULES:
        if m not in mods:
            continue
        pre = [f"base_model.model.model.layers.{i}.{_GROUP[m]}.{m}" for i in range(config.num_hidden_layers)]
        a[m] = jnp.asarray(np.stack([np.asarray(st[p + ".lora_A.weight"], np.float32) for p in pre]))
        b[m] = jnp.asarray(np.stack([np.asarray(st[p + ".lora_B.weight"], np.float32) for p in pre]))
    return {"a": a, "b": b}, LoraSpec(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), modules=tuple(a))
