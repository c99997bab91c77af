"""Merging LoRA adapters, as pure jittable functions over the pool stacks (``jaxmerge.stacks``).

Static merges of one module stack (``[L, out, in]`` results):
    ``linear`` (task arithmetic), ``average``, ``average_chunks`` (streamed over a pool too big to
    hold), ``ties``, ``magnitude_prune``, ``tsv``; ``merge_pool`` / ``iter_merge_pool`` for a whole pool.
Learned coefficients (``coefficients``): granularity × activation → factored or dense deltas.
"""

import os

# LAPACK (QR/SVD in TSV) runs through scipy's OpenBLAS, whose own thread pool spins against XLA's:
# on this 2-core machine a batched 4096×64 QR took 2.6 s with OpenBLAS threads and 8 ms without
# (BUILD_NOTES). OpenBLAS reads this when it loads (first LAPACK call); an explicit user setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .coefficients import (ACTIVATIONS, GRANULARITIES, LEAKY_SLOPE, activate, coefficient_shape, dense_deltas,
                           expand, factored_adapters, module_coefficients)
from .linear import accumulate, average, average_chunks, linear, row_scaled_product
from .static import METHODS, iter_merge_pool, merge_pool
from .ties import SIGN_METHODS, keep_count, magnitude_mask, magnitude_prune, magnitude_threshold, ties
from .tsv import factor_svd, polar, tsv, tsv_triplets

task_arithmetic = linear

__all__ = ["ACTIVATIONS", "GRANULARITIES", "LEAKY_SLOPE", "METHODS", "SIGN_METHODS", "accumulate", "activate",
           "average", "average_chunks", "coefficient_shape", "dense_deltas", "expand", "factor_svd",
           "factored_adapters", "iter_merge_pool", "keep_count", "linear", "magnitude_mask", "magnitude_prune",
           "magnitude_threshold", "merge_pool", "module_coefficients", "polar", "row_scaled_product",
           "task_arithmetic", "ties", "tsv", "tsv_triplets"]
