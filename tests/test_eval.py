"""The two evaluation protocols and the answer loss.

* a hand-built bigram Llama (all projections zero, so the next token depends only on the current one)
  whose answers and choice log-likelihoods are computed by hand;
* on the small world's trained base: log-likelihood scores, the answer loss and greedy answers equal
  those computed with transformers' ``LlamaForCausalLM`` (and PEFT for an adapter) on the same files.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmerge.config import LlamaConfig, RopeConfig
from jaxmerge.tasks import (answer_loss, encode, evaluate, evaluate_generate, evaluate_loglik,
                            generate_answers, loglik_correct, loglik_scores)

WORDS = ["yes", "no", "maybe", "q1", "q2", "q3"]


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    """(params, config, tokenizer, T): logits after token c are exactly T[:, c]."""
    from experiments.world_train import save_tokenizer
    from transformers import AutoTokenizer
    path = tmp_path_factory.mktemp("bigram")
    save_tokenizer(WORDS, str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    V, D, L = len(tok), 16, 1
    v = tok.convert_tokens_to_ids
    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=8, num_hidden_layers=L, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, rms_norm_eps=1e-12, rope=RopeConfig(10000.0), bos_token_id=tok.bos_token_id,
                      eos_token_id=(v("<|eot|>"),), pad_token_id=tok.pad_token_id)
    T = np.zeros((V, V), np.float32)
    T[v("yes"), v("<|assistant|>")] = 2.0
    T[v("no"), v("<|assistant|>")] = 1.0
    T[v("<|eot|>"), v("yes")] = 5.0
    T[v("<|eot|>"), v("no")] = 5.0
    T[v("maybe"), v("maybe")] = 3.0
    z = lambda *s: jnp.zeros(s, jnp.float32)
    emb = np.zeros((V, D), np.float32)
    emb[np.arange(V), np.arange(V)] = 0.5  # one-hot: the final RMSNorm maps it to √D·e_v
    head = np.zeros((V, D), np.float32)
    head[:, :V] = T / math.sqrt(D)
    params = {"embed_tokens": jnp.asarray(emb), "norm": jnp.ones(D), "lm_head": jnp.asarray(head),
              "layers": {"input_layernorm": jnp.ones((L, D)), "post_attention_layernorm": jnp.ones((L, D)),
                         "self_attn": {m: z(L, *cfg.module_shape(m)) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
                         "mlp": {m: z(L, *cfg.module_shape(m)) for m in ("gate_proj", "up_proj", "down_proj")}}}
    return params, cfg, tok, T


def test_hand_checked_bigram_case(bigram):
    params, cfg, tok, T = bigram
    V = len(tok)
    exs = [{"prompt": "q1", "answer": "yes", "choices": ["yes", "no"]},
           {"prompt": "q2 q3", "answer": "no", "choices": ["yes", "no"]},
           {"prompt": "q3", "answer": " Yes. ", "choices": [" Yes. ", "no"]},   # normalised before matching
           {"prompt": "q1", "answer": "no", "choices": ["yes no", "no"]}]
    # generation: after <|assistant|> the argmax is "yes" (2 > 1 > 0), then <|eot|> (5) stops it
    assert generate_answers(params, cfg, tok, exs, batch_size=3, max_new_tokens=4) == ["yes"] * 4
    gen = evaluate(params, cfg, tok, exs, "generate", batch_size=3, max_new_tokens=4, per_example=True)
    assert list(gen) == [1, 0, 1, 0]
    assert evaluate_generate(params, cfg, tok, exs, batch_size=3, max_new_tokens=4) == pytest.approx(0.5)
    # log-likelihood by hand: log softmax of T[:, <|assistant|>] (and of T[:, yes] for the 2nd token)
    lse_a = math.log(math.exp(2) + math.exp(1) + (V - 2))
    lse_y = math.log(math.exp(5) + (V - 1))
    want = [[2 - lse_a, 1 - lse_a], [2 - lse_a, 1 - lse_a], [0 - lse_a, 1 - lse_a],
            [2 - lse_a + 0 - lse_y, 1 - lse_a]]
    scores = loglik_scores(params, cfg, tok, exs, batch_size=4)
    ids = tok(" Yes. ", add_special_tokens=False)["input_ids"]
    assert ids == [tok.unk_token_id]  # one unknown word: logit 0 after <|assistant|>
    for got, w in zip(scores, want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    assert list(loglik_correct(params, cfg, tok, exs, batch_size=4)) == [1, 0, 0, 1]
    assert evaluate_loglik(params, cfg, tok, exs) == pytest.approx(0.5)


def test_answer_loss_hand_checked(bigram):
    params, cfg, tok, T = bigram
    V = len(tok)
    b = encode([{"prompt": "q1", "answer": "yes"}, {"prompt": "q2", "answer": "no"}], tok, None)
    lse_a = math.log(math.exp(2) + math.exp(1) + (V - 2))
    lse_y = math.log(math.exp(5) + (V - 1))
    # answer tokens: yes, <|eot|> | no, <|eot|>
    want = -((2 - lse_a) + (5 - lse_y) + (1 - lse_a) + (5 - lse_y)) / 4
    got = float(answer_loss(params, cfg, {k: jnp.asarray(v) for k, v in b.items()}))
    assert got == pytest.approx(want, rel=1e-5)


# --- against transformers on the small world's trained base ---------------------------------------------
@pytest.fixture(scope="module")
def world_base():
    import jaxmerge
    import torch
    from experiments.world import small_world
    from jaxmerge.tasks import load_task
    from transformers import LlamaForCausalLM
    w = small_world()
    base = jaxmerge.load_base(w.base_dir, dtype="float32")
    hf = LlamaForCausalLM.from_pretrained(w.base_dir, dtype=torch.float32).eval()
    data = load_task(w.default_task, world=w)
    return w, base, hf, data


def _torch_scores(model, tok, exs):
    import torch
    from jaxmerge.tasks.encode import chat_text
    out = []
    for ex in exs:
        ctx = chat_text(tok, ex["prompt"])
        n = len(tok(ctx, add_special_tokens=False)["input_ids"])
        s = []
        for c in ex["choices"]:
            ids = tok(ctx + c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            s.append(sum(float(logp[t - 1, ids[t]]) for t in range(n, len(ids))))
        out.append(np.asarray(s))
    return out


def test_loglik_equals_transformers(world_base):
    w, base, hf, data = world_base
    exs = data.test[:12] + data.validation[:4]
    ours = loglik_scores(base.params, base.config, base.tokenizer, exs, batch_size=16)
    ref = _torch_scores(hf, base.tokenizer, exs)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
        assert int(np.argmax(a)) == int(np.argmax(b))


def test_loglik_with_adapter_equals_peft(world_base):
    import torch
    from peft import PeftModel
    from helpers import peft_factored
    from transformers import LlamaForCausalLM
    w, base, _, data = world_base
    name = w.related[w.default_task][0]
    adir = next(d for d in w.good_pool_dirs if d.endswith(name))
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(w.base_dir, dtype=torch.float32), adir).eval()
    adapters = peft_factored(adir, base.config)
    exs = data.test[:6]
    ours = loglik_scores(base.params, base.config, base.tokenizer, exs, adapters=adapters, batch_size=8)
    for a, b in zip(ours, _torch_scores(model, base.tokenizer, exs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_answer_loss_equals_torch(world_base):
    import torch
    w, base, hf, data = world_base
    b = encode(data.train[:8], base.tokenizer, 32)
    ours = float(answer_loss(base.params, base.config, {k: jnp.asarray(v) for k, v in b.items()}))
    with torch.no_grad():
        logits = hf(torch.tensor(b["tokens"], dtype=torch.long),
                    attention_mask=torch.tensor(b["attention_mask"])).logits.double()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.tensor(b["tokens"][:, 1:, None], dtype=torch.long))[..., 0]
    mask = torch.tensor(b["loss_mask"][:, :-1], dtype=torch.float64)
    ref = float(-(logp * mask).sum() / mask.sum())
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_greedy_answers_equal_transformers_generate(world_base):
    import torch
    w, base, hf, data = world_base
    tok = base.tokenizer
    exs = data.test[:5]
    ours = generate_answers(base.params, base.config, tok, exs, batch_size=8, max_new_tokens=4)
    for ex, got in zip(exs, ours):
        ids = encode([ex], tok, None, with_answer=False)
        n = int(ids["attention_mask"].sum())
        x = torch.tensor(ids["tokens"][:, -n:], dtype=torch.long)
        with torch.no_grad():
            y = hf.generate(x, max_new_tokens=4, do_sample=False, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)[0, n:].tolist()
        if tok.eos_token_id in y:
            y = y[:y.index(tok.eos_token_id)]
        assert got == tok.decode(y, skip_special_tokens=True)
