"""Linear merges: task arithmetic Σ_i w_i·s_i·B_i·A_i and simple averaging, as one matmul over the
rank-concatenated factors.

With the stack's rows concatenated over adapters (``R = Σ r_i``), the weighted sum of all adapters'
deltas is a single ``[out, R] × [R, in]`` product per layer after scaling each row by its adapter's
w_i·s_i: exactly Σ_i w_i·s_i·B_i·A_i, no cross terms, no padding work, and it runs near the
machine's matmul peak (BUILD_NOTES). Averaging all N adapters of a pool whose stacks do not fit in
memory streams chunks of adapters through the same product into one accumulator
(``average_chunks``), so no more than one chunk's factors and one dense result are ever held.

Einsum letters: l layers, r rank rows, o out features, d in features.

Shapes: ``stack.a [L, R, in]``, ``stack.b [L, out, R]``, ``weights [N]`` or ``[N, L]``; every merge
returns ``[L, out, in]`` in the stack's dtype, except ``linear_layer_into`` (one layer, ``[out, in]``
in the buffer's dtype).
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp

from ..stacks import ModuleStack
from ._groups import layer_window, per_layer_weights


def row_scaled_product(a: jax.Array, b: jax.Array, m: jax.Array) -> jax.Array:
    """``Σ_r m[l,r]·b[l,:,r]·a[l,r,:]``: a ``[L, R, in]``, b ``[L, out, R]``, m ``[L, R]`` → ``[L, out, in]``.
    The multiplier scales whichever factor is smaller, then one batched matmul."""
    m = m.astype(a.dtype)
    if b.shape[1] <= a.shape[2]:
        return jnp.einsum("lor,lrd->lod", b * m[:, None, :], a)
    return jnp.einsum("lor,lrd->lod", b, a * m[:, :, None])


@jax.jit
def linear(stack: ModuleStack, weights: jax.Array) -> jax.Array:
    """Task arithmetic: Σ_i w_i·s_i·B_i·A_i per layer → ``[L, out, in]``.

    ``weights``: ``[N]`` (one per adapter) or ``[N, L]`` (per adapter and layer). Differentiable in
    ``weights`` and the factors. Equals ``peft.utils.merge_utils.task_arithmetic`` applied to the
    adapters' ``get_delta_weight`` (tested).
    """
    return row_scaled_product(stack.a, stack.b, stack.row_multiplier(per_layer_weights(weights, stack)))


@functools.partial(jax.jit, donate_argnums=0, keep_unused=True)
def linear_layer_into(out: jax.Array, stack: ModuleStack, weights: jax.Array, layer) -> jax.Array:
    """``linear`` of one layer written into a donated buffer: ``out [out, in]`` (contents ignored, the
    array invalidated), ``weights [N]`` or ``[N, L]``, ``layer`` (may be traced) → ``[out, in]`` in
    ``out``'s memory and dtype. Equals ``linear(stack, weights)[layer]`` (tested).

    For loops that materialise every layer's ΔW one at a time (benchmarks, folding into a
    checkpoint): passing back the previous result recycles one buffer per module shape, so no call
    faults in fresh pages for its output (~10 % of the time at Llama-3.1-8B shapes on CPU,
    BUILD_NOTES) and the loop holds those buffers, never one new array per call. The caller must
    use each ΔW before passing its buffer back.

    On an x86-64 CPU, compile it with oneDNN's GEMM for ~1.25× the speed of XLA's default
    (``jaxmerge.xla_cpu.compile(linear_layer_into.lower(out, stack, weights, 0))``; its program
    is one XLA:CPU's oneDNN fusion compiles, tested at shapes of both orientations).
    """
    shape = (stack.b.shape[1], stack.a.shape[2])
    if out.shape != shape:
        raise ValueError(f"linear_layer_into: buffer of shape {out.shape}, this stack's ΔW is {shape}")
    w = jax.lax.dynamic_slice_in_dim(per_layer_weights(weights, stack), layer, 1, axis=1)  # [N, 1]
    # out is donated and kept (keep_unused): XLA aliases the result to its buffer
    return linear(layer_window(stack, layer), w)[0].astype(out.dtype)


@jax.jit
def average(stack: ModuleStack) -> jax.Array:
    """Simple average Σ_i (1/N)·s_i·B_i·A_i over all N adapters of the stack → ``[L, out, in]``.
    An adapter that lacks this module (rank 0) still counts in N and contributes zero."""
    n = stack.num_adapters
    return linear(stack, jnp.full((n,), 1.0 / n, jnp.float32))


def _accumulate(acc: jax.Array, stack: ModuleStack, weights: jax.Array) -> jax.Array:
    return acc + linear(stack, weights).astype(acc.dtype)


@jax.jit
def accumulate(acc: jax.Array, stack: ModuleStack, weights: jax.Array) -> jax.Array:
    """``acc + linear(stack, weights)``: ``acc [L, out, in]``, weights ``[N]`` or ``[N, L]``."""
    return _accumulate(acc, stack, weights)


_accumulate_donated = jax.jit(_accumulate, donate_argnums=0)


def average_chunks(chunks: Iterable[ModuleStack], num_adapters: int, dtype=jnp.float32) -> jax.Array:
    """Average over a pool streamed as chunks of adapters (each a ``ModuleStack`` of the same module):
    Σ over chunks of Σ_i (1/num_adapters)·s_i·B_i·A_i, accumulated in ``dtype`` → ``[L, out, in]``.

    Never holds more than one chunk's factors and the accumulator. ``num_adapters`` is the pool's
    N (adapters lacking the module included); the chunks must account for exactly that many.
    """
    acc, seen = None, 0
    for chunk in chunks:
        n = chunk.num_adapters
        seen += n
        w = jnp.full((n,), 1.0 / num_adapters, jnp.float32)
        if acc is None:
            L, o, d = chunk.a.shape[0], chunk.b.shape[1], chunk.a.shape[2]
            acc = jnp.zeros((L, o, d), dtype)
        acc = _accumulate_donated(acc, chunk, w)
    if acc is None:
        raise ValueError("average_chunks: no chunks")
    if seen != num_adapters:
        raise ValueError(f"average_chunks: the chunks hold {seen} adapters, expected num_adapters={num_adapters}")
    return acc
