"""Shape-faithful synthetic pools: the real pool's (rank, alpha, target modules) mix, no weights.

Benchmarks and memory plans draw k adapters from the 955 real Llama-3.1-8B pool shapes: the recorded
configs of the shipped ``paper-llama31-8b`` manifest (``jaxmerge.pool.manifest``), or another source
given as ``--pool-shapes FILE`` / ``$JAXMERGE_POOL_SHAPES`` (a shapes file
``{"adapters": [{"r", "lora_alpha", "target_modules"}]}`` or a manifest). Only modules under
``.layers.`` count (lm_head and embed_tokens LoRAs are never merged).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config import MODULES, ModelConfig
from .errors import UserError
from .stacks import ModuleStack, Pool, owner_of

DEFAULT_MANIFEST = "paper-llama31-8b"


@dataclasses.dataclass(frozen=True)
class AdapterShape:
    r: int
    alpha: float
    modules: tuple[str, ...]  # Llama projections it targets, in MODULES order


def _modules_of(targets) -> tuple[str, ...]:
    if isinstance(targets, str):  # a regex: count the projections it names
        return tuple(m for m in MODULES if m in targets)
    return tuple(m for m in MODULES if any(t == m or t.endswith("." + m) for t in targets))


def load_shapes(path: str | None = None) -> tuple[list[AdapterShape], str]:
    """(all adapter shapes, where they came from): ``path``, else ``$JAXMERGE_POOL_SHAPES``, else the
    shipped Llama manifest's recorded configs. Adapters that target no projection are dropped."""
    from .pool import manifest
    path = path or os.environ.get("JAXMERGE_POOL_SHAPES") or DEFAULT_MANIFEST
    if manifest.is_manifest(path):
        m = manifest.load(path)
        raw = [{"r": e.r, "lora_alpha": e.lora_alpha, "target_modules": e.target_modules}
               for e in m.entries if e.recorded]
        source = f"manifest {m.name} ({len(raw)} recorded configs)"
    elif os.path.isfile(path):
        with open(path) as f:
            raw = json.load(f)["adapters"]
        source = path
    else:
        raise UserError(f"pool shapes {path}: no such file, and not a pool manifest ({', '.join(manifest.names())})")
    shapes = [AdapterShape(int(a["r"]), float(a["lora_alpha"]), _modules_of(a["target_modules"])) for a in raw]
    return [s for s in shapes if s.modules], source


def draw(shapes: Sequence[AdapterShape], k: int, seed: int = 0) -> list[AdapterShape]:
    """k shapes without replacement (all of them, in order, when k ≥ len(shapes))."""
    if k >= len(shapes):
        return list(shapes)
    idx = np.random.default_rng(seed).choice(len(shapes), size=k, replace=False)
    return [shapes[i] for i in sorted(idx)]


def abstract_pool(config: ModelConfig, adapters: Sequence[AdapterShape], dtype=jnp.bfloat16) -> Pool:
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
                                 owner_of(ranks))  # concrete: the ranks stay readable on an abstract pool
    return Pool(modules, tuple(f"shape{i}" for i in range(n)))


def random_pool(config: ModelConfig, adapters: Sequence[AdapterShape], key: jax.Array, dtype=jnp.float32,
                std: float = 0.02) -> Pool:
    """A materialised pool with random factors of these shapes (benchmarks)."""
    abstract = abstract_pool(config, adapters, dtype)
    scale = jnp.asarray([s.alpha / s.r for s in adapters], jnp.float32)
    modules = {}
    for m, st in abstract.modules.items():
        key, ka, kb = jax.random.split(key, 3)
        modules[m] = ModuleStack(std * jax.random.normal(ka, st.a.shape, dtype), std * jax.random.normal(kb, st.b.shape, dtype),
                                 scale, jnp.asarray(np.array(st.ranks)[:, None] > 0).repeat(config.num_hidden_layers, 1),
                                 jnp.asarray(st.owner))
    return Pool(modules, abstract.names)
