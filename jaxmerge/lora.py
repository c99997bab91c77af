"""LoRA deltas as the forward consumes them: the one extension point of the model.

A forward takes ``adapters``: a mapping from module name (``"q_proj"`` … ``"down_proj"``) to a delta
or a tuple of deltas, each carrying a leading layer axis. Two kinds:

* ``Dense(delta)``      — ΔW per layer, ``delta: [L, out, in]`` (same layout as the base weight).
* ``Factored(a, b, m)`` — rank-concatenated factors, applied as ``((x·aᵀ) ⊙ m)·bᵀ``:
  ``a: [L, R, in]``, ``b: [L, out, R]``, ``m: [L, R]`` the per-row multiplier (act(w_i)·s_i for
  every row of LoRA i; 0 on padding rows). This equals Σ_i m_i·B_i·A_i exactly — no cross terms.
  With a leading group axis (``a: [G, L, R, in]``, ``b: [G, L, out, R]``, ``m: [G, L, R]``) the
  batch's B rows are split into G equal consecutive groups and group g uses adapter g (G = B: one
  adapter per row) — batched multi-LoRA evaluation, with no copy of the factors per example.

Einsum letters: b batch, t tokens, d input features, o output features, r rank rows, l layers,
g adapter groups, n tokens of one group (its rows × t).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Union

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dense:
    delta: jax.Array  # [L, out, in]

    def layer_major(self) -> "Dense":
        return self


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Factored:
    a: jax.Array  # [L, R, in]   or [G, L, R, in]
    b: jax.Array  # [L, out, R]  or [G, L, out, R]
    m: jax.Array  # [L, R]       or [G, L, R]

    @property
    def batched(self) -> bool:
        """Whether there is a leading group axis (one adapter per group of batch rows)."""
        return self.m.ndim == 3

    def layer_major(self) -> "Factored":
        """Move a group axis behind the layer axis so that a scan over layers slices it."""
        if not self.batched:
            return self
        return Factored(jnp.moveaxis(self.a, 1, 0), jnp.moveaxis(self.b, 1, 0), jnp.moveaxis(self.m, 1, 0))

    def dense(self) -> jax.Array:
        """Σ_r m_r·b[:, r]·a[r, :] per layer: ``[L, out, in]`` (unbatched only)."""
        if self.batched:
            raise ValueError("dense() of a batched Factored delta is not defined")
        return jnp.einsum("lor,lrd->lod", self.b * self.m[:, None, :].astype(self.b.dtype), self.a)


Delta = Union[Dense, Factored]
Adapters = Mapping[str, Union[Delta, tuple]]


def fold_into(w: jax.Array, delta: jax.Array, dtype=None) -> jax.Array:
    """W + ΔW summed in float32 and rounded once to ``dtype`` (default W's): the one fold rule of every
    folded export and of pool scoring's folded adapters."""
    return (w.astype(jnp.float32) + delta.astype(jnp.float32)).astype(w.dtype if dtype is None else dtype)


def fold_adapters(params: Mapping, adapters: "Adapters") -> dict:
    """``params`` with every adapted projection replaced by W + ΣΔW (``fold_into``; factored deltas through
    ``Factored.dense``): the merged model itself, for evaluations that run many tokens through one fixed
    merge. Pure and jittable; the containers on the modules' paths are new, every other leaf is shared."""
    from .models.schema import module_path
    out = dict(params)
    for m, entry in adapters.items():
        *parents, leaf = module_path(m)
        node = out
        for key in parents:
            node[key] = dict(node[key])
            node = node[key]
        deltas = [d.delta if isinstance(d, Dense) else d.dense() for d in as_tuple(entry)]
        node[leaf] = fold_into(node[leaf], sum(deltas[1:], deltas[0]))
    return out


def as_tuple(entry) -> tuple:
    return entry if isinstance(entry, tuple) else (entry,)


def grouped(adapters: Adapters | None) -> bool:
    """Whether any delta has a group axis (one adapter per group of rows): those rows share no prefix cache."""
    return bool(adapters) and any(getattr(d, "batched", False) for e in adapters.values() for d in as_tuple(e))


def layer_major(adapters: Adapters | None) -> dict:
    """Prepare adapters for a scan over layers (every leaf gets the layer axis first)."""
    if not adapters:
        return {}
    return {k: tuple(d.layer_major() for d in as_tuple(v)) for k, v in adapters.items()}


def apply_linear(x: jax.Array, w: jax.Array, deltas: tuple = (), bias: jax.Array | None = None) -> jax.Array:
    """``x·(W + Σ ΔW)ᵀ (+ bias)`` for one layer. x: [B, T, in], w: [out, in], bias: [out] → [B, T, out].

    Dense deltas are folded into W (one matmul); factored deltas run as two thin matmuls.
    """
    dense = [d for d in deltas if isinstance(d, Dense)]
    if dense:
        w = w + sum(d.delta.astype(w.dtype) for d in dense)
    y = jnp.einsum("btd,od->bto", x, w)
    if bias is not None:
        y = y + bias
    for d in deltas:
        if isinstance(d, Factored):
            a, b, m = d.a.astype(x.dtype), d.b.astype(x.dtype), d.m.astype(x.dtype)
            if m.ndim == 2:  # this layer's slice of a grouped delta: a [G, R, in], b [G, out, R], m [G, R]
                B, T, _ = x.shape
                G = m.shape[0]
                if B % G:
                    raise ValueError(f"batch of {B} rows is not divisible into {G} adapter groups")
                xg = x.reshape(G, (B // G) * T, x.shape[-1])
                h = jnp.einsum("gnd,grd->gnr", xg, a) * m[:, None, :]
                y = y + jnp.einsum("gnr,gor->gno", h, b).reshape(B, T, -1)
            else:  # a: [R, in], b: [out, R], m: [R]
                h = jnp.einsum("btd,rd->btr", x, a) * m
                y = y + jnp.einsum("btr,or->bto", h, b)
    return y
