"""Pools derived from a pool: random re-initialisation (paper §5 Q3), the target-task LoRA at slot 0,
sub-pools (``Pool.subset``).

``random_reinit`` redraws every adapter not in ``keep`` from N(0, σ²), σ = that adapter's own std of
its A (resp. B) values over the (adapter, layer) entries it really has (``present``), pooled over
its module types (``by_module=True``: one σ per module type instead). Absent entries stay exactly
zero, so a redrawn LoRA touches the same modules and layers as the original; ranks and scales are
unchanged.

Einsum letters: l layers, r rank rows, d in features, o out features, n adapters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..config import MODULES
from ..stacks import ModuleStack, Pool


def _row_mask(stack: ModuleStack) -> jax.Array:
    """``[L, R]`` 1.0 where the row's adapter is present in that layer."""
    own = jnp.asarray(stack.owner, jnp.int32)
    return (stack.present[jnp.maximum(own, 0)] & (own >= 0)[:, None]).T.astype(jnp.float32)


def _moments(x: jax.Array, mask: jax.Array, owner: np.ndarray, n: int, axis_in: int) -> tuple:
    """Per-adapter (count, Σx, Σx²) of x's entries on present rows. ``x`` is a [L,R,in] (axis_in=2)
    or b [L,out,R] (axis_in=1) stack; mask [L, R]."""
    x = x.astype(jnp.float32)
    width = x.shape[axis_in]
    if axis_in == 2:
        s1, s2 = jnp.einsum("lrd,lr->r", x, mask), jnp.einsum("lrd,lr->r", x * x, mask)
    else:
        s1, s2 = jnp.einsum("lor,lr->r", x, mask), jnp.einsum("lor,lr->r", x * x, mask)
    cnt = mask.sum(0) * width
    own = jnp.asarray(owner, jnp.int32)
    seg = lambda v: jax.ops.segment_sum(v, own, num_segments=n)
    return seg(cnt), seg(s1), seg(s2)


def _std(m) -> jax.Array:
    cnt, s1, s2 = m
    cnt = jnp.maximum(cnt, 1.0)
    mean = s1 / cnt
    return jnp.sqrt(jnp.maximum(s2 / cnt - mean * mean, 0.0))


def random_reinit(pool: Pool, key: jax.Array, keep=(), *, by_module: bool = False) -> Pool:
    """Every adapter not in ``keep`` (e.g. ``keep=(0,)`` for the target LoRA) redrawn with matched std."""
    n = pool.num_adapters
    keep_mask = np.zeros(n, bool)
    keep_mask[list(keep)] = True
    moments = {}
    for m, s in pool.modules.items():
        mask = _row_mask(s)
        moments[m] = (_moments(s.a, mask, s.owner, n, 2), _moments(s.b, mask, s.owner, n, 1))
    if not by_module:
        total = [tuple(sum(moments[m][j][t] for m in moments) for t in range(3)) for j in range(2)]
        moments = {m: tuple(total) for m in moments}
    out = {}
    for (m, s), k in zip(pool.modules.items(), jax.random.split(key, len(pool.modules))):
        own = jnp.asarray(s.owner, jnp.int32)
        mask = _row_mask(s)
        redraw = jnp.asarray(~keep_mask)[own]                       # [R]
        sa, sb = _std(moments[m][0])[own], _std(moments[m][1])[own]  # [R]
        ka, kb = jax.random.split(k)
        na = jax.random.normal(ka, s.a.shape, jnp.float32) * (sa * mask)[:, :, None]
        nb = jax.random.normal(kb, s.b.shape, jnp.float32) * (sb * mask)[:, None, :]
        a = jnp.where(redraw[None, :, None], na.astype(s.a.dtype), s.a)
        b = jnp.where(redraw[None, None, :], nb.astype(s.b.dtype), s.b)
        out[m] = dataclasses.replace(s, a=a, b=b)
    return Pool(out, pool.names)


def _empty_like(stack: ModuleStack, n: int) -> ModuleStack:
    L, _, din = stack.a.shape
    dout = stack.b.shape[1]
    return ModuleStack(jnp.zeros((L, 0, din), stack.a.dtype), jnp.zeros((L, dout, 0), stack.b.dtype),
                       jnp.zeros((n,), stack.scale.dtype), jnp.zeros((n, L), bool), jnp.zeros((0,), jnp.int32))


def concat(first: Pool, second: Pool) -> Pool:
    """The adapters of ``first`` then those of ``second``; modules = the union (MODULES order)."""
    modules = [m for m in MODULES if m in first.modules or m in second.modules]
    out = {}
    for m in modules:
        ref = first.modules.get(m) or second.modules[m]
        x = first.modules.get(m) or _empty_like(ref, first.num_adapters)
        y = second.modules.get(m) or _empty_like(ref, second.num_adapters)
        if x.a.shape[0] != y.a.shape[0] or x.a.shape[2] != y.a.shape[2] or x.b.shape[1] != y.b.shape[1]:
            raise ValueError(f"{m}: stacks of different shapes {x.a.shape}/{x.b.shape} vs {y.a.shape}/{y.b.shape}")
        out[m] = ModuleStack(jnp.concatenate([x.a, y.a.astype(x.a.dtype)], 1),
                             jnp.concatenate([x.b, y.b.astype(x.b.dtype)], 2),
                             jnp.concatenate([x.scale, y.scale]), jnp.concatenate([x.present, y.present]),
                             jnp.concatenate([jnp.asarray(x.owner, jnp.int32),
                                              jnp.where(jnp.asarray(y.owner) >= 0, y.owner + x.num_adapters, -1)]))
    return Pool(out, first.names + second.names)


def with_target(pool: Pool, target_pool: Pool) -> Pool:
    """The target-task LoRA(s) inserted at slot 0 (paper: "with target-task LoRA")."""
    return concat(target_pool, pool)
