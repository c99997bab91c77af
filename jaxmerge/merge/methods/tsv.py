"""TSV (Task Singular Vectors, Gargiulo et al. 2025): the top ``tsv_k`` singular triplets of every ΔW_i,
σ weighted by w_i (recipe: top 8, weights 1/N — the paper's 1/30 at k = 30), the stacked U and V
orthogonalised by their polar factors (``jaxmerge.merge.tsv``). Oracle: a dense float64 NumPy TSV."""

from __future__ import annotations

import dataclasses

from ..registry import MergeMethod, check, param, register
from ..tsv import tsv


@dataclasses.dataclass(frozen=True)
class TsvParams:
    tsv_k: int = param(8, "tsv: singular triplets kept per adapter (recipe: 8)", low=1)

    def __post_init__(self):
        check(self)


def _merge(stack, weights, params, *, key, layers, noise):
    return tsv(stack, params.tsv_k, weights)


register(MergeMethod("tsv", _merge, TsvParams, "one_over_n", "TSV: top-k triplets per adapter, polar-orthogonalised",
                     "dense float64 NumPy TSV"))
