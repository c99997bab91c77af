"""Model breadcrumbs (Davari & Belilovsky 2024) with mergekit's semantics (``magnitude_outliers``): of each
ΔW_i drop the ``int(gamma·n)`` largest magnitudes and the smallest, keeping ``int(density·n)`` entries
(fewer outliers dropped when density + gamma > 1); then Σ_i w_i·δ_i (``breadcrumbs``) or mergekit's TIES
consensus — sign elected on w_i·δ_i, agreeing entries summed, not normalised (``breadcrumbs_ties``).
No recipe default for density; gamma defaults to mergekit's 0.01. Oracle: mergekit 0.1.5 itself."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..registry import MergeMethod, check, param, register
from ..sparse import NO_ELECTION, Band, Elect, sparse_merge


@dataclasses.dataclass(frozen=True)
class BreadcrumbsParams:
    density: float = param(help="fraction of entries kept per matrix", low=0.0, high=1.0)
    gamma: float = param(0.01, "breadcrumbs: fraction of the largest magnitudes dropped (mergekit: 0.01)",
                         low=0.0, high=1.0)

    def __post_init__(self):
        check(self)


def band_params(stack, density: float, gamma: float) -> dict:
    """``Band``'s ranks for mergekit's ``magnitude_outliers`` on this stack's matrices (host integers)."""
    n = stack.b.shape[1] * stack.a.shape[2]
    if density >= 1:
        return {"hi": jnp.int32(1), "lo": jnp.int32(n), "n": jnp.int32(n)}
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    first = n - bottom - keep                                   # entries dropped from the top
    return {"hi": jnp.int32(min(first + 1, n)), "lo": jnp.int32(max(first + keep, 1)), "n": jnp.int32(keep)}


def _linear(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, Band(), NO_ELECTION, band_params(stack, params.density, params.gamma),
                        key, layers, noise)


def _ties(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, Band(), Elect("total", weighted=True, normalize=False),
                        band_params(stack, params.density, params.gamma), key, layers, noise)


register(MergeMethod("breadcrumbs", _linear, BreadcrumbsParams, "one",
                     "breadcrumbs: drop the top gamma and the smallest, keep density; summed", "mergekit breadcrumbs"))
register(MergeMethod("breadcrumbs_ties", _ties, BreadcrumbsParams, "one",
                     "breadcrumbs trim + mergekit's weighted sign election (not normalised)", "mergekit breadcrumbs_ties"))
