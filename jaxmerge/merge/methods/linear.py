"""Task arithmetic (``linear``: Σ_i w_i·s_i·B_i·A_i, weights default 1) and the simple average
(``average``: weights 1/N, none accepted) — one matmul over the rank-concatenated factors, and exactly
low-rank: ``--format peft`` exports the concatenated rows (PEFT's combination ``cat``).
Oracles: PEFT ``merge_utils.task_arithmetic``, mergekit ``task_arithmetic``, PEFT ``add_weighted_adapter``
``cat``."""

from __future__ import annotations

from ..linear import linear
from ..registry import MergeMethod, NoParams, register


def _dense(stack, weights, params, *, key, layers, noise):
    return linear(stack, weights)


def _factored(stack, weights, params):
    return stack.factored(weights)


register(MergeMethod("linear", _dense, NoParams, "one", "task arithmetic Σ_i w_i·s_i·B_i·A_i (weights default 1)",
                     "PEFT merge_utils.task_arithmetic; mergekit task_arithmetic; add_weighted_adapter cat",
                     factored=_factored))
register(MergeMethod("average", _dense, NoParams, "uniform", "simple average Σ_i (1/N)·s_i·B_i·A_i",
                     "PEFT merge_utils.task_arithmetic with weights 1/N", factored=_factored))
