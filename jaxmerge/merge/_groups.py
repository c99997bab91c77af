"""Static views of a ``ModuleStack`` that the merges iterate over: adapters grouped by rank, and
layer windows.

Methods that work on each adapter's own ΔW_i = s_i·B_i·A_i (TIES, TSV) cannot use the single
rank-concatenated matmul of a linear merge. Padding every adapter to the largest rank would waste up
to 7× the work with the real pool's rank mix (BUILD_NOTES), and unrolling k adapters in Python lets
XLA keep several dense deltas alive at once. Grouping adapters of equal rank gives a few
``[g, r, ·]`` blocks, each scanned (one dense delta live at a time) or vmapped (small factors).

Einsum letters: l layers, g adapters of one rank group, r rank rows, o out features, d in features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..stacks import ModuleStack


@dataclasses.dataclass(frozen=True)
class RankGroup:
    rank: int
    adapters: np.ndarray  # [g] adapter indices (static)
    rows: np.ndarray      # [g, rank] row indices into the concatenated stack (static)


def static_ranks(stack: ModuleStack) -> tuple[int, ...]:
    """The stack's ranks as a hashable tuple, for a jitted merge's static argument: a merge that works on
    each adapter's own ΔW_i is shaped by them (training and evaluation are not: they read ``owner``)."""
    return tuple(int(r) for r in stack.ranks)


def rank_groups(stack: ModuleStack, ranks: tuple[int, ...] | None = None) -> list[RankGroup]:
    """Adapters with a nonzero rank for this module, grouped by rank (ascending); ``ranks``: the stack's
    (``static_ranks``), given explicitly inside a jit where the stack's owner array is traced."""
    ranks = static_ranks(stack) if ranks is None else tuple(ranks)
    off = np.concatenate([[0], np.cumsum(ranks)]).astype(np.int64)
    groups = []
    for r in sorted({r for r in ranks if r > 0}):
        idx = np.array([i for i, ri in enumerate(ranks) if ri == r], np.int64)
        rows = off[idx][:, None] + np.arange(r)[None, :]
        groups.append(RankGroup(r, idx, rows))
    return groups


def take_rows(a: jax.Array, b: jax.Array, scale: jax.Array, rows, adapters) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Factors of adapters ``adapters [g]`` (all of one rank r) from a stack's ``a [L, R, in]``,
    ``b [L, out, R]``, ``scale [N]``, their rows ``rows [g, r]`` (NumPy, or traced so that one
    compiled program serves every chunk of that shape), layer-major: A ``[L, g, r, in]``,
    B ``[L, g, out, r]``, s ``[g]``."""
    g, r = rows.shape
    L, _, d = a.shape
    o = b.shape[1]
    flat = jnp.asarray(rows, jnp.int32).reshape(-1)
    a = jnp.take(a, flat, axis=1).reshape(L, g, r, d)
    b = jnp.take(b, flat, axis=2).reshape(L, o, g, r).transpose(0, 2, 1, 3)
    return a, b, scale[jnp.asarray(adapters, jnp.int32)]


def group_factors(stack: ModuleStack, group: RankGroup) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One rank group's factors, layer-major: A ``[L, g, r, in]``, B ``[L, g, out, r]``, s ``[g]``."""
    return take_rows(stack.a, stack.b, stack.scale, group.rows, group.adapters)


def layer_window(stack: ModuleStack, start, size: int = 1) -> ModuleStack:
    """Layers ``start:start+size`` of a stack (``start`` may be traced; ``size`` static)."""
    a = jax.lax.dynamic_slice_in_dim(stack.a, start, size, axis=0)
    b = jax.lax.dynamic_slice_in_dim(stack.b, start, size, axis=0)
    present = jax.lax.dynamic_slice_in_dim(stack.present, start, size, axis=1)
    return ModuleStack(a, b, stack.scale, present, stack.owner)


def per_layer_weights(weights, stack: ModuleStack) -> jax.Array:
    """Weights ``[N]`` or ``[N, L]`` → ``[N, L]`` (checked against the stack)."""
    n, L = stack.num_adapters, stack.a.shape[0]
    w = jnp.asarray(weights)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or w.shape[0] != n or w.shape[1] not in (1, L):
        raise ValueError(f"weights of shape {tuple(jnp.shape(weights))}: expected [N]={n} or [N, L]=[{n}, {L}]")
    return jnp.broadcast_to(w, (n, L))


def weighted_groups(stack: ModuleStack, weights, ranks: tuple[int, ...] | None = None) -> list[tuple]:
    """Per rank group, layer-major: (A ``[L, g, r, in]``, B ``[L, g, out, r]``, s ``[g]``, w ``[L, g]``);
    ``weights`` ``[N]`` or ``[N, L]``, None → 1/N each."""
    n = stack.num_adapters
    w = per_layer_weights(jnp.full((n,), 1.0 / n) if weights is None else weights, stack)
    out = []
    for grp in rank_groups(stack, ranks):
        a, b, s = group_factors(stack, grp)
        out.append((a, b, s, w[jnp.asarray(grp.adapters)].T))
    return out


def scan_layers(stack: ModuleStack, weights, layer_fn, layers=None, ranks: tuple[int, ...] | None = None) -> jax.Array:
    """``layer_fn(groups, layer) -> [out, in]`` scanned over layers, so only one layer's working set is
    ever live → ``[L, out, in]`` in the stack's dtype (zeros when no adapter targets the module).

    ``groups``: per rank group ``(a [g, r, in], b [g, out, r], s [g], w [g], idx [g])`` with ``idx`` the
    adapters' indices in the stack (for per-adapter random keys); ``layer``: the layer's index in the
    whole model (``layers [L]``, default ``0..L-1``; a layer window passes its own, so that keys drawn
    per layer do not depend on the window)."""
    L, o, d = stack.a.shape[0], stack.b.shape[1], stack.a.shape[2]
    groups = weighted_groups(stack, weights, ranks)
    if not groups:
        return jnp.zeros((L, o, d), stack.a.dtype)
    scales = [s for _, _, s, _ in groups]
    idx = [jnp.asarray(g.adapters, jnp.int32) for g in rank_groups(stack, ranks)]
    layers = jnp.arange(L, dtype=jnp.int32) if layers is None else jnp.asarray(layers, jnp.int32)

    def body(_, x):
        per_layer, layer = x
        per = [(a, b, s, w, i) for (a, b, w), s, i in zip(per_layer, scales, idx)]
        return None, layer_fn(per, layer).astype(stack.a.dtype)

    return jax.lax.scan(body, None, ([(a, b, w) for a, b, _, w in groups], layers))[1]
