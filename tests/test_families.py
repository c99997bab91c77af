"""Every family against transformers and PEFT: tiny random Qwen3 (tied and untied, with and without
sliding layers), Qwen2 (q/k/v biases) and Mistral (a window smaller than the sequence) configs saved
by transformers' ``save_pretrained``.

Tolerances (float32): logits 1e-5 max abs against transformers' eager forward; greedy generation
token-for-token equal to transformers' ``generate``; a PEFT LoRA applied by jaxmerge (pool loader →
factored adapters) equal to ``PeftModel``'s logits to 1e-4. The same on a simulated 8-device mesh in
``tests/mesh/families_on_mesh.py``.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import FAMILY_TINY, hf_model, mesh_env, write_adapter

TOL = 1e-5
HERE = os.path.dirname(__file__)

VARIANTS = {  # name → (model_type, overrides)
    "qwen3": ("qwen3", {}),
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3_sliding": ("qwen3", dict(use_sliding_window=True, sliding_window=6, max_window_layers=1)),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
}


def tokens_for(shape, seed=0):
    return np.random.RandomState(seed).randint(3, 128, shape)


def torch_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
        return model(torch.tensor(tokens), **kw).logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def family_model(request, tmp_path_factory):
    model_type, overrides = VARIANTS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    model = hf_model(path, model_type, seed=3, **overrides)
    return request.param, str(path), model


def left_padded(lengths, seed):
    T = max(lengths)
    tok, mask = np.zeros((len(lengths), T), np.int64), np.zeros((len(lengths), T), np.int64)
    for i, n in enumerate(lengths):
        tok[i, T - n:], mask[i, T - n:] = tokens_for((n,), seed + i), 1
    return tok, mask


def test_config_reads_the_family(family_model):
    name, path, model = family_model
    base = jaxmerge.load_base(path, dtype="float32")
    c = base.config
    assert c.family == VARIANTS[name][0]
    assert c.head_dim == model.model.layers[0].self_attn.head_dim
    assert c.tie_word_embeddings == model.config.tie_word_embeddings
    assert ("lm_head" in base.params) == (not c.tie_word_embeddings)
    if name == "mistral":
        assert c.sliding_window == 7 and c.sliding_layers == (0, 1)
    elif name == "qwen3_sliding":
        assert c.sliding_window == 6 and c.sliding_layers == (1,)
    else:
        assert c.sliding_window is None and c.sliding_layers == ()
    # the schema's leaves are exactly transformers' parameters (tied: no lm_head)
    n_torch = sum(p.numel() for p in model.parameters())
    assert c.num_params == n_torch


def test_logits_match_transformers(family_model):
    name, path, model = family_model
    base = jaxmerge.load_base(path, dtype="float32")
    tok = tokens_for((2, 24))  # 24 > the sliding windows (6, 7): the window matters
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config))
    np.testing.assert_allclose(ours, torch_logits(model, tok), atol=TOL, rtol=0)
    tok, mask = left_padded((9, 16), seed=5)
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config, attention_mask=jnp.asarray(mask)))
    ref = torch_logits(model, tok, mask)
    np.testing.assert_allclose(ours[mask.astype(bool)], ref[mask.astype(bool)], atol=TOL, rtol=0)


def test_family_features_are_not_no_ops(tmp_path):
    """Guard against tests that cannot fail: dropping the q/k norms, the biases or the window changes
    the logits by far more than the tolerance."""
    tok = jnp.asarray(tokens_for((1, 24)))
    for model_type, overrides in (("qwen3", {}), ("qwen2", {}), ("mistral", {})):
        hf_model(tmp_path / model_type, model_type, seed=4, **overrides)
        base = jaxmerge.load_base(str(tmp_path / model_type), dtype="float32")
        ref = np.asarray(jaxmerge.forward(base.params, tok, base.config))
        c, attn = base.config, base.params["layers"]["self_attn"]
        if model_type == "qwen3":
            attn["q_norm"] = jnp.ones_like(attn["q_norm"])
        elif model_type == "qwen2":
            attn["q_proj_bias"] = jnp.zeros_like(attn["q_proj_bias"])
        else:
            import dataclasses
            c = dataclasses.replace(c, sliding_window=None, sliding_layers=())
        alt = np.asarray(jaxmerge.forward(base.params, tok, c))
        assert np.abs(alt - ref).max() > 100 * TOL, model_type


def test_greedy_generation_matches_transformers(family_model):
    name, path, model = family_model
    base = jaxmerge.load_base(path, dtype="float32")
    tok, mask = left_padded((5, 9), seed=7)
    ours = np.asarray(jaxmerge.generate(base.params, tok, base.config, max_new_tokens=12,
                                        attention_mask=mask, eos_token_id=[]))
    with torch.no_grad():
        ref = model.generate(torch.tensor(tok), attention_mask=torch.tensor(mask), max_new_tokens=12,
                             do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=12)
    np.testing.assert_array_equal(ours, ref[:, tok.shape[1]:].numpy())


def peft_oracle(model, adapter_dir, tokens):
    from peft import PeftModel
    pm = PeftModel.from_pretrained(model, adapter_dir).eval()
    try:
        return torch_logits(pm, tokens)
    finally:
        pm.unload()


def lora_logits(path, adapter_dir, tokens):
    base = jaxmerge.load_base(path, dtype="float32")
    pool, report = jaxmerge.load_pool([adapter_dir], base.config, progress=False)
    assert report.kept == [adapter_dir], report.summary()
    adapters = pool.factored({m: jnp.ones((1, pool.num_layers)) for m in pool.modules})
    return np.asarray(jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters=adapters))


def test_peft_lora_matches_peftmodel(family_model, tmp_path):
    name, path, model = family_model
    adapter = str(tmp_path / "adapter")
    write_adapter(model, adapter, seed=5, r=4, lora_alpha=8, use_rslora=(name == "qwen2"))
    tok = tokens_for((2, 20), seed=9)
    ours = lora_logits(path, adapter, tok)
    ref = peft_oracle(model, adapter, tok)
    assert np.abs(ref - torch_logits(model, tok)).max() > 1e-2  # the LoRA changes the logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_families_on_8_device_mesh(tmp_path):
    """Sharded load (data=2 × tensor=4, explicit axis types), forward, generation and a PEFT LoRA of each
    family on 8 simulated devices equal transformers / PEFT, and every leaf has its rules' sharding."""
    cases = []
    for name in ("qwen3_tied", "qwen2", "mistral"):
        model_type, overrides = VARIANTS[name]
        path = tmp_path / name
        model = hf_model(path, model_type, seed=11, num_attention_heads=8, num_key_value_heads=4,
                         **({"head_dim": 8} if model_type != "qwen2" else {}), **overrides)
        adapter = str(tmp_path / f"{name}-lora")
        write_adapter(model, adapter, seed=6, r=4, lora_alpha=8)
        tok = tokens_for((4, 16), seed=2)
        np.savez(tmp_path / f"{name}.npz", tokens=tok, logits=torch_logits(model, tok),
                 lora=peft_oracle(model, adapter, tok))
        cases.append([str(path), adapter, str(tmp_path / f"{name}.npz")])
    out = subprocess.run([sys.executable, os.path.join(HERE, "mesh", "families_on_mesh.py"), json.dumps(cases)],
                         env=mesh_env(8), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, r in zip(("qwen3_tied", "qwen2", "mistral"), results):
        assert r["bad"] == [], (name, r["bad"])
        assert r["q_sharded"], name  # q_proj really split over tensor × data
        assert r["logits_diff"] < TOL, (name, r)
        assert r["lora_diff"] < 1e-4, (name, r)
        assert r["gen_equal"], name


@pytest.mark.parametrize("model_type", sorted(FAMILY_TINY))
def test_defaults_are_transformers_defaults(model_type):
    """A config.json that omits optional fields reads as transformers' config class reads it."""
    from transformers import AutoConfig
    minimal = dict(model_type=model_type, vocab_size=100, hidden_size=256, intermediate_size=96,
                   num_hidden_layers=3, num_attention_heads=32)  # kv heads default to 8 or 32 in some families
    full = AutoConfig.for_model(model_type, **{k: v for k, v in minimal.items() if k != "model_type"}).to_dict()
    assert jaxmerge.ModelConfig.from_dict(minimal) == jaxmerge.ModelConfig.from_dict(full)


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "gemma", r"model_type='gemma' is not supported; supported: \['llama', 'mistral', 'qwen2', 'qwen3'\]"),
    ("architectures", ["Qwen2ForCausalLM"], r"model_type='qwen3' architectures=\['Qwen2ForCausalLM'\]"),
    ("attention_bias", True, "attention_bias=True: projection biases; not supported for model_type 'qwen3'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}, "rope_parameters.rope_type='yarn'"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("layer_types", ["full_attention", "chunked_attention"], "layer_types="),
])
def test_unknown_or_unsupported_config_names_it(tmp_path, field, value, match):
    hf_model(tmp_path, "qwen3", seed=1)
    p = tmp_path / "config.json"
    cfg = json.loads(p.read_text())
    cfg[field] = value
    p.write_text(json.dumps(cfg))
    with pytest.raises(jaxmerge.ConfigError, match=match):
        jaxmerge.load_base(str(tmp_path))


@pytest.mark.parametrize("name", ["qwen3_tied", "qwen2", "mistral"])
def test_merge_export_of_every_family(tmp_path, name):
    """``jaxmerge merge`` (folded model and PEFT adapter) on each family: transformers and PEFT load the
    outputs, with the logits of W + the average of PEFT's own deltas (1e-4)."""
    from jaxmerge.cli import main
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model_type, overrides = VARIANTS[name]
    model = hf_model(tmp_path / "base", model_type, seed=6, **overrides)
    deltas = [write_adapter(model, tmp_path / "ads" / f"a{i}", seed=i, r=2 + 2 * i, lora_alpha=8, scale_b=0.2)
              for i in range(2)]
    tok = tokens_for((2, 16), seed=4)
    import copy
    want = copy.deepcopy(model)
    with torch.no_grad():
        for (m, layer), _ in deltas[0].items():
            mod = dict(want.named_modules())[f"model.layers.{layer}.{jaxmerge.models.schema.BLOCK[m]}.{m}"]
            mod.weight += torch.tensor(sum(d[(m, layer)] for d in deltas) / 2)
    ref = torch_logits(want, tok)
    for fmt in ("model", "peft"):
        out = tmp_path / fmt
        assert main(["merge", "--base", str(tmp_path / "base"), "--adapters", str(tmp_path / "ads"), "--method",
                     "average", "--format", fmt, "--permissive", "--out", str(out), "--quiet"]) == 0
        if fmt == "model":
            merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        else:
            merged = PeftModel.from_pretrained(copy.deepcopy(model), str(out)).eval()
        np.testing.assert_allclose(torch_logits(merged, tok), ref, atol=1e-4, rtol=0, err_msg=fmt)
    assert np.abs(ref - torch_logits(model, tok)).max() > 1e-2
