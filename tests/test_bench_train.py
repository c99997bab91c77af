"""``jaxmerge bench train``: runs through the CLI, reports the required keys, and its two sides (JAX
step and the PyTorch rank-concatenated reference) compute the same losses step by step."""

from __future__ import annotations

import json

from jaxmerge.cli import main


def test_bench_train_json(capsys):
    rc = main(["bench", "train", "--json", "--k", "5", "--seq", "16", "--steps", "2", "--warmup", "2",
               "--repeats", "1", "--no-scale-ranks", "--lr", "0.05"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("jaxmerge_tokens_per_s", "torch_tokens_per_s", "speedup_vs_torch"):
        assert res[key] > 0
    ratio = res["jaxmerge_tokens_per_s"] / res["torch_tokens_per_s"]
    assert abs(res["speedup_vs_torch"] - ratio) <= 0.01 * ratio
    assert res["k"] == 5 and len(res["ranks"]) == 5 and res["batch"] == 8
    # step 0 is the base model on both sides (w = 0); then 3 AdamW updates at lr 5e-2 move w and the loss
    assert res["loss_first_step_abs_diff"] < 1e-5
    assert res["loss_max_abs_diff"] < 2e-5
    first, last = res["loss_first_last"]
    assert abs(first - last) > 1e-3  # the coefficients really trained (the agreement above is not vacuous)


def test_bench_train_on_a_tied_embedding_base(tmp_path, capsys):
    """SmolLM2 / Llama-3.2-style bases tie the LM head to the embedding: both sides must run on them."""
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=96, hidden_size=32,
               intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=64)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc = main(["bench", "train", "--json", "--base", str(tmp_path / "config.json"), "--k", "3", "--seq", "16",
               "--steps", "1", "--warmup", "2", "--repeats", "1", "--no-scale-ranks"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["loss_first_step_abs_diff"] < 1e-5 and res["loss_max_abs_diff"] < 2e-5
