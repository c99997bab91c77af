"""Shared fixtures: tiny real Llamas written by transformers' own ``save_pretrained``.

Everything here is offline: models are random-initialised from a config, saved to a temp dir in the
hub's format, and loaded back by jaxmerge.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# A Llama 3.1-style tiny config: GQA, llama3 rope scaling with a short original context so that
# the tests reach positions beyond it, untied embeddings.
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=256, rope_theta=10000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=16),
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_llama(path, seed=0, dtype=None, **overrides):
    """Save a random transformers LlamaForCausalLM with TINY (+ overrides) to ``path``; return the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(TINY)
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so that norm weights are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """(path, torch model) of the default tiny Llama 3.1-style checkpoint (float32)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    model = hf_llama(path)
    return str(path), model
