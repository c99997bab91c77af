"""Qwen3 (``model_type`` "qwen3"), the authors' second base: the shared decoder plus a per-head RMSNorm
of q and of k (over ``head_dim``, before RoPE), an explicit ``head_dim``, tied or untied embeddings and
optional sliding-window layers (``layer_types`` / ``use_sliding_window`` + ``max_window_layers``)."""

from __future__ import annotations

from ..config import read_decoder, read_layer_windows, refuse
from .schema import DECODER, Family, Leaf

# transformers' Qwen3Config values for fields a config.json omits
DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                max_position_embeddings=32768, head_dim=128, num_key_value_heads=32)

LEAVES = DECODER + tuple(
    Leaf(("layers", "self_attn", f"{x}_norm"), f"model.layers.{{layer}}.self_attn.{x}_norm.weight",
         lambda c: (c.head_dim,), (None,)) for x in ("q", "k"))


def read(d):
    refuse(d, "qwen3", attention_bias="projection biases")
    layers = d.get("num_hidden_layers")
    return read_decoder(d, "qwen3", DEFAULTS, **read_layer_windows(d, layers if layers is not None else 32))


FAMILY = Family("qwen3", ("Qwen3ForCausalLM", "Qwen3Model"), read, LEAVES)
