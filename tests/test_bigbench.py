"""BIG-bench task.json parsing (hand-checked renderings of target_scores and target tasks with task /
input / output / choice prefixes, subtask unions), the answer-only LM-head loss against the full-logits
loss (1e-6), the shared-prefix loss (value and gradients) against full rows (1e-6), shared-prompt choice scoring against one row per choice (1e-5), and prediction rows.
The model is a tiny random Llama with a byte-level BPE tokenizer and a ChatML template, so choices
and prompts are several real BPE tokens."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmerge.config import MODULES, LlamaConfig, RopeConfig
from jaxmerge.lora import Dense, Factored, fold_adapters
from jaxmerge.params import abstract_params
from jaxmerge.tasks import (answer_logprobs, answer_loss, concat_batches, encode, load_task, per_choice_scores,
                            predictions, shared_prompt_scores)
from jaxmerge.tasks.bigbench import read_rows
from jaxmerge.tasks.encode import shared_prefix

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _task_json(path, examples, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": path.parent.name, **fields, "examples": examples}))
    return str(path)


def test_render_target_scores_and_target_hand_checked(tmp_path):
    mc = _task_json(tmp_path / "mc" / "task.json",
                    [{"input": "Is 2 even?", "target_scores": {"yes": 1, "no": 0, "maybe": 0}},
                     {"input": "Pick", "target_scores": {"x": 1, "y": 1, "z": 0}}],
                    task_prefix="Answer the question.", example_input_prefix="\nQuestion: ",
                    example_output_prefix="\nAnswer: ", choice_prefix="\n - ")
    rows = read_rows(mc, seed=0)
    first = rows[0]
    assert first["input"].endswith("\nAnswer:")
    listed = first["input"][:-len("\nAnswer:")].split("\n - ")[1:]
    assert sorted(listed) == ["maybe", "no", "yes"]  # appended (BIG-bench's default), in a seeded shuffle
    assert first["input"] == "Answer the question.\nQuestion: Is 2 even?\n - " + "\n - ".join(listed) + "\nAnswer:"
    assert first["choices"] == ["yes", "no", "maybe"] and first["target"] == "yes" and first["targets"] == ["yes"]
    assert rows[1]["targets"] == ["x", "y"]  # every best-scored choice is accepted
    assert read_rows(mc, seed=0) == rows and read_rows(mc, seed=1)[0]["choices"] == first["choices"]

    gen = _task_json(tmp_path / "gen" / "task.json",
                     [{"input": "How many legs has a cat?", "target": ["four", "4"]},
                      {"input": "Capital of France?", "target": "Paris"},
                      {"input": "Capital of France?", "target": "Paris"}])  # a duplicate prompt: dropped
    rows = read_rows(gen)
    assert [r["input"] for r in rows] == ["Q: How many legs has a cat?\nA:", "Q: Capital of France?\nA:"]  # defaults
    assert rows[0]["targets"] == ["four", "4"] and rows[0]["target"] == "four" and rows[0]["choices"] is None

    no_append = _task_json(tmp_path / "na" / "task.json", [{"input": "Plausible?", "target_scores": {"a": 0, "b": 1}}],
                           append_choices_to_input=False, example_input_prefix="", example_output_prefix=" ")
    assert read_rows(no_append)[0]["input"] == "Plausible?"


def test_local_task_json_protocols_and_subtask_union(tmp_path):
    many = [{"input": f"item {i}", "target_scores": {"even": int(i % 2 == 0), "odd": int(i % 2 == 1)}} for i in range(150)]
    mc = load_task(_task_json(tmp_path / "parity" / "task.json", many, example_input_prefix="", example_output_prefix=""))
    assert mc.task.protocol == "loglik" and (len(mc.train), len(mc.validation), len(mc.test)) == (80, 20, 50)
    ex = mc.train[0]
    n = int(ex["prompt"].split()[1].split("\n")[0])
    assert ex["answer"] == ("even" if n % 2 == 0 else "odd") and ex["golds"] == [ex["answer"]]
    assert not {r["prompt"] for r in mc.train + mc.validation} & {r["prompt"] for r in mc.test}

    counting = [{"input": f"count {i}", "target": [str(i), f"#{i}"]} for i in range(120)]
    gen = load_task(_task_json(tmp_path / "count" / "task.json", counting))
    assert gen.task.protocol == "generate" and gen.train[0]["golds"][1] == "#" + gen.train[0]["golds"][0]

    parent = tmp_path / "family"
    _task_json(parent / "task.json", [])
    _task_json(parent / "a" / "task.json", many[:70], task_prefix="A:")
    _task_json(parent / "b" / "task.json", many[70:], task_prefix="B:")
    rows = read_rows(str(parent / "task.json"))
    assert len(rows) == 150 and rows[0]["input"].startswith("A:") and rows[-1]["input"].startswith("B:")


# --- a tiny model with a byte-level BPE tokenizer ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["Determine whether the statement is plausible or implausible.", "Statement: the player scored a goal",
              "Answer: plausible", "implausible", "What color is the ball? red blue green", "How many apples?"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>")
    tok.chat_template = CHATML
    path = tmp_path_factory.mktemp("bpe")
    tok.save_pretrained(path)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    V = len(tok)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, rope=RopeConfig(10000.0), tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=(tok.eos_token_id,), pad_token_id=tok.pad_token_id)
    leaves, treedef = jax.tree.flatten(abstract_params(cfg, jnp.float32))
    keys = jax.random.split(jax.random.key(0), len(leaves))
    params = jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    params["norm"] = jnp.ones(64)
    for name in ("input_layernorm", "post_attention_layernorm"):
        params["layers"][name] = jnp.ones((2, 64))
    return params, cfg, tok


def _lora(cfg, seed=1, r=4):
    key = jax.random.key(seed)
    out = {}
    for j, m in enumerate(MODULES):
        o, i = cfg.module_shape(m)
        ka, kb = jax.random.split(jax.random.fold_in(key, j))
        out[m] = Factored(0.2 * jax.random.normal(ka, (2, r, i)), 0.2 * jax.random.normal(kb, (2, o, r)),
                          jnp.full((2, r), 0.5))
    return out


EXAMPLES = [{"prompt": "Determine whether the statement is plausible.\nStatement: the player scored a goal",
             "answer": "plausible", "choices": ["plausible", "implausible"], "golds": ["plausible"]},
            {"prompt": "What color is the ball?", "answer": "blue", "choices": ["red", "blue", "green", "red blue"],
             "golds": ["blue"]},
            {"prompt": "How many apples?", "answer": "3", "choices": ["3", "three apples"], "golds": ["3", "three apples"]}]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_answer_only_loss_equals_full_logits_loss(tiny, with_adapter):
    params, cfg, tok = tiny
    adapters = _lora(cfg) if with_adapter else None
    rows = [{"prompt": e["prompt"], "answer": a} for e in EXAMPLES for a in e["choices"]]
    batch = encode(rows, tok, None)
    assert batch["answer_index"].shape[1] < batch["tokens"].shape[1]
    full = {k: v for k, v in batch.items() if k != "answer_index"}
    ours, theirs = answer_loss(params, cfg, batch, adapters), answer_loss(params, cfg, full, adapters)
    assert abs(float(ours) - float(theirs)) < 1e-6
    lp, w = answer_logprobs(params, cfg, batch, adapters)
    lp_full, w_full = answer_logprobs(params, cfg, full, adapters)
    assert float(w.sum()) == float(w_full.sum()) == float(batch["loss_mask"].sum())
    np.testing.assert_allclose(np.sort(np.asarray(lp)[np.asarray(w) > 0]), np.sort(np.asarray(lp_full)[np.asarray(w_full) > 0]),
                               atol=1e-6)
    g1 = jax.grad(lambda p: answer_loss(p, cfg, batch, adapters))(params)
    g2 = jax.grad(lambda p: answer_loss(p, cfg, full, adapters))(params)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))) < 1e-6
    both = concat_batches(encode(rows[:2], tok, None), encode(rows[2:], tok, None))  # different widths
    assert abs(float(answer_loss(params, cfg, both, adapters)) - float(theirs)) < 1e-6


@pytest.mark.parametrize("with_adapter", [False, True])
def test_shared_prefix_loss_equals_full_rows(tiny, with_adapter):
    """The split-off prefix (the system turn + user header every row shares) runs once: loss, its gradient
    w.r.t. the base and the adapter, and any subset of rows equal the full rows' to 1e-6."""
    params, cfg, tok = tiny
    adapters = _lora(cfg) if with_adapter else None
    rows = [{"prompt": e["prompt"], "answer": a} for e in EXAMPLES for a in e["choices"]]
    batch = encode(rows, tok, None, system="Judge carefully.")
    split = shared_prefix(batch)
    P = len(split["prefix"])
    assert P >= 6 and split["tokens"].shape[1] < batch["tokens"].shape[1]
    assert tok.decode(split["prefix"]).startswith("<|im_start|>system\nJudge carefully.")
    f = lambda p, a, b: answer_loss(p, cfg, b, a)
    (v1, g1), (v2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(params, adapters, b) for b in (split, batch))
    assert abs(float(v1) - float(v2)) < 1e-6 and float(v2) > 1.0
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))) < 1e-6
    some = {k: (v if k == "prefix" else v[[1, 4, 6]]) for k, v in split.items()}
    full = {k: v[[1, 4, 6]] for k, v in batch.items()}
    assert abs(float(answer_loss(params, cfg, some, adapters)) - float(answer_loss(params, cfg, full, adapters))) < 1e-6
    assert shared_prefix(split)["prefix"] is split["prefix"] and "prefix" not in shared_prefix({k: v for k, v in batch.items()
                                                                           if k != "answer_index"})


@pytest.mark.parametrize("with_adapter,system,split", [(False, None, True), (True, None, True),
                                                       (True, "Judge carefully.", True), (True, None, False)])
def test_shared_prompt_scores_equal_per_choice_rows(tiny, with_adapter, system, split, monkeypatch):
    """Contexts run once per example after the prefix every context shares (run once per call; ``split=False``:
    no prefix split off, the contexts run whole)."""
    params, cfg, tok = tiny
    adapters = _lora(cfg) if with_adapter else None
    if not split:
        monkeypatch.setattr("jaxmerge.tasks.choices.common_prefix", lambda rows: 0)
    shared = shared_prompt_scores(params, cfg, tok, EXAMPLES, adapters=adapters, rows_per_call=4,  # several calls
                                  system=system)
    plain = per_choice_scores(params, cfg, tok, EXAMPLES, adapters=adapters, batch_size=3, system=system)
    for s, p, ex in zip(shared, plain, EXAMPLES):
        assert s.shape == (len(ex["choices"]),)
        np.testing.assert_allclose(s, p, atol=1e-5, rtol=0)
    assert len({round(float(x), 3) for x in np.concatenate(plain)}) > 4  # scores differ: not a vacuous comparison


def test_folded_merge_scores_equal_applied_adapters(tiny):
    """``fold_adapters`` (what a run's test evaluation uses: W + ΣΔW once) scores like the adapters applied in
    the forward, for factored, dense and mixed (a tuple) deltas, to 1e-5; the base params are not written."""
    params, cfg, tok = tiny
    lora = _lora(cfg)
    adapters = {**lora, "q_proj": (lora["q_proj"], Dense(-0.5 * lora["q_proj"].dense())),
                "up_proj": Dense(lora["up_proj"].dense())}
    before = jax.tree.map(np.asarray, params)
    folded = fold_adapters(params, adapters)
    a = shared_prompt_scores(params, cfg, tok, EXAMPLES, adapters=adapters)
    b = shared_prompt_scores(folded, cfg, tok, EXAMPLES)
    c = shared_prompt_scores(params, cfg, tok, EXAMPLES)
    for x, y, z in zip(a, b, c):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
        assert np.abs(x - z).max() > 1e-2  # the adapters matter: not a vacuous comparison
    assert all(np.array_equal(u, np.asarray(v)) for u, v in zip(jax.tree.leaves(before), jax.tree.leaves(params)))


def test_prediction_rows_say_what_was_scored(tiny):
    params, cfg, tok = tiny
    rows = predictions(params, cfg, tok, EXAMPLES, "loglik")
    plain = per_choice_scores(params, cfg, tok, EXAMPLES)
    for r, ex, p in zip(rows, EXAMPLES, plain):
        assert r["prompt"] == tok.apply_chat_template([{"role": "user", "content": ex["prompt"]}], tokenize=False,
                                                      add_generation_prompt=True)
        assert r["choices"] == ex["choices"] and r["prediction"] == ex["choices"][int(np.argmax(p))]
        assert r["correct"] == (r["prediction"] in ex["golds"]) and r["golds"] == ex["golds"]
    gen = predictions(params, cfg, tok, EXAMPLES, "generate", max_new_tokens=3, batch_size=4)
    assert all(isinstance(r["prediction"], str) and r["correct"] is False or r["correct"] is True for r in gen)
    assert all("choices" not in r for r in gen)
