"""Every method of the paper end to end on a tiny setup, through ``run_method``.

The setup (``make_setup``) is on disk so that subprocesses (kill-and-resume) rebuild it exactly: a
tiny transformers Llama (``conftest.hf_llama``) with a word-level chat tokenizer saved next to it,
loaded by ``jaxmerge.load_base``; a random pool of 6 LoRAs with mixed ranks and module sets, built as
``ModuleStack``s from a seed; a toy addition task (16 train / 8 validation / 8 test).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import hf_llama  # noqa: E402

from jaxmerge.adaptive import METHODS, method  # noqa: E402
from jaxmerge.stacks import ModuleStack, Pool  # noqa: E402

WORDS = ["what", "is", "plus", "?"] + [str(i) for i in range(20)]
SPECIALS = ["<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|eot|>", "<|user|>", "<|assistant|>", "<|system|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|eot|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")
POOL_SPEC = [  # (rank, alpha, modules, layers)
    (2, 4.0, ("q_proj", "v_proj"), (0, 1)), (4, 8.0, None, (0, 1)), (8, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"), (0, 1)),
    (3, 6.0, None, (1,)), (4, 4.0, ("q_proj", "v_proj", "down_proj"), (0, 1)), (2, 2.0, None, (0, 1))]
STEPS = 4


def save_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                  pad_token="<|pad|>", unk_token="<|unk|>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)


def make_pool(config, seed=0) -> Pool:
    """6 random LoRAs, mixed ranks and module sets (one lacks layer 0), B non-zero."""
    from jaxmerge.config import MODULES
    rng = np.random.default_rng(seed)
    L = config.num_hidden_layers
    mods = {}
    for m in MODULES:
        out, inp = config.module_shape(m)
        a_parts, b_parts, ranks, present = [], [], [], []
        for r, _, targets, layers in POOL_SPEC:
            has = targets is None or m in targets
            rr = r if has else 0
            a = rng.normal(0, 0.3, (L, rr, inp)).astype(np.float32)
            b = rng.normal(0, 0.3, (L, out, rr)).astype(np.float32)
            lay = np.isin(np.arange(L), layers) & has
            a_parts.append(a * lay[:, None, None]), b_parts.append(b * lay[:, None, None])
            ranks.append(rr), present.append(lay)
        mods[m] = ModuleStack(jnp.asarray(np.concatenate(a_parts, 1)), jnp.asarray(np.concatenate(b_parts, 2)),
                              jnp.asarray([al / r for r, al, _, _ in POOL_SPEC], jnp.float32),
                              jnp.asarray(np.stack(present)), tuple(ranks))
    return Pool(mods, tuple(f"lora{i}" for i in range(len(POOL_SPEC))))


def examples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 10, 2)
        out.append({"prompt": f"what is {a} plus {b} ?", "answer": str(a + b), "choices": None})
    return out


def make_setup(root: str):
    """(Base, Pool, TaskData) from ``root`` (written on first call)."""
    import jaxmerge
    from jaxmerge.tasks import Task, TaskData
    base_dir = os.path.join(root, "base")
    if not os.path.exists(os.path.join(base_dir, "tokenizer_config.json")):
        hf_llama(base_dir, vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=2, eos_token_id=3, pad_token_id=0)
        save_tokenizer(base_dir)
    base = jaxmerge.load_base(base_dir, dtype="float32")
    task = Task(name="toy-add", source="json:unused", max_new_tokens=3)
    data = TaskData(task, examples(16, 1), examples(8, 2), examples(8, 3))
    return base, make_pool(base.config), data


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
            from jaxmerge.adaptive.train import answer_loss_sums
            from jaxmerge.merge.coefficients import factored_adapters
            from jaxmerge.tasks import encode
            m_ = METHODS[name]
            ad = factored_adapters(pool.subset(c["indices"]), jnp.asarray(c["w"]), m_.granularity, m_.activation)
            s, cnt = answer_loss_sums(base.params, base.config, encode(data.validation, base.tokenizer, None), ad)
            np.testing.assert_allclose(float(s / cnt), r["best_val_loss"], rtol=1e-5)
    # the frozen base is bit-identical afterwards
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y), base.params, before)
    # a finished run returns its result instead of running again
    assert _run(name, setup, tmp_path / name) == r


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
