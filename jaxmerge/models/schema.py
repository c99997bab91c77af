"""The parameter schema: every leaf of a family declared once, everything else derived from it.

A ``Leaf`` names one parameter: its path in the params pytree, its Hugging Face key (``{layer}`` in
per-layer keys), its shape as a function of the config (per layer, without the stacked layer axis),
its logical axes (``jaxmerge.sharding``) and, for the seven projections, the LoRA-targetable module it
is the weight of. Per-layer leaves live under ``"layers"`` and their second path element is their
block (``"self_attn"`` or ``"mlp"``: the attention/MLP grouping of a module). A ``Family`` is a
``model_type`` with its architectures, its ``config.json`` reader and its leaves; ``Schema`` is the
leaves one config has, with the derived views: the abstract tree, the checkpoint key map both ways,
the logical-axes tree and the parameter count.

``DECODER`` are the leaves of the shared decoder (``jaxmerge.model``) every family has; a family adds
its own (Qwen3's q/k norms, Qwen2's q/k/v biases) and the decoder uses a leaf's presence in the
schema. The projections — their names, blocks, shapes and axes — are the same in every family, so the
module-level helpers (``MODULES``, ``module_shape``, ``module_axes``, ``module_name`` …) need no family.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping

_always = lambda config: True  # noqa: E731


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]                      # in the params tree; per-layer leaves start with "layers"
    key: str                                   # Hugging Face key; "{layer}" in per-layer keys
    shape: Callable[[Any], tuple[int, ...]]    # config → shape (per layer: without the layer axis)
    axes: tuple[str | None, ...]               # logical axes of that shape
    module: str | None = None                  # the LoRA-targetable projection this is the weight of
    when: Callable[[Any], bool] = _always      # config → whether the checkpoint has this leaf

    @property
    def per_layer(self) -> bool:
        return self.path[0] == "layers"

    @property
    def block(self) -> str | None:
        """``"self_attn"`` / ``"mlp"`` for a per-layer leaf inside a block, else None."""
        return self.path[1] if self.per_layer and len(self.path) > 2 else None

    @functools.cached_property
    def pattern(self) -> re.Pattern:
        return re.compile(re.escape(self.key).replace(re.escape("{layer}"), r"(\d+)"))


def _proj(name: str, block: str, out: Callable, inp: Callable, axes: tuple[str, str]) -> Leaf:
    return Leaf(("layers", block, name), f"model.layers.{{layer}}.{block}.{name}.weight",
                lambda c: (out(c), inp(c)), axes, module=name)


_d = lambda c: c.hidden_size  # noqa: E731
_q = lambda c: c.num_attention_heads * c.head_dim  # noqa: E731
_kv = lambda c: c.num_key_value_heads * c.head_dim  # noqa: E731
_f = lambda c: c.intermediate_size  # noqa: E731

# The seven projections, in the order of MODULES (HF layout [out, in]).
PROJECTIONS = (
    _proj("q_proj", "self_attn", _q, _d, ("heads", "embed")),
    _proj("k_proj", "self_attn", _kv, _d, ("kv_heads", "embed")),
    _proj("v_proj", "self_attn", _kv, _d, ("kv_heads", "embed")),
    _proj("o_proj", "self_attn", _d, _q, ("embed", "heads")),
    _proj("gate_proj", "mlp", _f, _d, ("mlp", "embed")),
    _proj("up_proj", "mlp", _f, _d, ("mlp", "embed")),
    _proj("down_proj", "mlp", _d, _f, ("embed", "mlp")),
)

DECODER = (
    Leaf(("embed_tokens",), "model.embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size), ("vocab", "embed")),
    Leaf(("norm",), "model.norm.weight", lambda c: (c.hidden_size,), (None,)),
    Leaf(("lm_head",), "lm_head.weight", lambda c: (c.vocab_size, c.hidden_size), ("vocab", "embed"),
         when=lambda c: not c.tie_word_embeddings),
    Leaf(("layers", "input_layernorm"), "model.layers.{layer}.input_layernorm.weight", lambda c: (c.hidden_size,), (None,)),
    Leaf(("layers", "post_attention_layernorm"), "model.layers.{layer}.post_attention_layernorm.weight",
         lambda c: (c.hidden_size,), (None,)),
) + PROJECTIONS

# Checkpoint tensors that are not parameters (buffers some older transformers saved).
IGNORED_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

MODULES = tuple(leaf.module for leaf in PROJECTIONS)
BLOCK = {leaf.module: leaf.block for leaf in PROJECTIONS}   # module → "self_attn" | "mlp"
_BY_MODULE = {leaf.module: leaf for leaf in PROJECTIONS}


def projection(module: str) -> Leaf:
    try:
        return _BY_MODULE[module]
    except KeyError:
        raise ValueError(f"unknown module {module!r}: expected one of {list(MODULES)}") from None


def module_shape(config, module: str) -> tuple[int, int]:
    """(out, in) of one projection, as stored by transformers (``nn.Linear.weight``)."""
    return projection(module).shape(config)


def module_axes(module: str) -> tuple[str, str]:
    """Logical (out, in) axes of a projection; LoRA B is (out, rank), A is (rank, in)."""
    return projection(module).axes


def module_path(module: str) -> tuple[str, ...]:
    """Path of a projection's weight in the params tree, e.g. ``("layers", "self_attn", "q_proj")``."""
    return projection(module).path


def module_name(layer: int, module: str, bare: bool = False) -> str:
    """The transformers module name (what PEFT matches and keys): ``model.layers.3.self_attn.q_proj``,
    or ``layers.3.self_attn.q_proj`` for a bare decoder (no ``model.`` prefix)."""
    name = projection(module).key.format(layer=layer).removesuffix(".weight")
    return name.removeprefix("model.") if bare else name


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: ``model_type``, the architectures it loads, its ``config.json`` reader and
    its parameter leaves (``DECODER`` plus its own)."""
    model_type: str
    architectures: tuple[str, ...]
    read: Callable[[Mapping[str, Any]], Any]
    leaves: tuple[Leaf, ...] = DECODER


class Schema:
    """The leaves one config has (``Family.leaves`` whose ``when`` holds), and what derives from them."""

    def __init__(self, family: Family, config):
        self.family, self.config = family, config
        self.leaves = tuple(leaf for leaf in family.leaves if leaf.when(config))
        self.unused = tuple(leaf for leaf in family.leaves if not leaf.when(config))  # e.g. a tied lm_head
        self.by_path = {leaf.path: leaf for leaf in self.leaves}

    def has(self, *path: str) -> bool:
        return tuple(path) in self.by_path

    def leaf(self, path: tuple[str, ...]) -> Leaf:
        try:
            return self.by_path[tuple(path)]
        except KeyError:
            raise KeyError(f"{'/'.join(path)} is not a parameter of a {self.family.model_type} model "
                           f"({self.config.num_hidden_layers} layers)") from None

    def full_shape(self, leaf: Leaf) -> tuple[int, ...]:
        shape = tuple(leaf.shape(self.config))
        return (self.config.num_hidden_layers,) + shape if leaf.per_layer else shape

    def tree(self, fn: Callable[[Leaf], Any]) -> dict:
        """A params-shaped dict with ``fn(leaf)`` at every leaf."""
        out: dict = {}
        for leaf in self.leaves:
            node = out
            for p in leaf.path[:-1]:
                node = node.setdefault(p, {})
            node[leaf.path[-1]] = fn(leaf)
        return out

    def logical_axes(self) -> dict:
        return self.tree(lambda leaf: (("layers",) if leaf.per_layer else ()) + tuple(leaf.axes))

    def hf_key(self, path: tuple[str, ...], layer: int | None = None) -> str:
        leaf = self.leaf(path)
        if leaf.per_layer != (layer is not None):
            raise ValueError(f"{'/'.join(path)}: layer {'required' if leaf.per_layer else 'not allowed'}")
        return leaf.key.format(layer=layer) if leaf.per_layer else leaf.key

    def match(self, key: str) -> tuple[Leaf, int | None] | None:
        """The leaf (and layer) a checkpoint key holds, or None when this config has no such leaf."""
        for leaf in self.leaves:
            m = leaf.pattern.fullmatch(key)
            if m:
                return leaf, (int(m[1]) if leaf.per_layer else None)
        return None

    def is_unused(self, key: str) -> bool:
        """A key of this family that this config does not use (a tied model's ``lm_head.weight``)."""
        return any(leaf.pattern.fullmatch(key) for leaf in self.unused) or bool(IGNORED_KEYS.fullmatch(key))

    @property
    def num_params(self) -> int:
        total = 0
        for leaf in self.leaves:
            n = 1
            for s in self.full_shape(leaf):
                n *= s
            total += n
        return total


def check_unique(families) -> None:
    """Each path has one key and each key one path across all families (so ``hf_key`` needs no config)."""
    key_of: dict = {}
    for fam in families:
        for leaf in fam.leaves:
            if key_of.setdefault(leaf.path, leaf.key) != leaf.key:
                raise AssertionError(f"{leaf.path}: two keys ({key_of[leaf.path]}, {leaf.key}) across families")
