"""Magnitude pruning: Σ_i w_i·trim(ΔW_i), each ΔW_i trimmed to its ``int(density·out·in)`` largest
magnitudes, no sign election. No recipe default for density. Oracle: PEFT ``merge_utils.magnitude_prune``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..registry import MergeMethod, check, param, register
from ..sparse import NO_ELECTION, TopK, sparse_merge
from .ties import top_k_params


@dataclasses.dataclass(frozen=True)
class MagnitudePruneParams:
    density: float = param(help="fraction of entries kept per matrix", low=0.0, high=1.0)

    def __post_init__(self):
        check(self)


def _merge(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, TopK(), NO_ELECTION, top_k_params(stack, params.density), key, layers, noise)


register(MergeMethod("magnitude_prune", _merge, MagnitudePruneParams, "one",
                     "Σ_i w_i·(ΔW_i trimmed to density by magnitude)", "PEFT merge_utils.magnitude_prune"))


def magnitude_prune(stack, weights, density: float) -> jax.Array:
    """Magnitude-pruned task arithmetic ``[L, out, in]`` of one stack (``weights [N]`` or ``[N, L]``)."""
    return _merge(stack, weights, MagnitudePruneParams(density), key=jax.random.key(0),
                  layers=jnp.arange(stack.a.shape[0]), noise=None)
