"""The embedded world (small size): built by the project's code, cached by recipe, everything in the
real formats and read back by the real loaders (transformers, AutoTokenizer, PEFT, datasets)."""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import world as W
from helpers import peft_factored




@pytest.fixture(scope="module")
def world():
    return W.small_world()


def test_recipe_identifies_the_world(world, tmp_path):
    assert os.path.basename(world.root) == f"world-small-{W.recipe_hash(W.recipe('small'))}"
    assert W.recipe_hash(W.recipe("small", seed=1)) != W.recipe_hash(W.recipe("small"))
    r = W.recipe("small")
    r["pool"]["steps"] += 1
    assert W.recipe_hash(r) != W.recipe_hash(W.recipe("small"))
    with open(os.path.join(world.root, "recipe.json")) as f:
        assert json.load(f) == json.loads(json.dumps(W.recipe("small")))
    assert W.build_world(os.path.dirname(world.root), size="small", progress=False).root == world.root  # cached
    assert not [p for p in os.listdir(os.path.dirname(world.root)) if p.startswith(".partial-world-small")]


def test_pool_variety_of_the_default_recipe():
    specs = W.recipe("default")["pool"]["specs"]
    assert len(specs) >= 40 and len({s["family"] for s in specs}) >= 10
    assert {s["r"] for s in specs} == {4, 8, 16, 32, 64} and len({s["alpha"] for s in specs}) >= 3
    kinds = {tuple(sorted(s["targets"])) for s in specs}
    assert {tuple(sorted(v)) for v in W.TARGET_SETS.values()} <= kinds
    assert any(s["rslora"] for s in specs) and any(s["layers"] for s in specs)
    d = W.SIZES["default"]
    assert len(d["targets"]) >= 8 and d["n_test"] >= 200
    related = [t for t in d["targets"] if t in W.POOL_FAMILIES]
    assert related and len(related) < len(d["targets"])  # some targets have related LoRAs, some none


def test_base_is_a_llama31_that_transformers_loads(world):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    import jaxmerge
    tok = AutoTokenizer.from_pretrained(world.base_dir)
    hf = LlamaForCausalLM.from_pretrained(world.base_dir, dtype=torch.float32).eval()
    c = hf.config
    assert c.num_key_value_heads < c.num_attention_heads and not c.tie_word_embeddings
    rope = getattr(c, "rope_parameters", None) or c.rope_scaling
    assert rope["rope_type"] == "llama3"
    text = tok.apply_chat_template([{"role": "user", "content": "what is 3 plus 4 ?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and ids[0] == tok.bos_token_id
    base = jaxmerge.load_base(world.base_dir, dtype="float32")
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray([ids]), base.config))
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_world_files_are_what_transformers_and_peft_write(world, tmp_path):
    """The base and the adapters were written without torch or peft; loading them with transformers /
    PEFT and saving them again with their own save_pretrained gives the same files' content."""
    import torch
    from peft import LoraConfig
    from safetensors import safe_open
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(world.base_dir, dtype=torch.float32)
    hf.save_pretrained(tmp_path / "resaved")
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(world.base_dir, name)) as f, open(tmp_path / "resaved" / name) as g:
            assert json.load(f) == json.load(g), name
    ours, theirs = (safe_open(os.path.join(d, "model.safetensors"), "np")
                    for d in (world.base_dir, tmp_path / "resaved"))
    assert ours.metadata() == theirs.metadata() == {"format": "pt"}
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for k in ours.keys():
        np.testing.assert_array_equal(ours.get_tensor(k), theirs.get_tensor(k), err_msg=k)
    for d in world.good_pool_dirs[:6]:
        with open(os.path.join(d, "adapter_config.json")) as f:
            written = json.load(f)
        cfg = LoraConfig.from_pretrained(d)
        cfg.save_pretrained(tmp_path / "cfg")
        with open(tmp_path / "cfg" / "adapter_config.json") as f:
            resaved = json.load(f)
        as_set = lambda c: {**c, "target_modules": set(c["target_modules"])}  # PEFT writes a set's order
        assert as_set({k: resaved[k] for k in written}) == as_set(written), d  # every key is PEFT's, PEFT's value
        assert safe_open(os.path.join(d, "adapter_model.safetensors"), "np").metadata() == {"format": "pt"}


def test_pool_adapters_load_with_peft_and_match(world):
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    import jaxmerge
    base = jaxmerge.load_base(world.base_dir, dtype="float32")
    ids = jnp.asarray([[base.tokenizer.bos_token_id] + base.tokenizer("what is 3 plus 4 ? 7 red", add_special_tokens=False)["input_ids"]])
    plain = np.asarray(jaxmerge.forward(base.params, ids, base.config))
    seen = set()
    for d in world.good_pool_dirs:
        with open(os.path.join(d, "adapter_config.json")) as f:
            cfg = json.load(f)
        kind = (len(cfg["target_modules"]), cfg["use_rslora"], bool(cfg["layers_to_transform"]))
        if kind in seen:  # one PEFT check per kind of adapter keeps the test quick
            continue
        seen.add(kind)
        model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(world.base_dir, dtype=torch.float32), d)
        with torch.no_grad():
            ref = model.eval()(torch.tensor(np.asarray(ids))).logits.numpy()
        ours = np.asarray(jaxmerge.forward(base.params, ids, base.config, adapters=peft_factored(d, base.config)))
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
        assert np.abs(ref - plain).max() > 1e-3, f"{d} changes nothing"
    assert {k[0] for k in seen} == {2, 4, 7} and any(k[1] for k in seen) and any(k[2] for k in seen)


def _norm(cfg, t):
    s = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
    return math.sqrt(sum(float(np.sum((s * t[k.replace("lora_A", "lora_B")].astype(np.float64)
                                       @ t[k].astype(np.float64)) ** 2)) for k in t if k.endswith("lora_A.weight")))


def test_good_adapters_pass_the_papers_filter_and_broken_ones_do_not(world):
    from safetensors.numpy import load_file
    import jaxmerge
    config = jaxmerge.LlamaConfig.from_json(world.base_dir)
    assert len(world.broken) == 7 and set(world.broken) <= set(world.pool_dirs)

    def defects(d):
        with open(os.path.join(d, "adapter_config.json")) as f:
            cfg = json.load(f)
        found = set()
        if cfg.get("peft_type") != "LORA" or cfg.get("task_type") != "CAUSAL_LM":
            found.add("type")
        if cfg.get("use_dora"):
            found.add("dora")
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            found.add("rank_pattern")
        st = os.path.join(d, "adapter_model.safetensors")
        if not os.path.exists(st):
            return found | ({".bin"} if os.path.exists(os.path.join(d, "adapter_model.bin")) else {"missing"})
        t = load_file(st)
        if any(np.isnan(v).any() for v in t.values()):
            found.add("nan")
            return found
        for k, v in t.items():
            if k.endswith("lora_A.weight") and v.shape[1] != config.module_shape(k.split(".")[-3])[1]:
                found.add("shape")
        if "shape" not in found and not (1 < _norm(cfg, t) <= 1000):
            found.add("norm")
        return found

    for d in world.good_pool_dirs:
        assert defects(d) == set(), d
    for d, why in world.broken.items():
        assert defects(d) == {why}, d


def test_world_tasks_load_through_datasets(world):
    from jaxmerge.tasks import load_task
    assert world.default_task in world.target_tasks
    for name in world.target_tasks:
        data = load_task(name, world=world)
        assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, W.SIZES["small"]["n_test"])
        assert all(ex["answer"] in ex["choices"] for ex in data.train + data.test)
        seen = {ex["prompt"] for ex in data.train + data.validation}
        assert not seen & {ex["prompt"] for ex in data.test}  # knowledge targets: disjoint words; others: prompts
        in_pool = name in W.POOL_FAMILIES
        assert bool(world.related[name]) == in_pool
        assert all(world.adapters[a]["family"] == name for a in world.related[name])
    assert any(world.related.values()) and not all(world.related.values())
