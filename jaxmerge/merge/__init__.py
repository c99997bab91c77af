"""Merging LoRA adapters, as pure jittable functions over the pool stacks (``jaxmerge.stacks``).

Static merges — one registry (``registry``: name → function + frozen dataclass of parameters; one
module per method under ``methods/``): ``average``, ``linear`` (task arithmetic), ``ties``,
``magnitude_prune``, ``dare_linear``, ``dare_ties``, ``breadcrumbs``, ``breadcrumbs_ties``, ``della``,
``della_linear``, ``tsv``, ``factor_linear`` (``registry.names()`` is authoritative). ``merge_pool`` /
``iter_merge_pool`` merge a whole pool; the pieces TIES-like methods are built from live in ``sparse``.
``linear_layer_into``: one layer's ``[out, in]`` written into a recycled (donated) buffer.
Learned coefficients (``coefficients``): granularity × activation → factored or dense deltas.
"""

from . import registry
from .coefficients import (ACTIVATIONS, GRANULARITIES, LEAKY_SLOPE, activate, coefficient_shape, dense_deltas,
                           expand, factored_adapters, module_coefficients, module_order)
from .linear import accumulate, average, average_chunks, linear, linear_layer_into, row_scaled_product
from .methods.magnitude_prune import magnitude_prune
from .methods.ties import ties
from .sparse import SIGN_METHODS, keep_count, magnitude_mask, magnitude_threshold, uniform_noise
from .static import iter_merge_pool, merge_pool
from .tsv import factor_svd, polar, tsv, tsv_triplets

task_arithmetic = linear

__all__ = ["ACTIVATIONS", "GRANULARITIES", "LEAKY_SLOPE", "SIGN_METHODS", "accumulate", "activate",
           "average", "average_chunks", "coefficient_shape", "dense_deltas", "expand", "factor_svd",
           "factored_adapters", "iter_merge_pool", "keep_count", "linear", "linear_layer_into", "magnitude_mask",
           "magnitude_prune", "magnitude_threshold", "merge_pool", "module_coefficients", "module_order", "polar",
           "registry", "row_scaled_product", "task_arithmetic", "ties", "tsv", "tsv_triplets", "uniform_noise"]
