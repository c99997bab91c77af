"""Batched multi-LoRA evaluation (one adapter per batch row) equals one-adapter-at-a-time evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import mesh_env, multi_lora_world as make_world
from jaxmerge.adaptive import multi_eval
from jaxmerge.tasks import answer_loss, encode, generate_answers, generate_correct





@pytest.fixture(scope="module")
def world():
    return make_world()


def test_auto_application_folds_when_tokens_outnumber_the_weights(world):
    _, _, _, pool, _ = world
    assert multi_eval.scoring_application(pool, None, tokens_per_adapter=4, adapters_per_batch=4) == "grouped"
    assert multi_eval.scoring_application(pool, None, tokens_per_adapter=100_000, adapters_per_batch=4) == "dense"
    plan = multi_eval.gather_plan(pool, [2], multi_eval._pool_ranks(pool))  # a fixed shape: every module
    assert set(plan) == set(pool.modules) and plan["up_proj"]["valid"].sum() == 0


def test_gather_plan_pads_to_power_of_two(world):
    _, _, _, pool, _ = world
    plan = multi_eval.gather_plan(pool, [0, 2, 6])  # ranks 2, 1 (no MLP), 4
    assert plan["q_proj"]["rows"].shape == (3, 4)
    np.testing.assert_array_equal(plan["q_proj"]["valid"].sum(1), [2, 1, 4])
    np.testing.assert_array_equal(plan["up_proj"]["valid"].sum(1), [2, 0, 4])
    assert set(multi_eval.gather_plan(pool, [2])) == {"q_proj", "v_proj", "o_proj"}  # no MLP rows at all
    assert multi_eval.gather_plan(pool, [0, 3])["q_proj"]["rows"].shape == (2, 2)
    assert multi_eval.gather_plan(pool, [2, 2])["q_proj"]["rows"].shape == (2, 1)


@pytest.mark.parametrize("application", ["grouped", "dense"])
def test_batched_losses_equal_one_at_a_time(world, application):
    tok, config, params, pool, examples = world
    batch = encode(examples, tok, None)
    one = multi_eval.pool_losses_one_at_a_time(params, config, pool, batch)
    got = multi_eval.pool_losses(params, config, pool, batch, adapters_per_batch=3, examples_per_step=2,
                                 application=application, progress=False)
    np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-5)
    assert np.ptp(got) > 0.1  # the adapters really differ
    # the zero adapter is the base model; a subset keeps the caller's order
    np.testing.assert_allclose(got[4], float(answer_loss(params, config, batch)), rtol=1e-5)
    sub = multi_eval.pool_losses(params, config, pool, batch, indices=[5, 1], adapters_per_batch=3,
                                 application=application, progress=False)
    np.testing.assert_allclose(sub, one[[5, 1]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(multi_eval.score_pool(params, config, pool, examples, tok, score="loss",
                                                     adapters_per_batch=3, examples_per_step=2, progress=False),
                               -one, rtol=1e-5)


@pytest.mark.parametrize("application", ["grouped", "dense"])
def test_batched_generation_equals_one_at_a_time(world, application):
    tok, config, params, pool, examples = world
    idx = [5, 2, 0, 3]  # ranks 2, 1 (no MLP: padded rows and a missing module in one batch), 2, 2
    got = multi_eval.pool_answers(params, config, tok, pool, examples, indices=idx, adapters_per_batch=4,
                                  examples_per_step=3, max_new_tokens=4, application=application, progress=False)
    want = [generate_answers(params, config, tok, examples, adapters=multi_eval.single_adapter(pool, i),
                             batch_size=8, max_new_tokens=4) for i in idx]
    assert got == want
    assert len({tuple(r) for r in got}) == 4  # generations differ between adapters
    # gold answers = adapter 0's generations on some examples → non-trivial accuracies
    gold = [dict(e, answer=(got[2][j] if j % 2 == 0 else e["answer"])) for j, e in enumerate(examples)]
    acc = multi_eval.score_pool(params, config, pool, gold, tok, indices=idx, adapters_per_batch=4,
                                examples_per_step=3, max_new_tokens=4, application=application, progress=False)
    ref = [generate_correct(params, config, tok, gold, adapters=multi_eval.single_adapter(pool, i), batch_size=8,
                            max_new_tokens=4).mean() for i in idx]
    np.testing.assert_array_equal(acc, ref)
    assert acc[2] >= 0.6


MESH_SCRIPT = r"""
import json, sys
import jax, numpy as np
from helpers import multi_lora_world as make_world
from jaxmerge.adaptive import multi_eval
from jaxmerge.sharding import ShardingRules, make_mesh, param_shardings
from jaxmerge.stacks import pool_shardings, stack_logical_axes
from jaxmerge.tasks import encode
assert len(jax.devices()) == 8, jax.devices()
tok, config, params, pool, examples = make_world()
mesh, rules = make_mesh(data=4, tensor=2), ShardingRules()
s_params = jax.device_put(params, param_shardings(config, params, mesh, rules))
s_pool = jax.device_put(pool, pool_shardings(pool, mesh, rules))
report = {"spec_errors": []}
q = s_params["layers"]["self_attn"]["q_proj"]
report["q_devices"] = len(q.sharding.device_set)
report["q_spec"] = str(q.sharding.spec)
for m, st in s_pool.modules.items():
    ax = stack_logical_axes(m)
    for f in ("a", "b"):
        x = getattr(st, f)
        if x.sharding.spec != rules.spec(ax[f], x.shape, mesh) or len(x.sharding.device_set) != 8:
            report["spec_errors"].append([m, f, str(x.sharding.spec)])
report["specs"] = {m: [list(st.a.sharding.spec), list(st.b.sharding.spec)] for m, st in s_pool.modules.items()}
batch = encode(examples, tok, None)
kw = dict(adapters_per_batch=4, examples_per_step=2, progress=False)
one = multi_eval.pool_losses(params, config, pool, batch, **kw)
got = multi_eval.pool_losses(s_params, config, s_pool, batch, **kw)
report["loss_max_diff"] = float(np.abs(np.asarray(got) - np.asarray(one)).max())
report["loss_ptp"] = float(np.ptp(one))
kw = dict(adapters_per_batch=4, examples_per_step=3, max_new_tokens=4, progress=False)
a1 = multi_eval.pool_answers(params, config, tok, pool, examples, **kw)
a8 = multi_eval.pool_answers(s_params, config, tok, s_pool, examples, **kw)
report["answers_equal"] = a1 == a8
report["distinct_answers"] = len({tuple(r) for r in a1})
print("REPORT" + json.dumps(report))
"""


def test_batched_evaluation_on_an_8_device_mesh():
    """Params sharded by the foundation's rules and stacks by ``pool_shardings`` (checked), batched
    losses and generations on a simulated 8-device mesh equal the single-device ones."""
    import json
    import os
    import subprocess
    import sys

    env = mesh_env(8)
    out = subprocess.run([sys.executable, "-c", MESH_SCRIPT, os.path.dirname(os.path.abspath(__file__))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.split("REPORT", 1)[1])
    assert r["q_devices"] == 8 and "tensor" in r["q_spec"], r
    assert r["spec_errors"] == [], r
    # A [L, R, in] split over its in features, B [L, out, R] over its out features, like the base weight
    assert r["specs"]["q_proj"] == [[None, None, "data"], [None, "tensor", None]], r
    assert r["specs"]["up_proj"] == [[None, None, "data"], [None, "tensor", None]], r
    assert r["specs"]["down_proj"] == [[None, None, "tensor"], [None, "data", None]], r
    assert r["loss_max_diff"] < 1e-5 and r["loss_ptp"] > 0.1, r
    assert r["answers_equal"] and r["distinct_answers"] > 1, r


def test_shared_prefix_split_and_folded_scores_equal_one_at_a_time(world):
    """Rows sharing a task prefix: ``split_prefix`` finds it (chat template's <|bos|> <|user|> + 4 words), prefix +
    suffix rebuild every row, and the folded scores that run it once per adapter equal full-row evaluation."""
    from jaxmerge.tasks.encode import split_prefix
    tok, config, params, pool, examples = world
    task = [dict(e, prompt="alpha beta gamma delta " + e["prompt"]) for e in examples]
    for left, batch in ((False, encode(task, tok, None)), (True, encode(task, tok, None, with_answer=False))):
        prefix, rows = split_prefix(batch, left=left)
        assert len(prefix) == 6, len(prefix)
        assert rows["tokens"].shape[1] % 8 == 0 and rows["tokens"].shape[1] < batch["tokens"].shape[1]
        for i in range(len(task)):
            full = batch["tokens"][i][batch["attention_mask"][i] == 1]
            rest = rows["tokens"][i][rows["attention_mask"][i] == 1]
            np.testing.assert_array_equal(np.concatenate([prefix, rest]), full)
            if not left:  # the scored positions move with their tokens
                np.testing.assert_array_equal(np.flatnonzero(rows["loss_mask"][i]) + 6,
                                              np.flatnonzero(batch["loss_mask"][i]))
    batch = encode(task, tok, None)
    one = multi_eval.pool_losses_one_at_a_time(params, config, pool, batch)
    got = multi_eval.pool_losses(params, config, pool, batch, adapters_per_batch=3, examples_per_step=2,
                                 application="dense", progress=False)
    np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-5)
    idx = [5, 2, 0]
    got = multi_eval.pool_answers(params, config, tok, pool, task, indices=idx, adapters_per_batch=4,
                                  examples_per_step=3, max_new_tokens=4, application="dense", progress=False)
    want = [generate_answers(params, config, tok, task, adapters=multi_eval.single_adapter(pool, i),
                             batch_size=8, max_new_tokens=4) for i in idx]
    assert got == want and len({tuple(r) for r in got}) == 3
