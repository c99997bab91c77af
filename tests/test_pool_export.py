"""Exports load in the real libraries (transformers ``from_pretrained``; peft ``PeftModel.from_pretrained``
on the base) and give the in-memory merge's logits (1e-4); truncation from factors equals the dense SVD."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import hf_llama
from jaxmerge.lora import Dense, Factored
from jaxmerge.pool import load_pool
from jaxmerge.merge import registry
from jaxmerge.merge.static import factored_window
from jaxmerge.pool.export import export_model, export_peft, truncate_factored
from helpers import write_adapter

TOL = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = hf_llama(root / "base")
    write_adapter(model, root / "ads" / "a", seed=1, r=4)
    write_adapter(model, root / "ads" / "b", seed=2, r=8, lora_alpha=4, use_rslora=True,
                  target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[0])
    write_adapter(model, root / "ads" / "c", seed=3, r=2, target_modules=["q_proj", "gate_proj"])
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    pool, report = load_pool([root / "ads"], base.config, progress=False)
    assert pool.num_adapters == 3, report.summary()
    w = registry.resolve_weights("linear", 3, pool.num_layers, [0.5, -1.0, 2.0])
    factored = {m: factored_window(s, registry.get("linear"), None, w) for m, s in pool.modules.items()}
    dense = {m: f.dense() for m, f in factored.items()}
    tokens = np.random.default_rng(1).integers(3, 128, (2, 16))
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tokens), base.config,
                                       adapters={m: Dense(d) for m, d in dense.items()}))
    return root, base, factored, dense, tokens, ours


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(np.array(tokens))).logits.float().numpy()


def test_folded_checkpoint_loads_in_transformers(merged, tmp_path):
    root, base, _, dense, tokens, ours = merged
    from transformers import AutoModelForCausalLM
    export_model(base, dense, str(tmp_path / "model"))
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    np.testing.assert_allclose(_torch_logits(m, tokens), ours, **TOL)
    reloaded = jaxmerge.load_base(str(tmp_path / "model"), dtype="float32")  # and back into jaxmerge
    np.testing.assert_allclose(np.asarray(jaxmerge.forward(reloaded.params, jnp.asarray(tokens), base.config)),
                               ours, **TOL)


def _peft_logits(root, adapter_dir, tokens):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    return _torch_logits(PeftModel.from_pretrained(m, adapter_dir).eval(), tokens)


def test_exact_peft_export_loads_in_peft(merged, tmp_path):
    root, base, factored, _, tokens, ours = merged
    export_peft(factored, base.config, str(tmp_path / "peft"))
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    total = max(f.a.shape[1] for f in factored.values())
    assert cfg["r"] == cfg["lora_alpha"] == total and cfg["target_modules"] == sorted(factored)
    np.testing.assert_allclose(_peft_logits(root, tmp_path / "peft", tokens), ours, **TOL)


def test_exact_peft_export_from_dense(merged, tmp_path):
    root, base, _, dense, tokens, ours = merged
    export_peft(dense, base.config, str(tmp_path / "peft_dense"))
    np.testing.assert_allclose(_peft_logits(root, tmp_path / "peft_dense", tokens), ours, **TOL)


def test_truncated_peft_export_equals_best_rank_k(merged, tmp_path):
    root, base, factored, _, tokens, _ = merged
    k = 3
    for m, f in factored.items():  # QR route = dense SVD's best rank-k approximation
        B, A = truncate_factored(f, k)
        u, s, vt = np.linalg.svd(np.asarray(f.dense(), np.float64), full_matrices=False)
        best = np.einsum("lok,lk,lkd->lod", u[:, :, :k], s[:, :k], vt[:, :k])
        np.testing.assert_allclose(np.asarray(jnp.einsum("lok,lkd->lod", B, A)), best, rtol=1e-4, atol=1e-5)
    export_peft(factored, base.config, str(tmp_path / "peft_k"), rank=k)
    cfg = json.loads((tmp_path / "peft_k" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == k
    trunc = {m: Dense(jnp.einsum("lok,lkd->lod", *truncate_factored(f, k))) for m, f in factored.items()}
    want = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters=trunc))
    np.testing.assert_allclose(_peft_logits(root, tmp_path / "peft_k", tokens), want, **TOL)


def test_truncation_beyond_min_dim_uses_dense_svd():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 12, 6)), rng.normal(size=(1, 5, 12))   # R=12 ≥ min(5, 6)
    f = Factored(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.ones((1, 12)))
    B, A = truncate_factored(f, 2)
    u, s, vt = np.linalg.svd(b[0] @ a[0])
    np.testing.assert_allclose(np.asarray(B[0] @ A[0]), (u[:, :2] * s[:2]) @ vt[:2], rtol=1e-4, atol=1e-4)


def test_peft_export_with_own_alpha_round_trips_and_checks_multipliers(merged, tmp_path):
    """``lora_alpha=``: a trained LoRA's own factors and alpha are written as they are (PEFT reloads
    the same delta; our reader gets back the same A, B and scale); inconsistent input is refused."""
    from jaxmerge.adaptive.space import LoraSpec
    from jaxmerge.adaptive.target_lora import load_target, lora_adapters
    root, base, _, _, tokens, _ = merged
    rng = np.random.default_rng(5)
    spec = LoraSpec(rank=4, alpha=8.0)
    lora = {"a": {}, "b": {}}
    for m in ("q_proj", "down_proj"):
        o, d = base.config.module_shape(m)
        lora["a"][m] = jnp.asarray(rng.normal(0, 0.2, (base.config.num_hidden_layers, 4, d)), jnp.float32)
        lora["b"][m] = jnp.asarray(rng.normal(0, 0.2, (base.config.num_hidden_layers, o, 4)), jnp.float32)
    adapters = lora_adapters(lora, spec.scale)
    export_peft(adapters, base.config, str(tmp_path / "own"), lora_alpha=spec.alpha)
    cfg = json.loads((tmp_path / "own" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    back = load_target(str(tmp_path / "own"), base.config)  # the pool loader reads it back
    for m in lora["a"]:
        assert float(back.modules[m].scale[0]) == spec.scale
        np.testing.assert_array_equal(np.asarray(back.modules[m].a), np.asarray(lora["a"][m]))
        np.testing.assert_array_equal(np.asarray(back.modules[m].b), np.asarray(lora["b"][m]))
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tokens), base.config, adapters=adapters))
    np.testing.assert_allclose(_peft_logits(root, tmp_path / "own", tokens), ours, **TOL)
    with pytest.raises(ValueError, match="alpha/r"):
        export_peft(adapters, base.config, str(tmp_path / "bad"), lora_alpha=4.0)
    with pytest.raises(ValueError, match="rank="):
        export_peft(adapters, base.config, str(tmp_path / "bad"), rank=2, lora_alpha=8.0)
    with pytest.raises(ValueError, match="Factored"):
        export_peft({m: a.dense() for m, a in adapters.items()}, base.config, str(tmp_path / "bad"), lora_alpha=8.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float32])
def test_fold_product_equals_torch_fold_of_the_product(dtype):
    """W + b·a in row blocks (the streamed linear merge's fold) against torch: the product in float64, the sum
    rounded once to the output dtype; rows not a multiple of the block, so the last block is partial."""
    from jaxmerge.pool.export import fold_product
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (600, 96)).astype(dtype)
    b, a = rng.normal(0, 1e-2, (600, 12)).astype(np.float32), rng.normal(0, 1e-2, (12, 96)).astype(np.float32)
    got = fold_product(w, b, a, dtype, rows=256)
    assert got.dtype == np.dtype(dtype) and got.shape == w.shape
    tw = torch.from_numpy(np.asarray(w, np.float32)).double()
    want = (tw + torch.from_numpy(b).double() @ torch.from_numpy(a).double()).float()
    want = want.to(torch.bfloat16).float() if dtype == jnp.bfloat16 else want
    err = np.abs(np.asarray(got, np.float32) - want.numpy())
    # float32: the product's rounding only; bf16: at most one bf16 step of the result (a tie may round apart)
    bound = 1e-7 if dtype == np.float32 else np.abs(want.numpy()) * 2 ** -8 + 1e-30
    assert (err <= bound).all(), err.max()
