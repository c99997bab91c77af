"""A new user's first hour: runs identified by everything that determines them, shared references,
bad input caught before anything loads (one line, exit 2), ``jaxmerge doctor``, and the README's Python
example running as written."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments import adaptive
from experiments.world import small_world

FAST = ["--world", "small", "--steps", "2", "--target-lora-steps", "2", "--k", "3", "--quiet"]


@pytest.fixture(scope="module")
def world():
    return small_world()


def _main(args, capsys):
    """(exit code, stdout, stderr) of ``python -m experiments.adaptive ARGS``."""
    capsys.readouterr()
    try:
        code = adaptive.main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_different_run_under_the_same_out_is_refused_naming_the_difference(world, tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["--method", "average", "--out", out, *FAST]
    assert _main(args, capsys)[0] == 0
    first = json.load(open(os.path.join(out, "result.json")))
    assert {"base", "pool", "task", "method", "seed", "settings", "jaxmerge"} <= set(first["identity"])
    code, stdout, _ = _main(args, capsys)
    assert code == 0 and "reused the finished run in" in stdout

    code, _, err = _main([*args, "--dtype", "bfloat16"], capsys)
    assert code == 2 and "base.dtype" in err and "float32" in err and "bfloat16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    good = world.good_pool_dirs
    code, _, err = _main([*args, "--pool", *good[:5]], capsys)
    assert code == 2 and "pool.sha256" in err

    other = tmp_path / "other-base"  # the same config, one weight changed: a different base
    shutil.copytree(world.base_dir, other)
    from jaxmerge.safetensors_io import SafeFile, save
    f = str(other / "model.safetensors")
    tensors = {k: np.array(v) for k, v in ((k, SafeFile(f)[k]) for k in SafeFile(f).keys())}
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * np.float32(1.5)
    save(f, tensors)
    code, _, err = _main([*args, "--base", str(other), "--pool", *world.pool_dirs, "--task", world.default_task], capsys)
    assert code == 2 and "base.weights_fingerprint" in err

    code, _, err = _main([*args, "--seed", "1"], capsys)  # another seed is another run, of course
    assert code == 2 and "seed: 0 → 1" in err
    assert json.load(open(os.path.join(out, "result.json"))) == first  # nothing was overwritten


def test_a_moved_cache_with_the_same_content_is_the_same_run(world, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    args = ["--method", "average", "--out", out, *FAST]
    assert _main(args, capsys)[0] == 0
    moved = tmp_path / "moved"
    shutil.copytree(world.root, moved / os.path.basename(world.root))
    monkeypatch.setenv("JAXMERGE_CACHE", str(moved))
    import experiments.world as W
    monkeypatch.setattr(W, "_SMALL", {})
    code, stdout, err = _main(args, capsys)
    assert code == 0 and "reused the finished run in" in stdout, err


def test_the_target_lora_reference_is_trained_once_and_shared(world, tmp_path, capsys):
    refs = str(tmp_path / "refs")
    a = ["--method", "ours", "--with-target-lora", "--out", str(tmp_path / "a"), "--reference-dir", refs, *FAST]
    assert _main(a, capsys)[0] == 0
    made = [d for d in os.listdir(refs) if "target-lora" in d and not d.startswith(".")]
    assert len(made) == 1
    trained = os.path.join(refs, made[0], "result.json")
    stamp = os.path.getmtime(trained)
    b = ["--method", "average", "--references", "all", "--out", str(tmp_path / "b"), "--reference-dir", refs, *FAST]
    code, stdout, _ = _main(b, capsys)
    assert code == 0 and os.path.getmtime(trained) == stamp  # read back, not retrained
    r = json.load(open(tmp_path / "b" / "result.json"))
    assert r["references"]["target-lora"] == os.path.join(refs, made[0])
    assert r["target_lora_accuracy"] == json.load(open(trained))["test_accuracy"]
    # a method that needs no target LoRA and no cached one: the table says it was not computed
    c = ["--method", "average", "--out", str(tmp_path / "c"), "--reference-dir", str(tmp_path / "fresh"), *FAST]
    code, stdout, _ = _main(c, capsys)
    assert code == 0 and "not computed" in stdout
    assert not [d for d in os.listdir(tmp_path / "fresh") if "target-lora" in d and not d.startswith(".")]


BAD = {  # argument → what the one-line message must name
    ("--k", "0"): "--k 0",
    ("--steps", "0"): "--steps 0",
    ("--task", "no_such_task"): "--task no_such_task",
    ("--pool", "/no/such/adapters"): "--pool /no/such/adapters",
    ("--base", "./no/such/base"): "--base ./no/such/base",
}


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_arguments_fail_in_one_line_before_anything_loads(bad, capsys, monkeypatch):
    import experiments.world as W
    import jaxmerge
    boom = lambda *a, **k: pytest.fail("loaded something before checking the arguments")
    monkeypatch.setattr(W, "get_world", boom)
    monkeypatch.setattr(jaxmerge, "load_base", boom)
    code, _, err = _main(["--method", "ours", *bad], capsys)
    assert code == 2
    assert err.startswith("experiments.adaptive: error: ") and BAD[bad] in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_doctor_reports_versions_devices_caches_and_optional_pieces(capsys):
    from jaxmerge.cli import main
    assert main(["doctor", "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["packages"]["jax"] and f["packages"]["transformers"] and f["devices"]
    assert f["caches"]["jaxmerge (JAXMERGE_CACHE)"] == os.path.abspath(os.environ["JAXMERGE_CACHE"])
    assert f["optional"]["torch"]["importable"] is True  # the test extra is installed here
    assert main(["doctor"]) == 0 and "jax backend" in capsys.readouterr().out


def test_the_readme_python_example_runs_as_written(world):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 — the README's own code
    assert scope["logits"].shape[-1] == scope["base"].config.vocab_size


@pytest.mark.parametrize("module,args", [
    ("experiments.adaptive", ["--method", "average", *FAST]),
    ("experiments.sweep", ["run", "--grid", "table2", "--methods", "average", "--seeds", "0", "--world", "small",
                           "--steps", "2", "--target-lora-steps", "2", "--quiet"]),
])
def test_quiet_means_quiet(world, tmp_path, module, args):
    """--quiet: no progress bars and no datasets split messages, with a datasets cache that must generate
    the splits anew (so datasets would print them)."""
    import subprocess
    import sys
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    extra = ["--out", str(tmp_path / "out")] + (["--tasks", world.default_task] if module.endswith("sweep") else [])
    r = subprocess.run([sys.executable, "-m", module, *args, *extra], env=env, capture_output=True, text=True,
                       timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    noise = [line for line in (r.stdout + r.stderr).replace("\r", "\n").splitlines()
             if "Generating" in line or "examples/s" in line or "%|" in line or "it/s" in line]
    assert noise == [], noise[:5]
