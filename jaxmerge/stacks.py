"""A pool of LoRAs as device arrays: per module type, rank-concatenated factors across adapters.

For module type ``m`` with N adapters of ranks r_1..r_N (0 where adapter i does not target m) the
stack holds R = Σ r_i rows, adapter i's rows contiguous at ``offsets[i]:offsets[i+1]``:

    a:     [L, R, in]    rows of every adapter's A (zeros in layers the adapter does not touch)
    b:     [L, out, R]   columns of every adapter's B
    scale: [N]           s_i = alpha_i / r_i, or alpha_i / sqrt(r_i) for rsLoRA
    present: [N, L]      whether adapter i has layer l
    owner: [R] int32     the adapter of each row (-1 on padding); ``ranks`` r_i is derived from it

Every field is data, none static: the row → adapter map is traced, so two pools with the same shapes
(N, R, L) but different rank mixes run the same compiled programs. Trailing rows beyond Σ r_i are
padding (zero factors, owner -1, multiplier 0): ``pad_rows`` adds them so that R divides a mesh axis,
``bucketed`` so that R falls into a few size classes (``rank_bucket``) and a sweep compiles each
program once.

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
    """One module type's rank-concatenated stack. Every field is data (a pytree leaf), so stacks of the
    same shapes — whatever their adapters' ranks — share one compiled program."""
    a: jax.Array                  # [L, R, in]
    b: jax.Array                  # [L, out, R]
    scale: jax.Array              # [N]
    present: jax.Array            # [N, L] bool
    owner: jax.Array              # [R] int32: the adapter of each row, -1 on padding rows

    @classmethod
    def from_ranks(cls, a, b, scale, present, ranks: Sequence[int]) -> "ModuleStack":
        """A stack whose adapter i owns ``ranks[i]`` consecutive rows; rows beyond Σ ranks are padding."""
        return cls(a, b, scale, present, owner_of(ranks, a.shape[1]))

    @property
    def num_adapters(self) -> int:
        return self.scale.shape[0]

    @property
    def ranks(self) -> np.ndarray:
        """``[N]`` r_i (0 = the adapter lacks this module). Host-side: needs a concrete ``owner`` (under
        jit it raises — compiled code never depends on ranks, only on ``owner`` as data)."""
        own = np.asarray(self.owner)
        return np.bincount(own[own >= 0], minlength=self.num_adapters).astype(np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """``[N + 1]`` start row of each adapter (host-side, like ``ranks``)."""
        return np.concatenate([[0], np.cumsum(self.ranks)]).astype(np.int64)

    def row_multiplier(self, coef: jax.Array) -> jax.Array:
        """``[L, R]`` from per-(adapter, layer) coefficients ``coef [N, L]`` (already activated):
        m[l, r] = coef[owner(r), l] · scale[owner(r)]; 0 on padding rows."""
        own = jnp.asarray(self.owner, jnp.int32)
        m = (coef * self.scale[:, None])[jnp.maximum(own, 0)].T
        return jnp.where(own[None, :] >= 0, m, jnp.zeros((), m.dtype))

    def factored(self, coef: jax.Array) -> Factored:
        """The forward's delta Σ_i coef[i, l]·s_i·B_i·A_i in factored form; ``coef: [N, L]``."""
        return Factored(self.a, self.b, self.row_multiplier(coef))

    def adapter(self, i: int) -> tuple[jax.Array, jax.Array]:
        """Adapter i's own factors: A ``[L, r_i, in]``, B ``[L, out, r_i]`` (a host-side slice)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.a[:, lo:hi], self.b[:, :, lo:hi]  # padding rows are never part of an adapter

    def subset(self, indices: Sequence[int]) -> "ModuleStack":
        """The stack of adapters ``indices`` (in that order), without padding; gathers rows by host index."""
        idx = [int(i) for i in indices]
        off, ranks = self.offsets, self.ranks
        rows = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx] or [np.zeros(0, np.int64)])
        rows = jnp.asarray(rows, jnp.int32)
        sel = jnp.asarray(idx, jnp.int32)
        return ModuleStack.from_ranks(jnp.take(self.a, rows, axis=1), jnp.take(self.b, rows, axis=2),
                                      self.scale[sel], self.present[sel], [ranks[i] for i in idx])


def owner_of(ranks: Sequence[int], rows: int | None = None) -> np.ndarray:
    """``[rows]`` int32 owner array of consecutive blocks of ``ranks`` rows, -1 on the padding after them."""
    ranks = np.asarray(ranks, np.int64)
    own = np.repeat(np.arange(len(ranks), dtype=np.int32), ranks)
    rows = len(own) if rows is None else rows
    if rows < len(own):
        raise ValueError(f"{len(own)} rank rows do not fit in a stack of {rows}")
    return np.concatenate([own, np.full(rows - len(own), -1, np.int32)])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pool:
    """N adapters over the module types any of them targets. ``names[i]`` is adapter i's source.

    ``modules`` is always in the schema's module order (``jaxmerge.config.MODULES``), whatever order it
    was given in and through every pytree round trip (a jit rebuilds dicts in sorted key order), so no
    caller can index module coefficients by a dict position that differs from another's."""
    modules: dict[str, ModuleStack]
    names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

    def __post_init__(self):
        from .config import MODULES
        unknown = [m for m in self.modules if m not in MODULES]
        if unknown:
            raise ValueError(f"pool modules {unknown}: not projections of the schema ({', '.join(MODULES)})")
        object.__setattr__(self, "modules", {m: self.modules[m] for m in MODULES if m in self.modules})

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


def pad_rows(stack: ModuleStack, multiple: int = 1, rows: int | None = None) -> ModuleStack:
    """Append padding rows (zero factors, owner -1: results unchanged) up to a multiple of ``multiple``,
    or to exactly ``rows``."""
    R = stack.a.shape[1]
    target = rows if rows is not None else R + (-R % multiple)
    if target < R:
        raise ValueError(f"cannot pad a stack of {R} rows to {target}")
    pad = target - R
    if not pad:
        return stack
    owner = np.concatenate([np.asarray(stack.owner), np.full(pad, -1, np.int32)]) \
        if not isinstance(stack.owner, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct((target,), jnp.int32)
    if isinstance(stack.a, jax.ShapeDtypeStruct):
        L, _, d = stack.a.shape
        o = stack.b.shape[1]
        return dataclasses.replace(stack, a=jax.ShapeDtypeStruct((L, target, d), stack.a.dtype),
                                   b=jax.ShapeDtypeStruct((L, o, target), stack.b.dtype), owner=owner)
    return dataclasses.replace(stack, a=jnp.pad(stack.a, ((0, 0), (0, pad), (0, 0))),
                               b=jnp.pad(stack.b, ((0, 0), (0, 0), (0, pad))), owner=jnp.asarray(owner))


def rank_bucket(rows: int) -> int:
    """The padded size of a stack of ``rows`` rank rows: ``rows`` up to 16, then the next multiple of
    2^(⌊log2 rows⌋ − 1) — two sizes per octave (2^n, 1.5·2^n), at most 50 % padding — so that the pools a
    sweep draws (k of N adapters, ranks varying) fall into a few shape classes that share compiled
    programs (BUILD_NOTES: four per octave left 20 classes in the default world's Table 2 sweep, two 14)."""
    if rows <= 16:
        return rows
    step = 1 << (int(rows).bit_length() - 2)
    return -(-rows // step) * step


def bucketed(pool: Pool) -> Pool:
    """Every stack padded to ``rank_bucket`` of its rows (exact: padding rows have multiplier 0)."""
    return Pool({m: pad_rows(s, rows=rank_bucket(s.a.shape[1])) for m, s in pool.modules.items()}, pool.names)


def stack_logical_axes(module: str) -> dict[str, tuple]:
    """Logical axes of a module stack: A's input and B's output dims sharded like the base W, so
    merges and factored application need no communication beyond W's own."""
    from .sharding import module_axes
    out_ax, in_ax = module_axes(module)
    return {"a": ("layers", "rank", in_ax), "b": ("layers", out_ax, "rank"), "scale": ("adapters",),
            "present": ("adapters", "layers"), "owner": ("rank",)}


def pool_shardings(pool: Pool, mesh, rules=None, strict: bool = False) -> Pool:
    """A Pool-shaped tree of NamedShardings for ``pool`` (arrays or ShapeDtypeStructs) on ``mesh``;
    ``strict`` raises one ``ShardingError`` listing every dimension that would be replicated."""
    from .sharding import ShardingRules, strict_shardings
    rules = rules or ShardingRules()
    fields = ("a", "b", "scale", "present", "owner")
    items = [(f"{m}.{f}", stack_logical_axes(m)[f], getattr(s, f).shape) for m, s in pool.modules.items() for f in fields]
    flat = iter(strict_shardings(items, mesh, rules, strict))
    return Pool({m: ModuleStack(*(next(flat) for _ in fields)) for m, s in pool.modules.items()}, pool.names)
