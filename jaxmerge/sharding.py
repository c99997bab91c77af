"""Logical axes → mesh axes, in one rules object (after jax-llm-examples' ``ShardingRules``).

Every array this library places on a mesh names its dimensions with logical axes (``layers``,
``embed``, ``heads``, ``kv_heads``, ``mlp``, ``vocab``, ``batch``, ``rank``, ``adapters``); a
``ShardingRules`` maps each to a mesh axis (or None = replicated). A dimension that the mesh axis
does not divide is replicated instead (tiny test models on 8 devices), never padded; so is a
dimension whose mesh axis an earlier dimension already uses. ``strict=True`` (``jaxmerge plan``)
raises a ``ShardingError`` naming every such dimension instead (as jax-llm-examples'
``logical_to_physical`` does), so a memory plan never silently describes replicated weights.

The default mesh is 2-D, ``("data", "tensor")``: the batch and the fsdp-style split of the model dim
go over ``data``, heads / mlp / vocab over ``tensor``. Meshes are built with ``AxisType.Auto`` on
purpose: the decoder is a ``lax.scan`` with einsums whose intermediate shardings GSPMD propagates
from the parameters; explicit-mode sharding-in-types would require annotating every einsum.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ModelConfig
from .errors import UserError
from .models import schema as _schema, schema_of

AxisName = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    batch: AxisName = "data"
    embed: AxisName = "data"  # fsdp: the model dim of weights is split over the data axis
    heads: AxisName = "tensor"
    kv_heads: AxisName = "tensor"
    mlp: AxisName = "tensor"
    vocab: AxisName = "tensor"
    layers: AxisName = None
    rank: AxisName = None
    adapters: AxisName = None

    def resolve(self, logical: Sequence[str | None], shape: Sequence[int] | None = None,
                mesh: Mesh | None = None) -> tuple[P, list[str]]:
        """(PartitionSpec, what was replicated and why). With shape and mesh, a dim the mesh axes do
        not divide is replicated; a mesh axis claimed by an earlier dim is not used again (a collision:
        the earlier dim keeps it)."""
        axes, used, replicated = [], {}, []
        for i, name in enumerate(logical):
            if name is not None and name not in _LOGICAL:
                raise ShardingError(f"logical axis {name!r} is not one of {list(_LOGICAL)}")
            ax = getattr(self, name) if name else None
            names = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
            clash = [a for a in names if a in used]
            if clash:
                replicated.append(f"dim {i} ({name!r}) would reuse mesh axis {clash[0]!r} of dim {used[clash[0]]}")
                ax, names = None, ()
            if names and shape is not None and mesh is not None:
                size = int(np.prod([mesh.shape[a] for a in names]))
                if shape[i] % size:
                    replicated.append(f"dim {i} ({name!r}, size {shape[i]}) is not divisible by mesh axes "
                                      f"{names} ({size})")
                    ax, names = None, ()
            used.update({a: i for a in names})
            axes.append(ax)
        return P(*axes), replicated

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
             strict: bool = False) -> P:
        """PartitionSpec for logical axes (see ``resolve``). ``strict``: a collision or an indivisible
        dimension raises a ``ShardingError`` naming it instead of replicating the dimension."""
        spec, replicated = self.resolve(logical, shape, mesh)
        if strict and replicated:
            raise ShardingError(f"axes {tuple(logical)} of shape {tuple(shape or ())}: " + "; ".join(replicated))
        return spec

    def sharding(self, mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int],
                 strict: bool = False) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical, shape, mesh, strict))


_LOGICAL = tuple(f.name for f in dataclasses.fields(ShardingRules))


class ShardingError(UserError, ValueError):
    """Strict sharding: logical axes that the rules and mesh cannot shard as asked (a mesh axis used
    twice, or a dimension it does not divide); the message names every such dimension."""


def strict_shardings(items, mesh: Mesh, rules: ShardingRules, strict: bool):
    """``[(name, logical, shape)]`` → ``[NamedSharding]``; with ``strict`` every problem of every item is
    collected and raised together (one ``ShardingError``), so a plan never describes replicated weights."""
    out, problems = [], []
    for name, logical, shape in items:
        spec, replicated = rules.resolve(logical, shape, mesh)
        problems += [f"{name}: {r}" for r in replicated]
        out.append(NamedSharding(mesh, spec))
    if problems:
        msg = f"{len(problems)} dimension(s) {'would be' if strict else 'are'} replicated on mesh {dict(mesh.shape)}:\n  " \
            + "\n  ".join(problems)
        if strict:
            raise ShardingError(msg)
        logging.getLogger(__name__).info(msg)  # not strict (tiny models on big meshes): said, not silent
    return out


def module_axes(module: str) -> tuple[str, str]:
    """Logical (out, in) axes of a projection; LoRA B is (out, rank), A is (rank, in)."""
    return _schema.module_axes(module)


def param_logical_axes(config: ModelConfig) -> dict:
    """The params pytree with a tuple of logical axis names at each leaf (from the family's schema)."""
    return schema_of(config).logical_axes()


def param_shardings(config: ModelConfig, shapes: Mapping, mesh: Mesh, rules: ShardingRules | None = None,
                    strict: bool = False):
    """NamedShardings for a params tree, given a matching tree of shapes (or ShapeDtypeStructs);
    ``strict`` raises one ``ShardingError`` listing every dimension that would be replicated."""
    rules = rules or ShardingRules()
    axes = param_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    flat, treedef = jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_axes)
    shape_of = jax.tree.leaves(jax.tree.map(lambda a, s: tuple(getattr(s, "shape", s)), axes, shapes, is_leaf=is_axes),
                               is_leaf=lambda x: isinstance(x, tuple))
    items = [(jax.tree_util.keystr(path), ax, sh) for (path, ax), sh in zip(flat, shape_of)]
    return jax.tree.unflatten(treedef, strict_shardings(items, mesh, rules, strict))


def make_mesh(data: int | None = None, tensor: int = 1, devices=None) -> Mesh:
    """A ``("data", "tensor")`` mesh with Auto axis types (see module docstring)."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // tensor
    if data * tensor > len(devices):
        raise ValueError(f"mesh data={data} × tensor={tensor} needs {data * tensor} devices, have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, tensor), ("data", "tensor"), axis_types=auto, devices=devices[: data * tensor])
