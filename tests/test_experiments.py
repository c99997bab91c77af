"""The experiment entry points on the small embedded world: the pool loader on the world's pool,
every method name through ``python -m experiments.adaptive``, and a resumable sweep + render."""

import json
import os

import numpy as np
import pytest

import jaxmerge
from experiments import adaptive, sweep
from experiments.world import small_world

METHODS = sorted(jaxmerge.adaptive.METHODS)
RESULT_KEYS = ("method", "task", "k", "with_target_lora", "seed", "test_accuracy", "zero_shot_accuracy",
               "best_val_loss", "steps", "coefficients_path")


@pytest.fixture(scope="module")
def world():
    return small_world()


def test_world_pool_goes_through_the_pool_loader(world):
    base = jaxmerge.load_base(world.base_dir, dtype="float32", tokenizer=False)
    pool, report = jaxmerge.load_pool(world.pool_dirs, base.config, progress=False)
    rows = {os.path.abspath(r["source"]): r for r in report.rows}
    assert len(rows) == len(world.pool_dirs)
    for d in world.pool_dirs:
        r = rows[os.path.abspath(d)]
        if d in world.broken:
            assert not r["kept"] and world.broken[d].lower() in r["reason"].lower(), r
        else:
            assert r["kept"], r
    assert pool.num_adapters == len(world.pool_dirs) - len(world.broken)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reference"))


FAST = ["--world", "small", "--steps", "2", "--target-lora-steps", "2", "--k", "3", "--quiet"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_through_the_cli(world, method, tmp_path, reference_dir, capsys):
    out = tmp_path / method
    args = ["--method", method, "--out", str(out), "--reference-dir", reference_dir, *FAST]
    if method in ("ours", "average"):
        args.append("--with-target-lora")
    assert adaptive.main(args) == 0
    r = json.loads((out / "result.json").read_text())
    for key in RESULT_KEYS:
        assert key in r, key
    assert r["method"] == method and r["seed"] == 0 and 0.0 <= r["test_accuracy"] <= 1.0
    if method not in ("zero-shot", "target-lora"):
        assert r["k"] == 3
        assert os.path.exists(r["coefficients_path"])
    if method in ("ours", "average"):
        assert r["with_target_lora"] is True and r["num_merged"] == 4  # target LoRA in slot 0
    # Running again with the same --out returns the finished result instead of recomputing it, and says so.
    capsys.readouterr()
    assert adaptive.main(args) == 0
    assert "reused the finished run in" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == r["test_accuracy"]


def test_sweep_resumes_and_renders(world, tmp_path):
    specs = sweep.grid("table2", [world.default_task], [0], methods=["average", "ties"])
    assert len(specs) == 4
    out = str(tmp_path / "sweep")
    sweep.run_sweep(specs[:2], out, world_size="small", steps=2, target_lora_steps=2, progress=False)
    assert len(sweep.done_keys(os.path.join(out, "results.jsonl"))) == 2
    sweep.run_sweep(specs, out, world_size="small", steps=2, target_lora_steps=2, progress=False)
    lines = open(os.path.join(out, "results.jsonl")).read().splitlines()
    assert len(lines) == 4  # the first two were not run again
    from experiments.render import render
    written = render(out, out)
    table = open(os.path.join(out, "table2.md")).read()
    assert "| TIES (" in table and "| Simple avg. (" in table
    assert os.path.getsize(os.path.join(out, "fig2.png")) > 1000
    assert any(p.endswith("fig2.png") for p in written)


def test_coefficient_shares_sum_to_one(tmp_path):
    from experiments.render import coefficient_shares
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", **{"coef/q_proj": rng.normal(size=(5, 3)), "coef/v_proj": rng.normal(size=(5, 3))})
    s = coefficient_shares(str(tmp_path / "c.npz"))
    assert s.shape == (5,) and abs(s.sum() - 1) < 1e-9


def test_render_refuses_mixed_pools(tmp_path):
    from experiments.render import render
    from jaxmerge.errors import UserError
    row = {"spec": {"method": "average", "task": "t", "with_target_lora": False, "seed": 0, "k": None,
                    "selection": None, "random_pool": False, "key": "a"}, "test_accuracy": 0.5,
           "zero_shot_accuracy": 0.1, "target_lora_accuracy": 0.6, "world": "w-1", "pool_identity": {"sha256": "x"}}
    other = {**row, "spec": {**row["spec"], "key": "b", "with_target_lora": True}, "world": "w-2",
             "pool_identity": {"sha256": "y"}}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n")
    with pytest.raises(UserError, match="2 differently built pools.*w-1, w-2"):
        render(str(tmp_path), str(tmp_path / "to"))
    assert not (tmp_path / "to").exists()
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**other, "pool_identity": {"sha256": "x"}}) + "\n")
    assert any(p.endswith("table2.md") for p in render(str(tmp_path), str(tmp_path / "to")))


def test_study_table_beside_the_paper():
    from experiments.study_smollm2 import beside_paper
    row = lambda t, m, tl, a: {"spec": {"task": t, "method": m, "with_target_lora": tl, "k": None, "random_pool": False,
                                        "selection": None, "seed": 0},
                               "test_accuracy": a, "zero_shot_accuracy": 0.25, "target_lora_accuracy": 0.5}
    table = beside_paper([row("sports_understanding", "ours", False, 0.75),
                          row("tracking_shuffled_objects_three_objects", "ours", True, 0.375)])
    # the paper's Llama-3.1-8B numbers (jaxmerge/data/paper_tasks.json) beside this world's
    assert "| sports_understanding | 0.250 | 0.733 | 0.500 | 0.566 | 0.750 / – |" in table
    assert "(paper: tracking_shuffled_objects) | 0.250 | 0.224 | 0.500 | 0.184 | – / 0.375 |" in table


def test_study_publish_renders_the_tracked_folder(tmp_path):
    """``run --render-to`` publishes after every run: table, figures, paper.md and the results copied as they are."""
    from experiments.study_smollm2 import publish
    row = lambda m, tl, a: {"spec": {"method": m, "task": "sports_understanding", "with_target_lora": tl, "seed": 0,
                                     "k": None, "selection": None, "random_pool": False, "key": f"{m}-{tl}"},
                            "test_accuracy": a, "zero_shot_accuracy": 0.5, "target_lora_accuracy": 0.625,
                            "world": "w-1", "pool_identity": {"sha256": "x"}}
    text = "".join(json.dumps(r) + "\n" for r in (row("ours", False, 0.375), row("ours", True, 0.75)))
    (tmp_path / "results.jsonl").write_text(text)
    written = publish(str(tmp_path), str(tmp_path / "to"))
    assert {os.path.basename(p) for p in written} >= {"table2.md", "paper.md", "results.jsonl"}
    assert (tmp_path / "to" / "results.jsonl").read_text() == text
    assert "| sports_understanding | 0.500 | 0.733 | 0.625 | 0.566 | 0.375 / 0.750 |" in (tmp_path / "to" / "paper.md").read_text()


def test_study_fig3_reinitialises_pools_only_beside_the_target_lora():
    from experiments.study_smollm2 import FIG3_KS, part
    specs = part("fig3", ["sports_understanding", "hyperbaton"])  # hyperbaton is not a fig3 task
    assert {s.task for s in specs} == {"sports_understanding"}
    assert len({s.key for s in specs}) == len(specs) == 5 * len(FIG3_KS)
    assert all(s.with_target_lora for s in specs if s.random_pool)
    assert {(s.selection, s.with_target_lora) for s in specs if not s.random_pool} == \
        {("evaluation", False), ("evaluation", True), ("random", False), ("random", True)}
    # with the budget's k, the evaluation-selected point is Table 2's Ours run, under Table 2's key
    from experiments.sweep import Spec
    shared = part("fig3", ["sports_understanding"], k=10)
    assert len({s.key for s in shared}) == len(shared) == 5 * len(FIG3_KS)
    assert {Spec("ours", "sports_understanding", tl, 0) for tl in (False, True)} <= set(shared)
    assert not [s for s in shared if s.k == 10 and s.selection == "evaluation"]


def test_fig3_reads_table2_ours_as_its_own_k_point_on_fig3_tasks_only():
    from experiments.render import fig3_rows
    row = lambda task, k, sel, acc, rk=None: {"spec": {"method": "ours", "task": task, "with_target_lora": False,
                                                       "seed": 0, "k": k, "selection": sel, "random_pool": False},
                                              "k": rk or k, "test_accuracy": acc}
    rows = [row("a", 5, "evaluation", 0.1), row("a", None, None, 0.2, rk=10), row("b", None, None, 0.3, rk=10)]
    got = fig3_rows(rows)
    assert sorted((r["spec"]["task"], r["spec"]["k"], r["spec"]["selection"], r["test_accuracy"]) for r in got) == \
        [("a", 5, "evaluation", 0.1), ("a", 10, "evaluation", 0.2)]
