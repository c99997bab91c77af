"""``jaxmerge merge``: choices and flags come from the registry; a bad method or parameter is one named line
(exit 2) before anything is read — the base below does not exist, so any error about it would mean the
arguments were checked too late; recipe defaults apply (TIES density 0.8). And every registry entry has
its oracle test."""

from __future__ import annotations

import json
import os
import re

import pytest

from jaxmerge.cli import main
from jaxmerge.merge import registry

HERE = os.path.dirname(os.path.abspath(__file__))

# method → the test that proves it against the real library (file::function)
ORACLES = {
    "average": "test_merge_static.py::test_magnitude_prune_and_task_arithmetic_equal_peft",
    "linear": "test_merge_peft_combinations.py::test_cat_is_linear_exactly",
    "ties": "test_merge_static.py::test_ties_equals_peft",
    "magnitude_prune": "test_merge_static.py::test_magnitude_prune_and_task_arithmetic_equal_peft",
    "dare_linear": "test_merge_static.py::test_dare_equals_peft_with_the_same_mask",
    "dare_ties": "test_merge_static.py::test_dare_equals_peft_with_the_same_mask",
    "tsv": "test_merge_static.py::test_tsv_equals_dense_numpy_float64",
    "factor_linear": "test_merge_peft_combinations.py::test_peft_linear_is_factor_linear",
    "breadcrumbs": "test_merge_mergekit.py::test_mergekit_methods_equal_jaxmerge",
    "breadcrumbs_ties": "test_merge_mergekit.py::test_mergekit_methods_equal_jaxmerge",
    "della": "test_merge_mergekit.py::test_mergekit_methods_equal_jaxmerge",
    "della_linear": "test_merge_mergekit.py::test_mergekit_methods_equal_jaxmerge",
    "ties_mergekit": "test_merge_mergekit.py::test_mergekit_methods_equal_jaxmerge",
}


def test_every_registered_method_has_an_oracle_test():
    assert sorted(ORACLES) == sorted(registry.names()), "a method without an oracle test (or a stale entry)"
    for method, ref in ORACLES.items():
        path, name = ref.split("::")
        with open(os.path.join(HERE, path)) as f:
            assert re.search(rf"^def {name}\(", f.read(), re.M), ref
        if path == "test_merge_mergekit.py":
            with open(os.path.join(HERE, path)) as f:
                assert f'"{method}"' in f.read(), f"{method} is not among the mergekit cases"


BASE = ["merge", "--base", "/nonexistent/base", "--adapters", "/nonexistent/ads", "--out", "/nonexistent/out"]


@pytest.mark.parametrize("extra,message", [
    (["--method", "ties", "--tsv-k", "3"], "merge method 'ties' does not take tsv_k (it takes density, sign)"),
    (["--method", "dare_linear"], "merge method 'dare_linear' needs density (it has no recipe default)"),
    (["--method", "ties", "--density", "1.5"], "merge parameter density=1.5: must be ≤ 1"),
    (["--method", "della", "--density", "0.1"], "della: density ± epsilon must lie in (0, 1)"),
    (["--method", "average", "--weights", "1", "2"], "merge method 'average' takes no weights"),
    (["--method", "ties", "--rank", "4"], "rank 4: only for the peft format"),
    (["--method", "linear", "--layers-per-step", "0"], "--layers-per-step 0: must be ≥ 1"),
])
def test_bad_arguments_fail_in_one_line_before_anything_is_read(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(BASE + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"jaxmerge merge: error: {message}" or (err.startswith("jaxmerge merge: error: ") and message in err), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_unknown_method_lists_the_registered_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(BASE + ["--method", "dare"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'dare'" in err and all(n in err for n in registry.names())


def test_ties_without_density_uses_the_recipe(tmp_path, tiny_llama_dir):
    from helpers import write_adapter
    path, model = tiny_llama_dir
    write_adapter(model, tmp_path / "ads" / "a", seed=1, r=4)
    write_adapter(model, tmp_path / "ads" / "b", seed=2, r=2, target_modules=["q_proj"])
    out = tmp_path / "out"
    assert main(["merge", "--base", path, "--adapters", str(tmp_path / "ads"), "--method", "ties", "--out", str(out),
                 "--quiet"]) == 0
    merged = json.loads((out / "merge.json").read_text())
    assert merged["params"] == {"density": 0.8, "sign": "total"} and merged["weights"][0][0] == 1.0
    assert json.loads((out / "report.json").read_text())["adapters"][0]["kept"]
    with pytest.raises(SystemExit):  # the output exists: refused, not overwritten
        main(["merge", "--base", path, "--adapters", str(tmp_path / "ads"), "--out", str(out), "--quiet"])
    assert main(["merge", "--base", path, "--adapters", str(tmp_path / "ads"), "--out", str(out), "--quiet",
                 "--overwrite"]) == 0
    assert json.loads((out / "merge.json").read_text())["method"] == "average"
