"""A pool of LoRAs as device arrays: per module type, rank-concatenated factors across adapters.

For module type ``m`` with N adapters of ranks r_1..r_N (0 where adapter i does not target m) the
stack holds R = Σ r_i rows, adapter i's rows contiguous at ``offsets[i]:offsets[i+1]``:

    a:     [L, R, in]    rows of every adapter's A (zeros in layers the adapter does not touch)
    b:     [L, out, R]   columns of every adapter's B
    scale: [N]           s_i = alpha_i / r_i, or alpha_i / sqrt(r_i) for rsLoRA
    ranks: tuple[int]    static, r_i for this module (0 = adapter lacks the module)

Trailing rows beyond Σ r_i are padding (zero factors, multiplier 0): ``pad_rows`` adds them so that
R divides a mesh axis when the rank rows are sharded.

Concatenation rather than padding to the largest rank: with the real pool's rank mix a pad to r_max
does 7.2× the needed work (BUILD_NOTES). A LoRA that lacks a module or a layer has zero rows there
and so contributes exactly zero. ``present: [N, L]`` records which (adapter, layer) pairs are real,
for statistics (e.g. std matching) that must ignore the zero fill.

Einsum letters: l layers, r rank rows, n adapters, o out features, d in features.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .lora import Factored


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModuleStack:
    a: jax.Array                  # [L, R, in]
    b: jax.Array                  # [L, out, R]
    scale: jax.Array              # [N]
    present: jax.Array            # [N, L] bool
    ranks: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def num_adapters(self) -> int:
        return len(self.ranks)

    @property
    def offsets(self) -> np.ndarray:
        """``[N + 1]`` start row of each adapter (static)."""
        return np.concatenate([[0], np.cumsum(self.ranks)]).astype(np.int64)

    @property
    def owner(self) -> np.ndarray:
        """``[R]`` adapter index of every row (static)."""
        return np.repeat(np.arange(len(self.ranks)), self.ranks)

    def row_multiplier(self, coef: jax.Array) -> jax.Array:
        """``[L, R]`` from per-(adapter, layer) coefficients ``coef [N, L]`` (already activated):
        m[l, r] = coef[owner(r), l] · scale[owner(r)]; 0 on trailing padding rows (``pad_rows``)."""
        own = jnp.asarray(self.owner)
        m = (coef * self.scale[:, None])[own].T
        pad = self.a.shape[1] - m.shape[1]
        return jnp.pad(m, ((0, 0), (0, pad))) if pad else m

    def factored(self, coef: jax.Array) -> Factored:
        """The forward's delta Σ_i coef[i, l]·s_i·B_i·A_i in factored form; ``coef: [N, L]``."""
        return Factored(self.a, self.b, self.row_multiplier(coef))

    def adapter(self, i: int) -> tuple[jax.Array, jax.Array]:
        """Adapter i's own factors: A ``[L, r_i, in]``, B ``[L, out, r_i]`` (static slice)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.a[:, lo:hi], self.b[:, :, lo:hi]  # padding rows are never part of an adapter

    def subset(self, indices: Sequence[int]) -> "ModuleStack":
        """The stack of adapters ``indices`` (in that order); gathers rows on the host side index."""
        idx = [int(i) for i in indices]
        off = self.offsets
        rows = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx] or [np.zeros(0, np.int64)])
        rows = jnp.asarray(rows, jnp.int32)
        return ModuleStack(jnp.take(self.a, rows, axis=1), jnp.take(self.b, rows, axis=2),
                           self.scale[jnp.asarray(idx, jnp.int32)], self.present[jnp.asarray(idx, jnp.int32)],
                           tuple(self.ranks[i] for i in idx))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pool:
    """N adapters over the module types any of them targets. ``names[i]`` is adapter i's source."""
    modules: dict[str, ModuleStack]
    names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def num_adapters(self) -> int:
        return len(self.names)

    @property
    def num_layers(self) -> int:
        return next(iter(self.modules.values())).a.shape[0]

    def subset(self, indices: Sequence[int]) -> "Pool":
        return Pool({m: s.subset(indices) for m, s in self.modules.items()}, tuple(self.names[i] for i in indices))

    def factored(self, coefs: Mapping[str, jax.Array]) -> dict[str, Factored]:
        """Forward-ready adapters from per-module coefficients ``{module: [N, L]}``."""
        return {m: s.factored(coefs[m]) for m, s in self.modules.items()}


def pad_rows(stack: ModuleStack, multiple: int) -> ModuleStack:
    """Append zero rows so that R is a multiple of ``multiple`` (results unchanged: m = 0 there)."""
    pad = -stack.a.shape[1] % multiple
    if not pad:
        return stack
    if isinstance(stack.a, jax.ShapeDtypeStruct):
        L, R, d = stack.a.shape
        o = stack.b.shape[1]
        return dataclasses.replace(stack, a=jax.ShapeDtypeStruct((L, R + pad, d), stack.a.dtype),
                                   b=jax.ShapeDtypeStruct((L, o, R + pad), stack.b.dtype))
    return dataclasses.replace(stack, a=jnp.pad(stack.a, ((0, 0), (0, pad), (0, 0))),
                               b=jnp.pad(stack.b, ((0, 0), (0, 0), (0, pad))))


def stack_logical_axes(module: str) -> dict[str, tuple]:
    """Logical axes of a module stack: A's input and B's output dims sharded like the base W, so
    merges and factored application need no communication beyond W's own."""
    from .sharding import module_axes
    out_ax, in_ax = module_axes(module)
    return {"a": ("layers", "rank", in_ax), "b": ("layers", out_ax, "rank"), "scale": ("adapters",),
            "present": ("adapters", "layers")}


def pool_shardings(pool: Pool, mesh, rules=None, strict: bool = False) -> Pool:
    """A Pool-shaped tree of NamedShardings for ``pool`` (arrays or ShapeDtypeStructs) on ``mesh``;
    ``strict`` raises one ``ShardingError`` listing every dimension that would be replicated."""
    from .sharding import ShardingRules, strict_shardings
    rules = rules or ShardingRules()
    fields = ("a", "b", "scale", "present")
    items = [(f"{m}.{f}", stack_logical_axes(m)[f], getattr(s, f).shape) for m, s in pool.modules.items() for f in fields]
    flat = iter(strict_shardings(items, mesh, rules, strict))
    return Pool({m: ModuleStack(*(next(flat) for _ in fields), s.ranks) for m, s in pool.modules.items()}, pool.names)
