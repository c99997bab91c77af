"""Every method of the paper end to end on a tiny setup, through ``run_method``.

The setup (``make_setup``) is on disk so that subprocesses (kill-and-resume) rebuild it exactly: a
tiny transformers Llama (``conftest.hf_llama``) with a word-level chat tokenizer saved next to it,
loaded by ``jaxmerge.load_base``; a random pool of 6 LoRAs with mixed ranks and module sets, built as
``ModuleStack``s from a seed; a toy addition task (16 train / 8 validation / 8 test).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_setup

from jaxmerge.adaptive import METHODS, method  # noqa: E402

STEPS = 4










@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("adaptive_setup")))


def _run(name, setup, out, **kw):
    from jaxmerge.adaptive.run import run_method
    base, pool, data = setup
    kw.setdefault("steps", STEPS)
    kw.setdefault("eval_every", 2)
    return run_method(name, base, pool, data, k=kw.pop("k", 3), seed=0, out_dir=str(out), progress=False,
                      target_lora_steps=STEPS, **kw)


@pytest.mark.parametrize("name", ["ours", "adamerging", "lorahub-grad", "average", "ties", "tsv", "zero-shot"])
def test_method_end_to_end(name, setup, tmp_path):
    base, pool, data = setup
    before = jax.tree.map(np.array, base.params)
    r = _run(name, setup, tmp_path / name)
    for key in ("method", "k", "seed", "test_accuracy", "best_val_loss", "steps", "coefficients_path"):
        assert key in r, key
    assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["best_val_loss"])
    if name != "zero-shot":
        c = np.load(r["coefficients_path"])
        if METHODS[name].tuning.kind == "gradient":
            n, L, M = 3, base.config.num_hidden_layers, len(pool.modules)
            assert c["w"].shape == METHODS[name].coefficient_shape(n, L, M)
            for m in pool.modules:
                assert c[f"coef/{m}"].shape == (n, L)
            # the saved coefficients, applied eagerly to the pool in its load order, give the recorded
            # best validation loss (training ran under jit, where the module dict comes back sorted)
            from jaxmerge.adaptive.objectives import answer_loss_sums
            from jaxmerge.merge.coefficients import factored_adapters
            from jaxmerge.tasks import encode
            m_ = METHODS[name]
            ad = factored_adapters(pool.subset(c["indices"]), jnp.asarray(c["w"]), m_.granularity, m_.activation)
            s, cnt = answer_loss_sums(base.params, base.config, encode(data.validation, base.tokenizer, None), ad)
            np.testing.assert_allclose(float(s / cnt), r["best_val_loss"], rtol=1e-5)
    # the frozen base is bit-identical afterwards
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y), base.params, before)
    # a finished run returns its result instead of running again, and says it was reused
    assert _run(name, setup, tmp_path / name) == {**r, "reused": True}


@pytest.fixture(scope="module")
def target_dir(setup, tmp_path_factory):
    """The target-task LoRA trained by the `target-lora` method (shared by the tests that need one)."""
    r = _run("target-lora", setup, tmp_path_factory.mktemp("target"))
    assert r["method"] == "target-lora" and 0.0 <= r["test_accuracy"] <= 1.0
    return r["adapter_path"]


def test_granularities_give_their_shapes(setup, tmp_path):
    base, pool, _ = setup
    L, M = base.config.num_hidden_layers, len(pool.modules)
    want = {"model": (3,), "layer": (3, L), "sublayer": (3, L, 2), "module": (3, L, M)}
    for g, shape in want.items():  # model and module run end to end above (lorahub-grad, ours, …)
        assert method("adamerging", granularity=g).coefficient_shape(3, L, M) == shape
    r = _run("adamerging", setup, tmp_path / "sub", granularity="sublayer", steps=2, selection="random")
    assert np.load(r["coefficients_path"])["w"].shape == want["sublayer"]


def test_pi_tuning_joint_state_and_softmax(setup, target_dir, tmp_path):
    base, pool, _ = setup
    r = _run("pi-tuning", setup, tmp_path / "pi", k=3, with_target_lora=True, target_lora=target_dir)
    c = np.load(r["coefficients_path"])
    n = 1 + 3 + 1  # target, k selected, fresh LoRA
    assert c["w"].shape == (n, base.config.num_hidden_layers, len(pool.modules))
    assert r["merged_names"][0].startswith("target:") and r["merged_names"][-1] == "fresh"
    for m in pool.modules:  # softmax over the adapters: each slot sums to one
        np.testing.assert_allclose(c[f"coef/{m}"].sum(0), 1.0, rtol=1e-6)
        # trainable A: the target's 64 rows, the selected LoRAs' rows, the fresh LoRA's 64 rows
        assert c[f"a/{m}"].shape[1] == 64 + sum(pool.modules[m].ranks[i] for i in r["indices"]) + 64
    assert r["selection"] == "quasi_fim" and len(r["indices"]) == 3


def test_lorahub_gradient_free_repeats_and_improves(setup, tmp_path):
    r1 = _run("lorahub", setup, tmp_path / "a", budget=24)
    r2 = _run("lorahub", setup, tmp_path / "b", budget=24)
    assert r1["search_best_loss"] < r1["search_init_loss"]  # the search found better coefficients
    assert r1["search_best_loss"] == r2["search_best_loss"]
    np.testing.assert_array_equal(np.load(r1["coefficients_path"])["w"], np.load(r2["coefficients_path"])["w"])
    assert np.all(np.abs(np.load(r1["coefficients_path"])["w"]) <= 1.5)


def test_with_target_lora_and_random_pool(setup, target_dir, tmp_path):
    assert os.path.exists(os.path.join(target_dir, "adapter_config.json"))
    r = _run("ours", setup, tmp_path / "o", with_target_lora=True, selection="random", target_lora=target_dir,
             random_pool=True)
    assert r["merged_names"][0].startswith("target:") and r["num_merged"] == 4 and r["random_pool"]


@pytest.mark.parametrize("name", ["ours", "ties"])
def test_methods_run_on_a_tied_embedding_base(name, tmp_path):
    """SmolLM2 / Llama-3.2-style bases: no lm_head tensor; the head is the embedding."""
    setup = make_setup(str(tmp_path / "tied"), tied=True)
    base = setup[0]
    assert base.config.tie_word_embeddings and "lm_head" not in base.params
    r = _run(name, setup, tmp_path / name)
    assert 0.0 <= r["test_accuracy"] <= 1.0 and np.isfinite(r["best_val_loss"])
