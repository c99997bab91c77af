"""load_pool on adapters written by the real peft library: mixed ranks, rsLoRA, regex targets,
layers_to_transform, fp16, key variants — every merge equals PEFT's own get_delta_weight (1e-5 on
deltas, 1e-4 on logits); every broken case is skipped with its reason while the rest still load."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import hf_llama, mesh_env
from jaxmerge.lora import Dense
from jaxmerge.pool import FilterPolicy, load_pool
from helpers import edit_config, rewrite_keys, write_adapter

GOOD = {  # name → write_adapter kwargs
    "r4_all": dict(seed=1),
    "r8_rslora_qv": dict(seed=2, r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "r2_regex": dict(seed=3, r=2, lora_alpha=16, target_modules=r".*\.layers\.1\.(self_attn\.k|mlp\.up)_proj"),
    "r6_layer1": dict(seed=4, r=6, lora_alpha=12, target_modules=["o_proj", "down_proj"], layers_to_transform=[1]),
    "r4_fp16": dict(seed=5, dtype=torch.float16, target_modules=["gate_proj", "q_proj"]),
    "r4_named_keys": dict(seed=6, target_modules=["v_proj", "up_proj"]),
    "r4_no_prefix": dict(seed=7, target_modules=["k_proj"]),
    "r4_bare": dict(seed=8, bare=True, target_modules=["q_proj", "down_proj"]),
}
PERMISSIVE_TASK = FilterPolicy(task_types=("CAUSAL_LM", None))  # the bare LlamaModel adapter has no task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    model = hf_llama(root / "base")
    deltas = {}
    for name, kw in GOOD.items():
        deltas[name] = write_adapter(model, root / "adapters" / name, **kw)
    rewrite_keys(root / "adapters" / "r4_named_keys", lambda k: k.replace(".weight", ".default.weight"))
    rewrite_keys(root / "adapters" / "r4_no_prefix", lambda k: k.removeprefix("base_model.model."))
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    return root, model, base, deltas


def _dense(pool, i=None):
    p = pool if i is None else pool.subset([i])
    return {m: np.asarray(s.factored(jnp.ones((p.num_adapters, p.num_layers))).dense())
            for m, s in p.modules.items()}


def test_each_adapter_equals_peft_delta(setup):
    root, _, base, deltas = setup
    pool, report = load_pool([root / "adapters"], base.config, policy=PERMISSIVE_TASK, progress=False)
    assert [os.path.basename(n) for n in pool.names] == sorted(GOOD), report.summary()
    assert all(r["kept"] for r in report.rows)
    for i, name in enumerate(pool.names):
        ours = _dense(pool, i)
        ref = deltas[os.path.basename(name)]
        for m in pool.modules:
            for layer in range(2):
                want = ref.get((m, layer), np.zeros_like(ours[m][layer]))
                np.testing.assert_allclose(ours[m][layer], want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {m} {layer}")
                assert bool(pool.modules[m].present[i, layer]) == ((m, layer) in ref)
    # rank concatenation: each module's rows are the sum of its adapters' ranks
    q = pool.modules["q_proj"]
    assert q.a.shape[1] == sum(q.ranks) and q.ranks[sorted(GOOD).index("r8_rslora_qv")] == 8


def test_merged_logits_equal_peft_deltas(setup):
    root, model, base, deltas = setup
    pool, _ = load_pool([root / "adapters"], base.config, policy=PERMISSIVE_TASK, progress=False, workers=2)
    w = jnp.full((pool.num_adapters, pool.num_layers), 0.7)
    adapters = pool.factored({m: w for m in pool.modules})
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 128, (2, 20)))
    ours = jaxmerge.forward(base.params, tokens, base.config, adapters=adapters)
    # oracle: transformers' model with 0.7·Σ PEFT get_delta_weight added to its weights
    ref_model = hf_llama(root / "ref", seed=0)
    sd = ref_model.state_dict()
    with torch.no_grad():
        for d in deltas.values():
            for (m, layer), delta in d.items():
                blk = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                sd[f"model.layers.{layer}.{blk}.{m}.weight"] += 0.7 * torch.from_numpy(delta)
        ref = ref_model(torch.from_numpy(np.asarray(tokens))).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-4)
    # the same through dense deltas
    dense = {m: Dense(jnp.asarray(0.7 * d)) for m, d in _dense(pool).items()}
    np.testing.assert_allclose(np.asarray(jaxmerge.forward(base.params, tokens, base.config, adapters=dense)), ref,
                               rtol=1e-5, atol=1e-4)


def _broken(root, model):
    """Each broken case → (folder, expected reason fragment)."""
    b = root / "broken"
    cases = {}

    def make(name, reason, **kw):
        write_adapter(model, b / name, seed=hash(name) % 1000, target_modules=["q_proj", "v_proj"], **kw)
        cases[name] = reason
        return b / name

    p = make("bad_shape", "shape mismatch")
    edit_config(p, r=8)  # config says 8, tensors say 4
    p = make("nan", "non-finite")
    from jaxmerge.safetensors_io import SafeFile, save
    f = p / "adapter_model.safetensors"
    t = {k: np.array(SafeFile(f)[k]) for k in SafeFile(f).keys()}
    t[sorted(t)[0]][0, 0] = np.nan
    save(f, t)
    p = make("bin_only", "never unpickled")
    os.replace(p / "adapter_model.safetensors", p / "adapter_model.bin")
    make("dora", "DoRA", use_dora=True)
    make("mts", "modules_to_save", modules_to_save=["lm_head"])
    p = make("bias", "bias")
    edit_config(p, bias="lora_only")
    make("rank_pattern", "rank_pattern", rank_pattern={"q_proj": 4})
    make("tiny_norm", "outside (1, 1000]", scale_b=1e-4)
    make("huge_norm", "outside (1, 1000]", scale_b=1e4)
    p = make("truncated", "truncated")
    with open(p / "adapter_model.safetensors", "r+b") as fh:
        fh.truncate(os.path.getsize(p / "adapter_model.safetensors") - 100)
    p = make("not_lora", "peft_type")
    edit_config(p, peft_type="IA3")
    p = make("pissa", "rewrote the base")
    edit_config(p, init_lora_weights="pissa_niter_4")
    shutil.copytree(root / "adapters" / "r4_all", b / "zz_duplicate")
    cases["zz_duplicate"] = "duplicate of"
    return cases


def test_broken_adapters_skipped_with_reasons(setup):
    root, model, base, deltas = setup
    cases = _broken(root, model)
    good = [root / "adapters" / "r4_all", root / "adapters" / "r8_rslora_qv"]
    pool, report = load_pool(good + [root / "broken"], base.config, progress=False)
    rows = {os.path.basename(r["source"]): r for r in report.rows}
    for name, reason in cases.items():
        assert not rows[name]["kept"] and reason in rows[name]["reason"], (name, rows[name])
    assert pool.num_adapters == 2 and report.kept == [str(p) for p in good]
    assert json.loads(report.to_json())["adapters"][0].keys() == {"source", "kept", "reason"}
    assert "2 of 15 adapters kept" in report.summary()
    ours = _dense(pool)
    for m in pool.modules:
        want = sum(d.get((m, 0), 0) for d in (deltas["r4_all"], deltas["r8_rslora_qv"]))
        np.testing.assert_allclose(ours[m][0], want, rtol=1e-5, atol=1e-6)


def test_non_layer_lora_ignored_and_reported(setup):
    root, model, base, deltas = setup
    p = root / "with_head"
    d = write_adapter(model, p, seed=11, target_modules=["q_proj", "lm_head"])
    pool, report = load_pool([p], base.config, progress=False)
    assert report.rows[0]["kept"] and "lm_head" in report.rows[0]["reason"], report.rows
    np.testing.assert_allclose(_dense(pool)["q_proj"][1], d[("q_proj", 1)], rtol=1e-5, atol=1e-6)
    assert set(pool.modules) == {"q_proj"}


def test_rank_and_alpha_patterns_when_allowed(setup):
    root, model, base, _ = setup
    p = root / "patterns"
    d = write_adapter(model, p, seed=12, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3})
    pool, report = load_pool([p], base.config, policy=FilterPolicy(allow_patterns=True), progress=False)
    assert report.rows[0]["kept"], report.rows
    ours = _dense(pool)
    for (m, layer), want in d.items():
        np.testing.assert_allclose(ours[m][layer], want, rtol=1e-5, atol=1e-6)


def test_hub_ids_from_cache_offline(setup, tmp_path):
    """Hub ids resolved through huggingface_hub's cache layout, offline; license from README metadata."""
    root, _, base, deltas = setup
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, lic in (("alice--good", "apache-2.0"), ("bob--nolicense", None)):
        d = tmp_path / "cache" / f"models--{repo}"
        snap = d / "snapshots" / commit
        shutil.copytree(root / "adapters" / "r4_all", snap)
        os.remove(snap / "README.md")
        if lic:
            (snap / "README.md").write_text(f"---\nlicense: {lic}\nlibrary_name: peft\n---\n# card\n")
        (d / "refs").mkdir()
        (d / "refs" / "main").write_text(commit)
    lst = tmp_path / "pool.txt"
    lst.write_text("# hub ids\nalice/good\nbob/nolicense\ncarol/missing\n")
    pool, report = load_pool([lst], base.config, progress=False, cache_dir=str(tmp_path / "cache"))
    rows = {r["source"]: r for r in report.rows}
    assert rows["alice/good"]["kept"], rows
    assert "license" in rows["bob/nolicense"]["reason"]
    assert "cache" in rows["carol/missing"]["reason"]
    assert pool.names == ("alice/good",)


MESH_SCRIPT = r"""
import sys, numpy as np, jax
import jaxmerge
from jaxmerge.pool import FilterPolicy, load_pool
from jaxmerge.sharding import ShardingRules, make_mesh
from jaxmerge.stacks import stack_logical_axes
cfg = jaxmerge.LlamaConfig.from_json(sys.argv[1])
pol = FilterPolicy(task_types=("CAUSAL_LM", None))
mesh = make_mesh(4, 2)
pool, _ = load_pool([sys.argv[2]], cfg, policy=pol, mesh=mesh, progress=False)
ref, _ = load_pool([sys.argv[2]], cfg, policy=pol, progress=False)
rules = ShardingRules()
for m, s in pool.modules.items():
    ax = stack_logical_axes(m)
    for part in ("a", "b"):
        x = getattr(s, part)
        assert x.sharding.spec == rules.spec(ax[part], x.shape, mesh), (m, part, x.sharding.spec)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(getattr(ref.modules[m], part)))
    assert any(p is not None for p in s.a.sharding.spec), (m, s.a.sharding.spec)
print("OK", len(jax.devices()))
"""


def test_stacks_on_a_mesh_sharded_like_the_base(setup):
    import subprocess
    import sys
    root, _, _, _ = setup
    env = mesh_env(8)
    out = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(root / "base"), str(root / "adapters")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK 8" in out.stdout, out.stderr[-3000:]
