"""Non-adaptive merges of a whole pool, module by module: ``merge_pool`` (all layers at once) and
``iter_merge_pool`` (a window of layers at a time, for writing a merged model without holding every
layer's dense deltas).

Methods and their defaults (paper §5 / Appendix D):

    average   Σ_i (1/N)·s_i·B_i·A_i                     (weights must be None)
    linear    Σ_i w_i·s_i·B_i·A_i                        (weights default 1: task arithmetic)
    ties      PEFT's TIES, ``density`` = 1 − p required  (weights default 1; ``sign`` total|frequency)
    tsv       top-``tsv_k`` triplets, polar-orthogonal    (weights default 1/N, the paper's 1/30 at k = 30)
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp

from ..stacks import Pool
from ._groups import layer_window
from .linear import average, linear
from .ties import SIGN_METHODS, ties
from .tsv import tsv

METHODS = ("average", "linear", "ties", "tsv")


def _check(pool: Pool, method: str, weights, density, sign, tsv_k):
    if method not in METHODS:
        raise ValueError(f"merge method {method!r}: expected one of {METHODS}")
    if method == "average" and weights is not None:
        raise ValueError("method 'average' takes no weights (use 'linear')")
    if method == "ties":
        if density is None:
            raise ValueError("method 'ties' needs density (the fraction kept, 1 − p)")
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"ties density must be in [0, 1], got {density}")
        if sign not in SIGN_METHODS:
            raise ValueError(f"ties sign {sign!r}: expected one of {SIGN_METHODS}")
    elif density is not None:
        raise ValueError(f"density applies to 'ties' only, not {method!r}")
    if method == "tsv" and (not isinstance(tsv_k, int) or tsv_k < 1):
        raise ValueError(f"tsv_k must be a positive int, got {tsv_k!r}")
    if weights is not None:
        w = jnp.asarray(weights)
        if w.shape[0] != pool.num_adapters:
            raise ValueError(f"weights have {w.shape[0]} entries for {pool.num_adapters} adapters")


def _merge_stack(stack, method, weights, density, sign, tsv_k):
    n = stack.num_adapters
    if method == "average":
        return average(stack)
    if method == "linear":
        return linear(stack, jnp.ones((n,), jnp.float32) if weights is None else weights)
    if method == "ties":
        return ties(stack, jnp.ones((n,), jnp.float32) if weights is None else weights, float(density), sign)
    return tsv(stack, tsv_k, weights)


def merge_pool(pool: Pool, method: str, *, weights=None, density: float | None = None, sign: str = "total",
               tsv_k: int = 8) -> dict[str, jax.Array]:
    """Merge every module type of the pool: ``{module: ΔW [L, out, in]}``.

    ``weights``: ``[N]`` (or ``[N, L]``) per-adapter weights; see the module docstring for defaults.
    """
    _check(pool, method, weights, density, sign, tsv_k)
    return {m: _merge_stack(s, method, weights, density, sign, tsv_k) for m, s in pool.modules.items()}


def iter_merge_pool(pool: Pool, method: str, *, weights=None, density: float | None = None, sign: str = "total",
                    tsv_k: int = 8, layers_per_step: int = 1) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Like ``merge_pool`` but yields ``(first_layer, {module: ΔW [n, out, in]})`` for windows of
    ``layers_per_step`` layers, so only one window's dense deltas need exist at a time. Per-layer
    weights ``[N, L]`` are windowed too."""
    _check(pool, method, weights, density, sign, tsv_k)
    L = pool.num_layers
    for start in range(0, L, layers_per_step):
        size = min(layers_per_step, L - start)
        w = weights
        if w is not None and jnp.ndim(w) == 2:
            w = jnp.asarray(w)[:, start:start + size]
        yield start, {m: _merge_stack(layer_window(s, start, size), method, w, density, sign, tsv_k)
                      for m, s in pool.modules.items()}
