"""Fresh LoRAs: the target-task LoRA (rank 64, α 16, all seven projections, 3e-4, 400 steps) and
π-tuning's extra LoRA; saved in PEFT's format so they can join a pool (slot 0). A target LoRA a user
brings (``target_lora=`` / ``--target-lora``, any PEFT folder) is read by the pool loader
(``load_target``), so it has full PEFT semantics: rsLoRA, ``layers_to_transform``, regex targets,
rank/alpha patterns.

A fresh LoRA is a trainable pytree ``{"a": {module: [L, r, in]}, "b": {module: [L, out, r]}}``; its
scale s = alpha / r is static. A is drawn like PEFT's default (``kaiming_uniform_(a=√5)`` on a
``[r, in]`` weight: U(−1/√in, 1/√in)) or N(0, std) (π-tuning); B = 0, so at step 0 it changes nothing.

Einsum letters: l layers, r rank rows, o out features, d in features.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..config import MODULES, ModelConfig
from ..lora import Factored
from ..stacks import ModuleStack, Pool
from .space import LoraSpec

def init_lora(config: ModelConfig, spec: LoraSpec, key: jax.Array, modules=None, dtype=jnp.float32) -> dict:
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
        mods[m] = ModuleStack.from_ranks(a, b, jnp.asarray([scale], jnp.float32), jnp.ones((1, a.shape[0]), bool),
                                         [a.shape[1]])
    return Pool(mods, (name,))


def save_peft(lora: Mapping, spec: LoraSpec, config: ModelConfig, out_dir: str, base_model: str | None = None) -> str:
    """The LoRA as a PEFT adapter folder (``pool.export.export_peft`` with its own factors and alpha)."""
    from ..pool.export import export_peft
    adapters = {m: Factored(jnp.asarray(a, jnp.float32), jnp.asarray(lora["b"][m], jnp.float32),
                            jnp.full(a.shape[:2], np.float32(spec.alpha / spec.rank), jnp.float32))
                for m, a in lora["a"].items()}
    return export_peft(adapters, config, out_dir, lora_alpha=spec.alpha, base_model_name_or_path=base_model)


def load_target(path: str, config: ModelConfig, dtype=jnp.float32) -> Pool:
    """A PEFT adapter folder as a one-adapter ``Pool`` named ``target:<path>`` (for slot 0), read by the
    pool loader with its full PEFT semantics. Only what cannot be applied faithfully is refused (the
    permissive policy: no norm, licence or pattern filter): an ``AdapterError`` naming the reason."""
    from ..pool.filters import FilterPolicy
    from ..pool.load import build_pool, inspect_sources
    from ..pool.peft_format import AdapterError
    infos, report = inspect_sources([path], config, FilterPolicy.permissive(), progress=False)
    if not infos:
        raise AdapterError(f"target LoRA {path}: {report.rows[0]['reason']}")
    pool = build_pool(infos, config, dtype=dtype)
    return Pool(pool.modules, (f"target:{path}",))
