"""The streaming merge (``jaxmerge.merge.stream``) against the in-memory path — the whole base and pool
loaded, ``merge_pool`` over all layers, ``export_model`` / ``export_peft`` — bit for bit, for every
registered method, on a tiny bf16 checkpoint written by transformers; window size never changes a
result (masks included); tied embeddings; transformers and PEFT load the outputs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import jaxmerge
from helpers import hf_llama, write_adapter
from jaxmerge.lora import Dense
from jaxmerge.merge import merge_pool, registry
from jaxmerge.merge.static import factored_window, method_and_params
from jaxmerge.merge.stream import stream_merge
from jaxmerge.pool import load_pool
from jaxmerge.pool.export import export_model, export_peft

# the parameters a method has no recipe default for (a value where each has an effect)
REQUIRED = {"magnitude_prune": dict(density=0.5), "dare_linear": dict(density=0.6), "dare_ties": dict(density=0.6),
            "breadcrumbs": dict(density=0.7, gamma=0.05), "breadcrumbs_ties": dict(density=0.7, gamma=0.05),
            "della": dict(density=0.5, epsilon=0.2), "della_linear": dict(density=0.5, epsilon=0.2)}
EQUAL_RANKS = {"factor_linear"}  # PEFT's 'linear' combination needs one rank per module


def _world(root, tied=False):
    model = hf_llama(root / "base", dtype=torch.bfloat16, num_hidden_layers=3, tie_word_embeddings=tied)
    model = model.float()
    write_adapter(model, root / "ads" / "a", seed=1, r=4)
    write_adapter(model, root / "ads" / "b", seed=2, r=8, lora_alpha=4, use_rslora=True,
                  target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[0, 2])
    write_adapter(model, root / "ads" / "c", seed=3, r=2, target_modules=["q_proj", "gate_proj"])
    for j, seed in enumerate((4, 5)):  # equal ranks for factor_linear
        write_adapter(model, root / "eq" / f"e{j}", seed=seed, r=4, target_modules=["q_proj", "down_proj"])
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("stream"))


def _tensors(folder):
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(folder, f)))
    return out


def _in_memory(root, ads, method, out, params, seed=0, fmt="model", weights=None):
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    pool, _ = load_pool([str(a) for a in ads], base.config, progress=False)
    deltas = merge_pool(pool, method, weights=weights, key=jax.random.key(seed), **params)
    if fmt == "model":
        m, p = method_and_params(method, **params)
        if m.factored is not None:  # exactly low-rank: folded from its factors, as the stream folds it
            w = registry.resolve_weights(method, pool.num_adapters, pool.num_layers, weights)
            factored = {mod: factored_window(s, m, p, w) for mod, s in pool.modules.items()}
            for mod, f in factored.items():  # the factored form is the merge
                np.testing.assert_allclose(f.dense(), deltas[mod], rtol=0, atol=1e-6)
            deltas = factored
        return export_model(base, deltas, str(out))
    return export_peft(deltas, base.config, str(out), rank=3)


def _assert_same_files(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        np.testing.assert_array_equal(ta[k].view(np.uint8), tb[k].view(np.uint8), err_msg=k)


@pytest.mark.parametrize("method", registry.names())
def test_streamed_model_equals_in_memory_bit_for_bit(world, method, tmp_path):
    ads = [world / "eq"] if method in EQUAL_RANKS else [world / "ads"]
    params = REQUIRED.get(method, {})
    res = stream_merge(str(world / "base"), [str(a) for a in ads], str(tmp_path / "s"), method=method,
                       params=params, seed=3, progress=False)
    assert not res["resumed"] and res["adapters"]
    _in_memory(world, ads, method, tmp_path / "m", params, seed=3)
    _assert_same_files(tmp_path / "s", tmp_path / "m")
    got = _tensors(tmp_path / "s")
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype.name == "bfloat16"  # bf16 stays bf16
    base = _tensors(world / "base")
    assert not np.array_equal(got["model.layers.0.self_attn.q_proj.weight"].view(np.uint16),
                              base["model.layers.0.self_attn.q_proj.weight"].view(np.uint16))
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):  # passed through
        np.testing.assert_array_equal(got[k].view(np.uint16), base[k].view(np.uint16))
    merge = json.loads((tmp_path / "s" / "merge.json").read_text())
    assert merge["method"] == method and merge["params"] == {**dict(
        (f, v) for f, v in json.loads(json.dumps(
            __import__("dataclasses").asdict(registry.make_params(method, **params)))).items())}


@pytest.mark.parametrize("method", ["ties", "dare_ties", "tsv", "della"])
def test_window_size_changes_nothing(world, method, tmp_path):
    """Windows of 1, 2 and 3 layers (the last one short) give the same bits, random masks included."""
    params = REQUIRED.get(method, {})
    outs = []
    for n in (1, 2, 3):
        stream_merge(str(world / "base"), [str(world / "ads")], str(tmp_path / f"w{n}"), method=method, params=params,
                     layers_per_step=n, seed=7, progress=False)
        outs.append(tmp_path / f"w{n}")
    _assert_same_files(outs[0], outs[1])
    _assert_same_files(outs[0], outs[2])


def test_streamed_peft_equals_in_memory_and_loads_in_peft(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    stream_merge(str(world / "base"), [str(world / "ads")], str(tmp_path / "s"), method="ties", fmt="peft", rank=3,
                 progress=False)
    _in_memory(world, [world / "ads"], "ties", tmp_path / "m", {}, fmt="peft")
    _assert_same_files(tmp_path / "s", tmp_path / "m")
    cfg = json.loads((tmp_path / "s" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 3
    # exact (rank-concatenated) linear export: PEFT's logits equal the folded merge's
    stream_merge(str(world / "base"), [str(world / "ads")], str(tmp_path / "lin"), method="linear", fmt="peft",
                 weights=[0.5, -1.0, 2.0], progress=False)
    base = jaxmerge.load_base(str(world / "base"), dtype="float32")
    pool, _ = load_pool([str(world / "ads")], base.config, progress=False)
    dense = merge_pool(pool, "linear", weights=[0.5, -1.0, 2.0])
    tokens = np.random.default_rng(0).integers(3, 128, (2, 10))
    want = jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters={m: Dense(d) for m, d in dense.items()})
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world / "base", dtype=torch.float32),
                                  tmp_path / "lin").eval()
    with torch.no_grad():
        got = m(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-4)


def test_tied_base_has_no_lm_head_and_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM
    root = _world(tmp_path / "tied", tied=True)
    out = tmp_path / "out"
    stream_merge(str(root / "base"), [str(root / "ads")], str(out), method="ties", dtype="float32", progress=False)
    got = _tensors(out)
    assert "lm_head.weight" not in got and got["model.embed_tokens.weight"].dtype == np.float32
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    pool, _ = load_pool([str(root / "ads")], base.config, progress=False)
    deltas = merge_pool(pool, "ties")
    tokens = np.random.default_rng(1).integers(3, 128, (2, 10))
    want = jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters={m: Dense(d) for m, d in deltas.items()})
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(tokens)).logits.numpy(), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_sharded_output_has_an_index_transformers_reads(world, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "sh"
    stream_merge(str(world / "base"), [str(world / "ads")], str(out), method="average", shard_bytes=40_000,
                 progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert set(index["weight_map"]) == set(_tensors(world / "base"))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in _tensors(out).values())
    _in_memory(world, [world / "ads"], "average", tmp_path / "m", {})
    _assert_same_files(out, tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(out)  # loads (every key found)
