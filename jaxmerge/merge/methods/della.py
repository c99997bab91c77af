"""DELLA (Deep et al. 2024) with mergekit's semantics (``della_magprune``): keep each entry of ΔW_i with a
probability rising linearly with its magnitude rank within its row, from density − ε (smallest) to
density + ε (largest); rescale to ΔW_i's L1 norm; then mergekit's TIES consensus — sign elected on
w_i·δ_i, agreeing entries divided by their weights' sum (``della``) — or Σ_i w_i·δ_i (``della_linear``).
Masks are drawn per (module, layer, adapter) from the run's key. No recipe default for density; epsilon
defaults to mergekit's 0.15. Oracle: mergekit 0.1.5 itself, the mask injected."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..registry import MergeMethod, MergeMethodError, check, param, register
from ..sparse import NO_ELECTION, Elect, RankKeep, sparse_merge


@dataclasses.dataclass(frozen=True)
class DellaParams:
    density: float = param(help="mean fraction of entries kept per matrix", low=0.0, high=1.0, low_open=True)
    epsilon: float = param(0.15, "della: keep probabilities span density ± epsilon (mergekit: 0.15)", low=0.0)

    def __post_init__(self):
        check(self)
        if self.density < 1 and not (0 < self.density - self.epsilon and self.density + self.epsilon < 1):
            raise MergeMethodError(f"della: density ± epsilon must lie in (0, 1), got {self.density} ± {self.epsilon}")


def _p(params) -> dict:
    if params.density >= 1:  # mergekit returns the tensor untouched: every entry kept, no rescale
        return {"c0": np.float32(2.0), "eps": np.float32(0.0)}
    return {"c0": np.float32(params.density - params.epsilon), "eps": np.float32(params.epsilon)}


def _ties(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, RankKeep(rescale=params.density < 1), Elect("total", weighted=True),
                        _p(params), key, layers, noise)


def _linear(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, RankKeep(rescale=params.density < 1), NO_ELECTION, _p(params),
                        key, layers, noise)


register(MergeMethod("della", _ties, DellaParams, "one", "DELLA: magnitude-ranked random drop, L1 rescale, "
                     "weighted sign election", "mergekit della (mask injected)", random=True))
register(MergeMethod("della_linear", _linear, DellaParams, "one", "DELLA drop + L1 rescale, summed",
                     "mergekit della_linear (mask injected)", random=True))
