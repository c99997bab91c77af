"""TIES (Yadav et al. 2023) with PEFT's semantics: trim each ΔW_i to its ``int(density·out·in)``
largest magnitudes, elect the sign by the sum (``total``) or count (``frequency``) of the trimmed
values (weights take no part), average the agreeing entries weighted by w_i. Paper recipe: density 0.8
(p = 0.2), weight 1. Oracle: PEFT ``merge_utils.ties``; mergekit ``ties`` equals it at weight 1."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..registry import MergeMethod, check, param, register
from ..sparse import SIGN_METHODS, Elect, TopK, keep_count, sparse_merge


def sign_param():
    """The ``sign`` field of every method with PEFT's sign election."""
    return param("total", "sign election: by the sum (total) or the count (frequency) of signs", choices=SIGN_METHODS)


@dataclasses.dataclass(frozen=True)
class TiesParams:
    density: float = param(0.8, "fraction of entries kept per matrix, 1 − p (recipe: 0.8)", low=0.0, high=1.0)
    sign: str = sign_param()

    def __post_init__(self):
        check(self)


def top_k_params(stack, density: float, at_least_one: bool = False) -> dict:
    """``TopK``'s traced parameter for this stack's matrices (the count computed on the host, as PEFT does)."""
    return {"k": jnp.int32(keep_count(density, stack.b.shape[1] * stack.a.shape[2], at_least_one))}


def _merge(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, TopK(), Elect(params.sign), top_k_params(stack, params.density),
                        key, layers, noise)


register(MergeMethod("ties", _merge, TiesParams, "one", "TIES: trim to density, elect sign, disjoint mean",
                     "PEFT merge_utils.ties"))


def ties(stack, weights, density: float, sign: str = "total", ranks: tuple[int, ...] | None = None) -> jax.Array:
    """TIES merge ``[L, out, in]`` of one stack (``weights [N]`` or ``[N, L]``; ``ranks``: the stack's, when it
    is traced)."""
    p = TiesParams(density, sign)
    return sparse_merge(stack, weights, TopK(), Elect(p.sign), top_k_params(stack, p.density), jax.random.key(0),
                        jnp.arange(stack.a.shape[0]), None, ranks)
