"""The Llama forward against transformers' PyTorch LlamaForCausalLM (eager attention, float32).

Tolerances: 1e-5 max abs on float32 logits (observed ~3e-7); bf16 per element within 8 bf16 unit
roundoffs (2⁻⁸) of the element's magnitude plus the mean logit magnitude (observed 4.3); gradients
against torch autograd to 1e-5 relative to each leaf's largest entry; ``remat=True`` equal to 1e-6.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import hf_llama, hf_model

TOL = 1e-5
BF16_EPS = 2.0 ** -8  # bf16 unit roundoff


def torch_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
        return model(torch.tensor(tokens), **kw).logits.float().numpy()


def tokens_for(vocab, shape, seed=0):
    return np.random.RandomState(seed).randint(3, vocab, shape)


@pytest.mark.parametrize("variant", ["gqa_llama3_rope", "tied_3_2", "plain_mha", "legacy_rope_scaling",
                                     "default_rope"])
def test_logits_match_transformers(tmp_path, variant):
    overrides = {
        "gqa_llama3_rope": {},
        "tied_3_2": dict(tie_word_embeddings=True),
        "plain_mha": dict(num_key_value_heads=4),
        "legacy_rope_scaling": {},
        "default_rope": dict(rope_scaling=None),
    }[variant]
    model = hf_llama(tmp_path, seed=1, **overrides)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if variant == "legacy_rope_scaling":  # the hub's Llama-3.1 spelling: rope_theta + rope_scaling
        params = cfg.pop("rope_parameters")
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = params
        cfg_path.write_text(json.dumps(cfg))
    else:
        assert "rope_parameters" in cfg  # transformers 5 writes this form
    base = jaxmerge.load_base(str(tmp_path), dtype="float32")
    if variant == "legacy_rope_scaling":
        assert base.config.rope.rope_type == "llama3" and base.config.rope.factor == 8.0
    # 40 positions: beyond original_max_position_embeddings (16), so llama3 scaling matters.
    tok = tokens_for(128, (2, 40))
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config))
    np.testing.assert_allclose(ours, torch_logits(model, tok), atol=TOL, rtol=0)


def test_llama3_rope_scaling_is_not_a_no_op(tmp_path):
    """Guard against a test that cannot fail: the llama3 scaling must change the logits here."""
    hf_llama(tmp_path / "a", seed=1)
    hf_llama(tmp_path / "b", seed=1, rope_scaling=None)
    a = jaxmerge.load_base(str(tmp_path / "a"), dtype="float32")
    b = jaxmerge.load_base(str(tmp_path / "b"), dtype="float32")
    tok = jnp.asarray(tokens_for(128, (1, 40)))
    diff = np.abs(np.asarray(jaxmerge.forward(a.params, tok, a.config) - jaxmerge.forward(b.params, tok, b.config)))
    assert diff.max() > 1e-3


def test_bf16_weights_load_and_run(tmp_path):
    model = hf_llama(tmp_path, seed=2, dtype=torch.bfloat16)
    base = jaxmerge.load_base(str(tmp_path), dtype="bfloat16")
    assert base.params["layers"]["self_attn"]["q_proj"].dtype == jnp.bfloat16
    # The bf16 values load bit-exactly (compare as float32).
    want = model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()
    got = np.asarray(base.params["layers"]["mlp"]["down_proj"][1].astype(jnp.float32))
    np.testing.assert_array_equal(got, want)
    tok = tokens_for(128, (2, 24))
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config))
    ref = torch_logits(model, tok)
    assert np.isfinite(ours).all()
    # bf16 arithmetic differs in accumulation order: per element, a few bf16 roundoffs of its magnitude
    bound = 8 * BF16_EPS * (np.abs(ref) + np.abs(ref).mean())
    assert (np.abs(ours - ref) <= bound).all(), float((np.abs(ours - ref) / bound).max())
    # Loading the same bf16 file as float32 equals transformers loading it as float32 (a fresh load: a
    # model cast bf16 → float32 keeps bf16-rounded RoPE frequencies in its inv_freq buffer).
    from transformers import AutoModelForCausalLM
    model32 = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    base32 = jaxmerge.load_base(str(tmp_path), dtype="float32")
    ours32 = np.asarray(jaxmerge.forward(base32.params, jnp.asarray(tok), base32.config))
    np.testing.assert_allclose(ours32, torch_logits(model32, tok), atol=TOL, rtol=0)


def test_padded_batches_equal_rows_alone(tiny_llama_dir):
    path, _ = tiny_llama_dir
    base = jaxmerge.load_base(path, dtype="float32")
    rows = [tokens_for(128, (n,), seed=n) for n in (7, 12, 9)]
    T = max(len(r) for r in rows)
    for side in ("left", "right"):
        tok = np.zeros((3, T), np.int32)
        mask = np.zeros((3, T), np.int32)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            tok[i, sl], mask[i, sl] = r, 1
        batched = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config,
                                              attention_mask=jnp.asarray(mask)))
        for i, r in enumerate(rows):
            alone = np.asarray(jaxmerge.forward(base.params, jnp.asarray(r[None]), base.config))[0]
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            np.testing.assert_allclose(batched[i, sl], alone, atol=1e-5, rtol=0, err_msg=side)


def test_explicit_positions(tiny_llama_dir):
    path, model = tiny_llama_dir
    base = jaxmerge.load_base(path, dtype="float32")
    tok = tokens_for(128, (1, 10))
    pos = np.arange(30, 40)[None]
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config, positions=jnp.asarray(pos)))
    with torch.no_grad():
        ref = model(torch.tensor(tok), position_ids=torch.tensor(pos)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_greedy_generation_matches_transformers(tiny_llama_dir):
    path, model = tiny_llama_dir
    base = jaxmerge.load_base(path, dtype="float32")
    # Left-padded batch of two prompts of different lengths.
    prompts = [tokens_for(128, (5,), seed=3), tokens_for(128, (9,), seed=4)]
    tok = np.zeros((2, 9), np.int64)
    mask = np.zeros((2, 9), np.int64)
    for i, p in enumerate(prompts):
        tok[i, 9 - len(p):], mask[i, 9 - len(p):] = p, 1
    ours = np.asarray(jaxmerge.generate(base.params, tok, base.config, max_new_tokens=20,
                                        attention_mask=mask, eos_token_id=[]))
    with torch.no_grad():
        ref = model.generate(torch.tensor(tok), attention_mask=torch.tensor(mask), max_new_tokens=20,
                             do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=20)
    np.testing.assert_array_equal(ours, ref[:, 9:].numpy())


def test_generation_stops_at_eos(tiny_llama_dir):
    path, _ = tiny_llama_dir
    base = jaxmerge.load_base(path, dtype="float32")
    tok = tokens_for(128, (1, 6), seed=5)
    free = np.asarray(jaxmerge.generate(base.params, tok, base.config, max_new_tokens=8, eos_token_id=[]))[0]
    eos = int(free[2])  # pretend the third generated token is the end token
    out = np.asarray(jaxmerge.generate(base.params, tok, base.config, max_new_tokens=8, eos_token_id=eos,
                                       pad_token_id=0))[0]
    first = int(np.argmax(free == eos))
    np.testing.assert_array_equal(out[: first + 1], free[: first + 1])
    assert (out[first + 1:] == 0).all()


def _loss_fn(config, tok, w):
    def loss(params, adapters=None, remat=False):
        logits = jaxmerge.forward(params, tok, config, adapters=adapters, remat=remat)
        return jnp.sum(logits * w)
    return loss


def test_remat_gives_equal_logits_and_gradients(tiny_llama_dir):
    import jax
    path, _ = tiny_llama_dir
    base = jaxmerge.load_base(path, dtype="float32")
    tok = jnp.asarray(tokens_for(128, (2, 12)))
    w = jnp.asarray(np.random.RandomState(1).normal(size=(2, 12, 128)), jnp.float32)
    rng = np.random.RandomState(2)
    adapters = {m: jaxmerge.Factored(jnp.asarray(rng.normal(0, 0.1, (2, 3, i)), jnp.float32),
                                     jnp.asarray(rng.normal(0, 0.1, (2, o, 3)), jnp.float32), jnp.ones((2, 3)))
                for m in ("q_proj", "down_proj") for o, i in [base.config.module_shape(m)]}
    loss = _loss_fn(base.config, tok, w)
    outs = []
    for remat in (False, True):
        val, grads = jax.jit(jax.value_and_grad(lambda p, a: loss(p, a, remat), argnums=(0, 1)))(base.params, adapters)
        outs.append((val, grads))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 * float(np.abs(a).max()), rtol=0)
    with_remat = jaxmerge.forward(base.params, tok, base.config, adapters=adapters, remat=True)
    np.testing.assert_allclose(with_remat, jaxmerge.forward(base.params, tok, base.config, adapters=adapters),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "qwen2"])
def test_gradients_match_torch_autograd(tmp_path, model_type):
    """d(Σ logits·w)/d(every parameter) against torch autograd of the same transformers model."""
    import jax
    from jaxmerge.params import params_to_hf
    model = hf_model(tmp_path, model_type, seed=4)
    base = jaxmerge.load_base(str(tmp_path), dtype="float32")
    tok = tokens_for(128, (2, 10))
    w = np.random.RandomState(3).normal(size=(2, 10, 128)).astype(np.float32)
    grads = jax.grad(_loss_fn(base.config, jnp.asarray(tok), jnp.asarray(w)))(base.params)
    ours = params_to_hf(grads, base.config)
    model.zero_grad()
    (model(torch.tensor(tok)).logits * torch.tensor(w)).sum().backward()
    ref = {k: p.grad.numpy() for k, p in model.named_parameters()}
    assert set(ours) == set(ref)
    for k, g in ref.items():
        np.testing.assert_allclose(ours[k], g, atol=1e-5 * max(float(np.abs(g).max()), 1e-3), rtol=0, err_msg=k)
