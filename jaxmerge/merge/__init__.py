"""Merging LoRA adapters, as pure jittable functions over the pool stacks (``jaxmerge.stacks``).

Static merges of one module stack (``[L, out, in]`` results):
    ``linear`` (task arithmetic), ``average``, ``average_chunks`` (streamed over a pool too big to
    hold), ``ties``, ``magnitude_prune``, ``tsv``; ``merge_pool`` / ``iter_merge_pool`` for a whole pool;
    ``linear_layer_into``: one layer's ``[out, in]`` written into a recycled (donated) buffer.
Learned coefficients (``coefficients``): granularity × activation → factored or dense deltas.
"""

from .coefficients import (ACTIVATIONS, GRANULARITIES, LEAKY_SLOPE, activate, coefficient_shape, dense_deltas,
                           expand, factored_adapters, module_coefficients, module_order)
from .linear import accumulate, average, average_chunks, linear, linear_layer_into, row_scaled_product
from .static import METHODS, iter_merge_pool, merge_pool
from .ties import SIGN_METHODS, keep_count, magnitude_mask, magnitude_prune, magnitude_threshold, ties
from .tsv import factor_svd, polar, tsv, tsv_triplets

task_arithmetic = linear

__all__ = ["ACTIVATIONS", "GRANULARITIES", "LEAKY_SLOPE", "METHODS", "SIGN_METHODS", "accumulate", "activate",
           "average", "average_chunks", "coefficient_shape", "dense_deltas", "expand", "factor_svd",
           "factored_adapters", "iter_merge_pool", "keep_count", "linear", "linear_layer_into", "magnitude_mask",
           "magnitude_prune", "magnitude_threshold", "merge_pool", "module_coefficients", "module_order", "polar", "row_scaled_product",
           "task_arithmetic", "ties", "tsv", "tsv_triplets"]
