"""Mistral (``model_type`` "mistral"): the shared decoder with sliding-window attention in every layer
when the config sets ``sliding_window`` (v0.1: 4096; null in later releases)."""

from __future__ import annotations

from ..config import read_decoder, refuse
from .schema import DECODER, Family

# transformers' MistralConfig values for fields a config.json omits
DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                max_position_embeddings=131072, num_key_value_heads=8, bos_token_id=1, eos_token_id=2,
                sliding_window=4096)


def read(d):
    refuse(d, "mistral", layer_types="per-layer attention types (Ministral's) are ignored by MistralForCausalLM",
           attention_bias="projection biases", mlp_bias="MLP biases")
    window = d.get("sliding_window", DEFAULTS["sliding_window"])
    layers = d.get("num_hidden_layers")
    windows = ({"sliding_window": int(window), "sliding_layers": tuple(range(int(layers)))}
               if window is not None and layers is not None else {})
    return read_decoder(d, "mistral", DEFAULTS, **windows)


FAMILY = Family("mistral", ("MistralForCausalLM", "MistralModel"), read, DECODER)
