"""Llama 3.x (``model_type`` "llama"): the shared decoder as it is — GQA, RMSNorm, SwiGLU, rotate-half
RoPE (default or llama3 scaling), tied or untied embeddings, no biases."""

from __future__ import annotations

from ..config import read_decoder, refuse
from .schema import DECODER, Family

# transformers' LlamaConfig values for fields a config.json omits
DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)


def read(d):
    refuse(d, "llama", attention_bias="Llama 3.x has no projection biases", mlp_bias="Llama 3.x has no MLP biases")
    return read_decoder(d, "llama", DEFAULTS)


FAMILY = Family("llama", ("LlamaForCausalLM", "LlamaModel"), read, DECODER)
