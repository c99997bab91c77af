"""Logical axes → mesh axes, in one rules object (after jax-llm-examples' ``ShardingRules``).

Every array this library places on a mesh names its dimensions with logical axes (``layers``,
``embed``, ``heads``, ``kv_heads``, ``mlp``, ``vocab``, ``batch``, ``rank``, ``adapters``); a
``ShardingRules`` maps each to a mesh axis (or None = replicated). A dimension that the mesh axis
does not divide is replicated instead (tiny test models on 8 devices), never padded.

The default mesh is 2-D, ``("data", "tensor")``: the batch and the fsdp-style split of the model dim
go over ``data``, heads / mlp / vocab over ``tensor``. Meshes are built with ``AxisType.Auto`` on
purpose: the decoder is a ``lax.scan`` with einsums whose intermediate shardings GSPMD propagates
from the parameters; explicit-mode sharding-in-types would require annotating every einsum.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ModelConfig
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

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> P:
        """PartitionSpec for logical axes; with shape and mesh, indivisible dims are replicated.
        A mesh axis claimed by an earlier dim is not used again (replicated instead)."""
        axes, used = [], set()
        for i, name in enumerate(logical):
            ax = getattr(self, name) if name else None
            names = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
            if used & set(names):  # a mesh axis shards at most one dim: the earlier dim keeps it
                ax, names = None, ()
            if names and shape is not None and mesh is not None:
                if shape[i] % int(np.prod([mesh.shape[a] for a in names])):
                    ax, names = None, ()
            used |= set(names)
            axes.append(ax)
        return P(*axes)

    def sharding(self, mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical, shape, mesh))


def module_axes(module: str) -> tuple[str, str]:
    """Logical (out, in) axes of a projection; LoRA B is (out, rank), A is (rank, in)."""
    return _schema.module_axes(module)


def param_logical_axes(config: ModelConfig) -> dict:
    """The params pytree with a tuple of logical axis names at each leaf (from the family's schema)."""
    return schema_of(config).logical_axes()


def param_shardings(config: ModelConfig, shapes: Mapping, mesh: Mesh, rules: ShardingRules | None = None):
    """NamedShardings for a params tree, given a matching tree of shapes (or ShapeDtypeStructs)."""
    rules = rules or ShardingRules()
    axes = param_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    return jax.tree.map(lambda a, s: rules.sharding(mesh, a, getattr(s, "shape", s)), axes, shapes, is_leaf=is_axes)


def make_mesh(data: int | None = None, tensor: int = 1, devices=None) -> Mesh:
    """A ``("data", "tensor")`` mesh with Auto axis types (see module docstring)."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // tensor
    if data * tensor > len(devices):
        raise ValueError(f"mesh data={data} × tensor={tensor} needs {data * tensor} devices, have {len(devices)}")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, tensor), ("data", "tensor"), axis_types=auto, devices=devices[: data * tensor])
