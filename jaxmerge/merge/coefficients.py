"""Learned merge coefficients: granularity × activation → the per-(adapter, layer) multipliers that
the stacks turn into factored or dense deltas.

Raw coefficient shapes by granularity (N adapters, L layers, M module types of the pool, in
``jaxmerge.config.MODULES`` order — not ``pool.modules``' dict order, which a jit round trip
re-sorts):

    model    [N]          one per adapter
    layer    [N, L]
    sublayer [N, L, 2]    index 0 = attention modules (q,k,v,o), 1 = MLP modules (gate,up,down)
    module   [N, L, M]

Activation is applied to the raw coefficients (softmax over the adapter axis 0 for each slot),
then the result is broadcast to ``{module: [N, L]}``. Tying module coefficients across modules is
therefore exactly the layer granularity, and so on up to model level.

Leaky ReLU follows PyTorch's convention (slope 0.01; gradient = slope at exactly 0), because
``ours`` starts at 0 and the authors' release trains with ``torch.nn.functional.leaky_relu``;
``jax.nn.leaky_relu`` would give gradient 1 there.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import jax
import jax.numpy as jnp

from ..config import ATTN_MODULES, MODULES
from ..lora import Factored
from ..stacks import ModuleStack, Pool

GRANULARITIES = ("model", "layer", "sublayer", "module")
ACTIVATIONS = ("linear", "softmax", "leaky_relu")
LEAKY_SLOPE = 0.01


def coefficient_shape(granularity: str, num_adapters: int, num_layers: int, num_modules: int) -> tuple[int, ...]:
    n, L = num_adapters, num_layers
    try:
        return {"model": (n,), "layer": (n, L), "sublayer": (n, L, 2), "module": (n, L, num_modules)}[granularity]
    except KeyError:
        raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}") from None


def activate(w: jax.Array, activation: str) -> jax.Array:
    """Apply the activation; softmax normalises over the adapter axis (axis 0)."""
    if activation == "linear":
        return w
    if activation == "softmax":
        return jax.nn.softmax(w, axis=0)
    if activation == "leaky_relu":
        return jnp.where(w > 0, w, LEAKY_SLOPE * w)
    raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")


def expand(w: jax.Array, granularity: str, modules: Sequence[str], num_layers: int) -> dict[str, jax.Array]:
    """Activated coefficients of any granularity → ``{module: [N, L]}``."""
    n = w.shape[0]
    out = {}
    for j, m in enumerate(modules):
        if granularity == "model":
            c = jnp.broadcast_to(w[:, None], (n, num_layers))
        elif granularity == "layer":
            c = w
        elif granularity == "sublayer":
            c = w[:, :, 0 if m in ATTN_MODULES else 1]
        elif granularity == "module":
            c = w[:, :, j]
        else:
            raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
        out[m] = c
    return out


Stacks = Union[Pool, Mapping[str, ModuleStack]]  # a Pool, or its modules alone (what jitted steps carry)


def _stacks(pool: Stacks) -> Mapping[str, ModuleStack]:
    return pool.modules if isinstance(pool, Pool) else pool


def module_order(pool: Stacks) -> tuple[str, ...]:
    """The pool's module types in canonical (``MODULES``) order: the M axis of module coefficients."""
    return tuple(m for m in MODULES if m in _stacks(pool))


def module_coefficients(pool: Stacks, w: jax.Array, granularity: str, activation: str) -> dict[str, jax.Array]:
    """Raw coefficients → activated per-module ``{module: [N, L]}`` for this pool."""
    stacks = _stacks(pool)
    num_layers = next(iter(stacks.values())).a.shape[0]
    return expand(activate(w, activation), granularity, module_order(pool), num_layers)


def factored_adapters(pool: Stacks, w: jax.Array, granularity: str, activation: str) -> dict[str, Factored]:
    """The forward's adapters for raw coefficients ``w``: Σ_i act(w)_i·s_i·B_i·A_i per module, factored."""
    coefs = module_coefficients(pool, w, granularity, activation)
    return {m: s.factored(coefs[m]) for m, s in _stacks(pool).items()}


def dense_deltas(pool: Pool, w: jax.Array, granularity: str, activation: str) -> dict[str, jax.Array]:
    """The same merge materialised: ``{module: [L, out, in]}`` (one matmul over the concatenated ranks)."""
    return {m: f.dense() for m, f in factored_adapters(pool, w, granularity, activation).items()}
