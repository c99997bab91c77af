"""``jaxmerge bench train``'s correctness half: the JAX ``ours`` step and every PyTorch variant (the authors'
rank-concatenated LoRA layer and PEFT with k separate adapters, each with full logits and with the LM head
on the answer rows only) compute the same losses step by step on the same weights, batch and schedule."""

from __future__ import annotations

import argparse
import json

import pytest

from jaxmerge.bench import torch_ref, train_bench
from jaxmerge.cli import main
from jaxmerge.config import ModelConfig


def _check(res):
    assert set(res["sides"]) == {"jaxmerge", *torch_ref.VARIANTS}
    for name, side in res["sides"].items():
        assert side["tokens_per_s"] > 0
        if name == "jaxmerge":
            continue
        # step 0 is the base model (w = 0); then AdamW updates at lr 5e-2 move w: the gradients agree too
        assert side["loss_first_step_abs_diff"] < 1e-5, name
        assert side["loss_max_abs_diff"] < 2e-5, name
        ratio = res["sides"]["jaxmerge"]["tokens_per_s"] / side["tokens_per_s"]
        assert abs(res["speedup_vs"][name] - ratio) <= 0.01 * ratio
    assert res["speedup_vs_best_torch"] == res["speedup_vs"][res["best_torch"]] == min(res["speedup_vs"].values())
    first, last = res["loss_first_last"]
    assert abs(first - last) > 1e-3  # the coefficients really trained (the agreement above is not vacuous)


def test_bench_train_json(capsys):
    rc = main(["bench", "train", "--json", "--k", "5", "--seq", "16", "--steps", "2", "--warmup", "2",
               "--repeats", "1", "--no-scale-ranks", "--answer-tokens", "5"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check(res)
    assert res["k"] == 5 and len(res["ranks"]) == 5 and res["batch"] == 8 and res["answer_tokens_per_row"] == 5
    assert set(res["application"].values()) <= {"factored", "dense"}


def test_bench_train_on_a_tied_embedding_base(tmp_path, capsys):
    """SmolLM2 / Llama-3.2-style bases tie the LM head to the embedding: every side must run on them."""
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=96, hidden_size=32,
               intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=64)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc = main(["bench", "train", "--json", "--base", str(tmp_path / "config.json"), "--k", "3", "--seq", "16",
               "--steps", "1", "--warmup", "2", "--repeats", "1", "--no-scale-ranks", "--application", "factored"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check(res)
    assert set(res["application"].values()) == {"factored"} and res["config"]["tied"]


FAMILIES = {  # the adaptive engine's ours step on every family, against transformers + the authors' layer and PEFT
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], tie_word_embeddings=False),          # q/k RMSNorm
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], tie_word_embeddings=False),          # q/k/v biases
    "mistral": dict(architectures=["MistralForCausalLM"], sliding_window=6, tie_word_embeddings=False),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bench_train_on_every_family(tmp_path, capsys, family):
    """The engine's coefficient-training step (objectives.Coefficients through train.train_step) on Qwen3,
    Qwen2 and Mistral: losses step by step equal to transformers' model with the rank-concatenated layer
    and with PEFT (so the gradients agree too); Mistral's window (6) is shorter than the sequence (16)."""
    cfg = dict(model_type=family, vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0,
               max_position_embeddings=64, **FAMILIES[family])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc = main(["bench", "train", "--json", "--base", str(tmp_path / "config.json"), "--k", "3", "--seq", "16",
               "--steps", "4", "--warmup", "2", "--repeats", "1", "--no-scale-ranks", "--answer-tokens", "12", "--lr", "0.1"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check(res)
    assert res["config"]["model_type"] == family


def test_presets_are_the_real_configs():
    """The presets' shapes (one command each, or all in one run) are the published models' config.json."""
    smol = ModelConfig.from_dict(train_bench.PRESETS["smollm2-135m"].hf_config)
    assert (smol.hidden_size, smol.num_hidden_layers, smol.intermediate_size, smol.vocab_size) == (576, 30, 1536, 49152)
    assert (smol.num_attention_heads, smol.num_key_value_heads, smol.head_dim, smol.rope.theta) == (9, 3, 64, 1e5)
    assert smol.tie_word_embeddings and 134e6 < smol.num_params < 135e6  # SmolLM2-135M: 134.5 M parameters
    llama = ModelConfig.from_dict(train_bench.PRESETS["llama-3.1-8b-2layers"].hf_config)
    assert (llama.hidden_size, llama.intermediate_size, llama.vocab_size, llama.num_hidden_layers) == (4096, 14336, 128256, 2)
    assert (llama.num_attention_heads, llama.num_key_value_heads, llama.rope.rope_type) == (32, 8, "llama3")
    parser = train_bench.add_arguments(argparse.ArgumentParser())
    both = train_bench._targets(parser.parse_args(["--preset", "all", "--seq", "64"]))
    assert [t[0] for t in both] == list(train_bench.PRESETS) and {t[4] for t in both} == {64}
