"""Shape-faithful synthetic pools: the real pool's (rank, alpha, target modules) mix, no weights.

Benchmarks and memory plans draw k adapters from the 955 real Llama-3.1-8B pool shapes when the
shapes file is available (``--pool-shapes FILE``, ``$JAXMERGE_POOL_SHAPES``, or the project's
``../shared/data/llama31_8b_pool_shapes.json``), otherwise from a built-in mix with the same
proportions (paper Appendix A / REFERENCE §2). Only modules under ``.layers.`` count (lm_head and
embed_tokens LoRAs are never merged).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import MODULES, LlamaConfig
from .stacks import ModuleStack, Pool

SHAPES_FILE = "llama31_8b_pool_shapes.json"

# Built-in proportions (counts in the real pool of 955).
_RANKS = {16: 285, 8: 274, 64: 199, 32: 136, 256: 29, 128: 24, 96: 5, 4: 1, 25: 1, 512: 1}
_ALL7 = MODULES
_TARGETS = {_ALL7: 806, ("q_proj", "v_proj"): 91, ("q_proj", "k_proj", "v_proj"): 22,
            ("q_proj", "k_proj", "v_proj", "o_proj"): 15, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"): 10,
            ("q_proj", "v_proj", "o_proj"): 4, ("q_proj",): 3, ("gate_proj", "up_proj", "down_proj"): 2,
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"): 2}


@dataclasses.dataclass(frozen=True)
class AdapterShape:
    r: int
    alpha: float
    modules: tuple[str, ...]  # Llama projections it targets, in MODULES order


def find_shapes_file(path: str | None = None) -> str | None:
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"pool shapes file {path} not found")
        return path
    env = os.environ.get("JAXMERGE_POOL_SHAPES")
    if env and os.path.exists(env):
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for cand in (os.path.join(here, "..", "shared", "data", SHAPES_FILE), os.path.join("..", "shared", "data", SHAPES_FILE)):
        if os.path.exists(cand):
            return os.path.normpath(cand)
    return None


def _modules_of(targets) -> tuple[str, ...]:
    if isinstance(targets, str):  # a regex: count the projections it names
        return tuple(m for m in MODULES if m in targets)
    return tuple(m for m in MODULES if any(t == m or t.endswith("." + m) for t in targets))


def load_shapes(path: str | None = None) -> tuple[list[AdapterShape], str]:
    """(all adapter shapes, where they came from). Adapters that target no Llama projection are dropped."""
    found = find_shapes_file(path)
    if found is None:
        out = []
        rng = np.random.default_rng(0)
        ranks = rng.permutation(np.repeat(list(_RANKS), list(_RANKS.values())))
        targets = list(_TARGETS)
        tidx = rng.permutation(np.repeat(np.arange(len(targets)), list(_TARGETS.values())))
        for r, t in zip(ranks, tidx):
            out.append(AdapterShape(int(r), 16.0, tuple(m for m in MODULES if m in targets[t])))
        return out, "built-in mix (real pool proportions)"
    with open(found) as f:
        raw = json.load(f)["adapters"]
    shapes = [AdapterShape(int(a["r"]), float(a["lora_alpha"]), _modules_of(a["target_modules"])) for a in raw]
    return [s for s in shapes if s.modules], found


def draw(shapes: Sequence[AdapterShape], k: int, seed: int = 0) -> list[AdapterShape]:
    """k shapes without replacement (all of them, in order, when k ≥ len(shapes))."""
    if k >= len(shapes):
        return list(shapes)
    idx = np.random.default_rng(seed).choice(len(shapes), size=k, replace=False)
    return [shapes[i] for i in sorted(idx)]


def abstract_pool(config: LlamaConfig, adapters: Sequence[AdapterShape], dtype=jnp.bfloat16) -> Pool:
    """A ``Pool`` of ShapeDtypeStructs for these adapter shapes (for compilation without weights)."""
    L, n = config.num_hidden_layers, len(adapters)
    modules = {}
    for m in MODULES:
        ranks = tuple(s.r if m in s.modules else 0 for s in adapters)
        if not any(ranks):
            continue
        out, inp = config.module_shape(m)
        R = sum(ranks)
        modules[m] = ModuleStack(jax.ShapeDtypeStruct((L, R, inp), dtype), jax.ShapeDtypeStruct((L, out, R), dtype),
                                 jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((n, L), jnp.bool_),
                                 ranks)
    return Pool(modules, tuple(f"shape{i}" for i in range(n)))


def random_pool(config: LlamaConfig, adapters: Sequence[AdapterShape], key: jax.Array, dtype=jnp.float32,
                std: float = 0.02) -> Pool:
    """A materialised pool with random factors of these shapes (benchmarks)."""
    abstract = abstract_pool(config, adapters, dtype)
    scale = jnp.asarray([s.alpha / s.r for s in adapters], jnp.float32)
    modules = {}
    for m, st in abstract.modules.items():
        key, ka, kb = jax.random.split(key, 3)
        modules[m] = ModuleStack(std * jax.random.normal(ka, st.a.shape, dtype), std * jax.random.normal(kb, st.b.shape, dtype),
                                 scale, jnp.asarray(np.array(st.ranks)[:, None] > 0).repeat(config.num_hidden_layers, 1),
                                 st.ranks)
    return Pool(modules, abstract.names)
