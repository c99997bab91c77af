"""Static merges of a whole pool through the registry: ``merge_pool`` (all layers at once),
``iter_merge_pool`` (a window of layers at a time) and ``merge_window`` (one window of a stack that may
itself be just that window, as the streaming export reads it from disk).

    merge_pool(pool, "ties")                              # the recipe: density 0.8, sign total, weight 1
    merge_pool(pool, "ties", weights=w, density=0.6)      # parameters by name, checked by the registry
    merge_pool(pool, "dare_linear", density=0.5, key=jax.random.key(1))

Methods, their parameters and weight defaults: ``jaxmerge.merge.registry`` (``registry.names()``).
Methods that draw masks fold the module's index in ``MODULES`` into ``key`` (then the layer and the
adapter), so every window and every module draws its own masks, the same in any window size.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp

from ..config import MODULES
from ..lora import Factored
from ..stacks import ModuleStack, Pool
from . import registry
from ._groups import layer_window
from .sparse import uniform_noise


def method_and_params(method: str, params=None, **given):
    """(``MergeMethod``, params dataclass) from a name and either a params object or parameters by name."""
    m = registry.get(method)
    if params is None:
        return m, registry.make_params(method, **given)
    if given:
        raise registry.MergeMethodError(f"pass either params= or parameters by name, not both ({sorted(given)})")
    if not isinstance(params, m.params):
        raise registry.MergeMethodError(f"params of type {type(params).__name__} for method {method!r} "
                                        f"(expects {m.params.__name__})")
    return m, params


def module_key(key: jax.Array | None, module: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(0) if key is None else key, MODULES.index(module))


def merge_window(stack: ModuleStack, module: str, method: registry.MergeMethod, params, weights, start: int, *,
                 key=None, noise=uniform_noise) -> jax.Array:
    """ΔW ``[n, out, in]`` of a stack holding layers ``start .. start+n-1`` (weights ``[N, n]``)."""
    layers = jnp.arange(start, start + stack.a.shape[0], dtype=jnp.int32)
    return method.merge(stack, jnp.asarray(weights, jnp.float32), params, key=module_key(key, module),
                        layers=layers, noise=noise)


def factored_window(stack: ModuleStack, method: registry.MergeMethod, params, weights) -> Factored | None:
    """The exact factored form of the merge (``None`` if the method has none)."""
    return None if method.factored is None else method.factored(stack, jnp.asarray(weights, jnp.float32), params)


def merge_pool(pool: Pool, method: str, *, weights=None, params=None, key=None, noise=uniform_noise,
               **given) -> dict[str, jax.Array]:
    """Merge every module type of the pool: ``{module: ΔW [L, out, in]}``.

    ``weights``: ``[N]`` or ``[N, L]`` (default: the method's rule); ``params`` or parameters by name
    (default: the method's recipe); ``key``: for methods that draw masks (default ``jax.random.key(0)``)."""
    m, p = method_and_params(method, params, **given)
    w = registry.resolve_weights(method, pool.num_adapters, pool.num_layers, weights)
    return {mod: merge_window(s, mod, m, p, w, 0, key=key, noise=noise) for mod, s in pool.modules.items()}


def iter_merge_pool(pool: Pool, method: str, *, weights=None, params=None, key=None, noise=uniform_noise,
                    layers_per_step: int = 1, **given) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Like ``merge_pool`` but yields ``(first_layer, {module: ΔW [n, out, in]})`` for windows of
    ``layers_per_step`` layers, so only one window's dense deltas need exist at a time."""
    m, p = method_and_params(method, params, **given)
    L = pool.num_layers
    w = registry.resolve_weights(method, pool.num_adapters, L, weights)
    for start in range(0, L, layers_per_step):
        size = min(layers_per_step, L - start)
        yield start, {mod: merge_window(layer_window(s, start, size), mod, m, p, w[:, start:start + size], start,
                                        key=key, noise=noise) for mod, s in pool.modules.items()}
