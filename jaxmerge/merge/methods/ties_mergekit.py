"""TIES as mergekit 0.1.5 computes it (``merge_method: ties``): trim each ΔW_i to its ``max(1,
int(density·n))`` largest magnitudes, elect the sign on the *weighted* trimmed values w_i·δ_i, and divide
the agreeing weighted entries by the *sum of their weights* (``normalize``, mergekit's default) — a
weighted mean of the agreeing entries, where PEFT's ``ties`` divides w-scaled entries by their count.
With every weight 1 the two are the same (tested); with others they differ. Oracle: mergekit itself."""

from __future__ import annotations

import dataclasses

from ..registry import MergeMethod, check, param, register
from ..sparse import Elect, TopK, sparse_merge
from .ties import top_k_params


@dataclasses.dataclass(frozen=True)
class TiesMergekitParams:
    density: float = param(0.8, "fraction of entries kept per matrix, 1 − p (recipe: 0.8)", low=0.0, high=1.0)
    normalize: bool = param(True, "ties_mergekit: divide by the agreeing weights' sum (mergekit's default: true)")

    def __post_init__(self):
        check(self)


def _merge(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, TopK(), Elect("total", weighted=True, normalize=params.normalize),
                        top_k_params(stack, params.density, at_least_one=True), key, layers, noise)


register(MergeMethod("ties_mergekit", _merge, TiesMergekitParams, "one",
                     "TIES with mergekit's weighted election and weight-sum normalisation", "mergekit ties"))
