"""``jaxmerge merge`` / ``jaxmerge pool`` end to end on folders of adapters as peft writes them; derived
pools (random re-init with matched std, target at slot 0); pool statistics."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import hf_llama
from jaxmerge.cli import main
from jaxmerge.lora import Dense
from jaxmerge.pool import load_pool
from jaxmerge.pool.derive import random_reinit, with_target
from helpers import edit_config, write_adapter

TOL = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = hf_llama(root / "base")
    deltas = {"a": write_adapter(model, root / "ads" / "a", seed=1, r=4),
              "b": write_adapter(model, root / "ads" / "b", seed=2, r=8, target_modules=["q_proj", "v_proj"])}
    write_adapter(model, root / "ads" / "c_dora", seed=3, use_dora=True)
    write_adapter(model, root / "only_bad" / "x", seed=4)
    edit_config(root / "only_bad" / "x", peft_type="IA3")
    return root, model, deltas


def _logits(path, tokens):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return m(torch.from_numpy(tokens)).logits.numpy()


def _expected(root, deltas, weights, tokens):
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    want = {}
    for name, w in weights.items():
        for (m, layer), d in deltas[name].items():
            want.setdefault(m, np.zeros((2,) + d.shape, np.float32))[layer] += w * d
    return np.asarray(jaxmerge.forward(base.params, jnp.asarray(tokens), base.config,
                                       adapters={m: Dense(jnp.asarray(d)) for m, d in want.items()}))


def test_merge_average_model(setup, tmp_path):
    root, _, deltas = setup
    out = tmp_path / "avg"
    assert main(["merge", "--base", str(root / "base"), "--adapters", str(root / "ads"), "--method", "average",
                 "--out", str(out)]) == 0
    rows = {os.path.basename(r["source"]): r for r in json.loads((out / "report.json").read_text())["adapters"]}
    assert rows["a"]["kept"] and rows["b"]["kept"] and not rows["c_dora"]["kept"] and "DoRA" in rows["c_dora"]["reason"]
    tokens = np.random.default_rng(0).integers(3, 128, (2, 12))
    np.testing.assert_allclose(_logits(out, tokens), _expected(root, deltas, {"a": .5, "b": .5}, tokens), **TOL)
    assert os.path.exists(out / "config.json")


def test_merge_linear_peft(setup, tmp_path):
    root, _, deltas = setup
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    out = tmp_path / "lin"
    ads = [str(root / "ads" / n) for n in ("a", "c_dora", "b")]
    assert main(["merge", "--base", str(root / "base"), "--adapters", *ads, "--method", "linear",
                 "--weights", "2", "9", "-1", "--format", "peft", "--out", str(out)]) == 0
    tokens = np.random.default_rng(0).integers(3, 128, (2, 12))
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), out).eval()
    with torch.no_grad():
        got = m(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(got, _expected(root, deltas, {"a": 2.0, "b": -1.0}, tokens), **TOL)


def test_merge_ties_calls_merge_helper(setup, tmp_path):
    root, _, _ = setup
    from jaxmerge.merge import merge_pool
    out = tmp_path / "ties"
    assert main(["merge", "--base", str(root / "base"), "--adapters", str(root / "ads"), "--method", "ties",
                 "--density", "0.5", "--sign", "frequency", "--out", str(out)]) == 0
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    pool, _ = load_pool([root / "ads"], base.config, progress=False)
    d = merge_pool(pool, "ties", density=0.5, sign="frequency")
    tokens = np.random.default_rng(0).integers(3, 128, (1, 8))
    want = jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters={m: Dense(x) for m, x in d.items()})
    np.testing.assert_allclose(_logits(out, tokens), np.asarray(want), **TOL)


def test_merge_nothing_kept_fails_clearly(setup, tmp_path, capsys):
    root, _, _ = setup
    out = tmp_path / "none"
    assert main(["merge", "--base", str(root / "base"), "--adapters", str(root / "only_bad"),
                 "--out", str(out)]) != 0
    assert "no adapter was kept" in capsys.readouterr().err
    assert not out.exists()  # no result under the requested name; the report is beside it
    assert not json.loads((tmp_path / ".partial-none" / "report.json").read_text())["adapters"][0]["kept"]


def test_pool_stats_and_filter(setup, tmp_path, capsys):
    root, _, _ = setup
    assert main(["pool", "stats", str(root / "ads"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_adapters"] == 3 and stats["ranks"] == {"4": 2, "8": 1}
    assert stats["target_module_combinations"] == {"FFW (Down, Gate, Up) + Attn (K, O, Q, V)": 2, "Attn (Q, V)": 1}
    assert main(["pool", "filter", str(root / "ads"), "--base", str(root / "base"), "--out", str(tmp_path / "f")]) == 0
    kept = (tmp_path / "f" / "kept.txt").read_text().split()
    assert [os.path.basename(k) for k in kept] == ["a", "b"]


def test_stats_contributors_and_shapes_file():
    from jaxmerge.pool.stats import combination, pool_stats
    recs = [{"contributor": c, "r": 8, "modules": ["k_proj", "v_proj"], "layers": {"k_proj": [30, 31],
             "v_proj": [30, 31]}} for c in ["x"] * 3 + ["y"]]
    s = pool_stats(recs, num_layers=32)
    assert s["adapters_per_contributor"]["avg"] == 2.0 and s["adapters_per_contributor"]["max"] == 3
    assert combination(recs[0], 32) == "L30.K + L30.V + L31.K + L31.V"
    # the shipped manifest of the paper's pool (its recorded configs, no download): Appendix A's rank table
    from jaxmerge.pool.stats import collect
    records, errors = collect(["paper-llama31-8b"])
    s = pool_stats(records)
    assert errors == [] and s["num_adapters"] == 960 and s["ranks"]["16"] == 285 and s["ranks"]["8"] == 274
    assert s["ranks"]["unknown"] == 5 and s["adapters_per_contributor"]["contributors"] == 295


def _factors(pool, i):
    """Adapter i's own (A [L, r_i, in], B [L, out, r_i], present [L]) per module, as NumPy (the checks below
    slice on the host: eager jnp slices of a dozen distinct shapes would each compile)."""
    out = {}
    for m, s in pool.modules.items():
        lo, hi = s.offsets[i], s.offsets[i + 1]
        out[m] = np.asarray(s.a)[:, lo:hi], np.asarray(s.b)[:, :, lo:hi], np.asarray(s.present)[i]
    return out


def test_random_reinit_and_with_target(setup, tmp_path):
    root, model, _ = setup
    write_adapter(model, tmp_path / "l1", seed=9, r=4, target_modules=["q_proj", "down_proj"], layers_to_transform=[1])
    base_cfg = jaxmerge.LlamaConfig.from_json(str(root / "base"))
    pool, _ = load_pool([root / "ads", tmp_path / "l1"], base_cfg, progress=False)
    target, _ = load_pool([root / "ads" / "b"], base_cfg, progress=False)
    both = with_target(pool, target)
    assert both.names[0] == target.names[0] and both.num_adapters == 4
    np.testing.assert_array_equal(_factors(both, 0)["q_proj"][0], target.modules["q_proj"].a)
    assert tuple(both.modules["down_proj"].ranks) == (0, 4, 0, 4)
    r = random_reinit(both, jax.random.key(0), keep=(0,))
    assert all(tuple(s.ranks) == tuple(both.modules[m].ranks) for m, s in r.modules.items())
    before, after = ([_factors(p, i) for i in range(4)] for p in (both, r))
    for m in r.modules:
        np.testing.assert_array_equal(after[0][m][0], before[0][m][0])  # target kept
        np.testing.assert_array_equal(after[0][m][1], before[0][m][1])
        for i in range(4):  # absent (adapter, layer) entries stay exactly zero
            a, b, present = after[i][m]
            np.testing.assert_array_equal(present, before[i][m][2])
            for layer in range(2):
                if not present[layer]:
                    assert not a[layer].any() and not b[layer].any()
                elif i > 0:
                    assert a[layer].any() and b[layer].any()
    # each redrawn adapter's A (resp. B) has its original std over all its present entries
    for i in (1, 2, 3):
        for part in (0, 1):
            def entries(f):
                return np.concatenate([x[part][l].ravel() for x in f.values() for l in range(2) if x[2][l]])
            orig, new = entries(before[i]), entries(after[i])
            assert not np.allclose(orig, new)
            assert np.std(new) == pytest.approx(np.std(orig), rel=0.05)
