"""Qwen2 / Qwen2.5 (``model_type`` "qwen2"): the shared decoder plus biases on q, k and v (not o), and
optional sliding-window layers (``layer_types`` / ``use_sliding_window`` + ``max_window_layers``)."""

from __future__ import annotations

from ..config import read_decoder, read_layer_windows
from .schema import DECODER, Family, Leaf, projection

# transformers' Qwen2Config values for fields a config.json omits
DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                max_position_embeddings=32768, num_key_value_heads=32)


def _bias(module: str) -> Leaf:
    w = projection(module)
    return Leaf(w.path[:-1] + (f"{module}_bias",), w.key.removesuffix(".weight") + ".bias",
                lambda c: (w.shape(c)[0],), w.axes[:1])


LEAVES = DECODER + tuple(_bias(m) for m in ("q_proj", "k_proj", "v_proj"))


def read(d):
    layers = d.get("num_hidden_layers")
    return read_decoder(d, "qwen2", DEFAULTS, **read_layer_windows(d, layers if layers is not None else 32))


FAMILY = Family("qwen2", ("Qwen2ForCausalLM", "Qwen2Model"), read, LEAVES)
