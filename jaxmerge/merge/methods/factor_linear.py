"""PEFT's ``add_weighted_adapter(combination_type="linear")``: the factors merged separately,
B = Σ_i √|w_i·s_i|·B_i and A = Σ_i sign(w_i·s_i)·√|w_i·s_i|·A_i, ΔW = B·A (alpha = r) — cross terms
B_i·A_j included, so it is *not* Σ_i w_i·s_i·B_i·A_i (PEFT calls it a rough approximation; use
``linear`` for the exact sum). Needs every adapter that targets a module to have the same rank there.
Oracle: PEFT ``add_weighted_adapter`` ``linear`` itself."""

from __future__ import annotations

import jax.numpy as jnp

from ...lora import Factored
from .._groups import rank_groups, take_rows
from ..registry import MergeMethod, MergeMethodError, NoParams, register


def _factors(stack, weights):
    """(A [L, r, in], B [L, out, r]) of the merged adapter; weights ``[N, L]``."""
    groups = rank_groups(stack)
    L, o, d = stack.a.shape[0], stack.b.shape[1], stack.a.shape[2]
    if not groups:
        return jnp.zeros((L, 1, d), stack.a.dtype), jnp.zeros((L, o, 1), stack.b.dtype)
    if len(groups) > 1:
        raise MergeMethodError(f"factor_linear needs one rank per module (PEFT's combination 'linear'); "
                               f"got ranks {sorted(g.rank for g in groups)} — use 'linear' for the exact sum")
    g = groups[0]
    a, b, s = take_rows(stack.a, stack.b, stack.scale, g.rows, g.adapters)   # [L, g, r, d], [L, g, o, r], [g]
    ws = jnp.asarray(weights, jnp.float32)[jnp.asarray(g.adapters)].T * s[None, :]   # [L, g]
    root = jnp.sqrt(jnp.abs(ws))
    sign = jnp.where(ws >= 0, 1.0, -1.0)
    a_new = jnp.einsum("lg,lgrd->lrd", (sign * root).astype(a.dtype), a)
    b_new = jnp.einsum("lg,lgor->lor", root.astype(b.dtype), b)
    return a_new, b_new


def _factored(stack, weights, params):
    a, b = _factors(stack, weights)
    return Factored(a, b, jnp.ones(a.shape[:2], jnp.float32))


def _dense(stack, weights, params, *, key, layers, noise):
    return _factored(stack, weights, params).dense()


register(MergeMethod("factor_linear", _dense, NoParams, "one",
                     "PEFT add_weighted_adapter 'linear': A's and B's merged separately (cross terms)",
                     "PEFT add_weighted_adapter linear", factored=_factored))
