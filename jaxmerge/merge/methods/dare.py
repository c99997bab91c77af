"""DARE (Yu et al. 2024): drop each entry of ΔW_i with probability p = 1 − density and rescale the
kept ones by 1/(1 − p), then sum (``dare_linear``) or TIES' sign election and disjoint mean
(``dare_ties``). Masks are drawn per (module, layer, adapter) from the run's key. No recipe default
for density. Oracles: PEFT ``merge_utils.dare_linear`` / ``dare_ties`` with the same mask injected.
(mergekit's ``dare_*`` rescale to the trimmed tensor's L1 norm instead of 1/(1 − p): not these.)"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ..registry import MergeMethod, check, param, register
from ..sparse import NO_ELECTION, Elect, RandomKeep, sparse_merge
from .ties import sign_param

_DENSITY = "fraction of entries kept, 1 − drop rate (kept entries scaled by 1/density)"


@dataclasses.dataclass(frozen=True)
class DareLinearParams:
    density: float = param(help=_DENSITY, low=0.0, high=1.0, low_open=True)

    def __post_init__(self):
        check(self)


@dataclasses.dataclass(frozen=True)
class DareTiesParams:
    density: float = param(help=_DENSITY, low=0.0, high=1.0, low_open=True)
    sign: str = sign_param()

    def __post_init__(self):
        check(self)


def _linear(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, RandomKeep(), NO_ELECTION, {"density": jnp.float32(params.density)},
                        key, layers, noise)


def _ties(stack, weights, params, *, key, layers, noise):
    return sparse_merge(stack, weights, RandomKeep(), Elect(params.sign), {"density": jnp.float32(params.density)},
                        key, layers, noise)


register(MergeMethod("dare_linear", _linear, DareLinearParams, "one", "DARE: random drop + 1/density rescale, summed",
                     "PEFT merge_utils.dare_linear (mask injected)", random=True))
register(MergeMethod("dare_ties", _ties, DareTiesParams, "one", "DARE drop + rescale, then TIES election",
                     "PEFT merge_utils.dare_ties (mask injected)", random=True))
