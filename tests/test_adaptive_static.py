"""The static merges of the paper inside ``run_method`` (average, ties, tsv — and any other registered
merge by name) merge exactly what ``merge_pool`` gives for the selected LoRAs with the recipe's weights
and parameters, written out here by hand: average 1/k, TIES density 0.8 sign "total" weight 1, TSV
top 8 weight 1/k (REFERENCE §1). The merged deltas are compared bit for bit, and the recorded weights,
selection and validation loss are checked against them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmerge.merge as merge_pkg
from helpers import make_setup
from jaxmerge.lora import Dense

K = 4
RECIPE = {  # method → (weights for k LoRAs, merge_pool keyword arguments), spelled out from the paper
    "average": (None, {}),
    "ties": (np.ones(K, np.float32), dict(density=0.8, sign="total")),
    "tsv": (np.full(K, 1.0 / K, np.float32), dict(tsv_k=8)),
    "dare_ties": (np.ones(K, np.float32), dict(density=0.5, sign="total")),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("static_setup")))


@pytest.mark.parametrize("name", list(RECIPE))
def test_static_methods_merge_what_merge_pool_gives_with_the_recipe(name, setup, tmp_path, monkeypatch):
    from jaxmerge.adaptive.run import _loss, run_method
    from jaxmerge.tasks import encode
    base, pool, data = setup
    calls = []
    real = merge_pkg.merge_pool

    def spy(p, method, **kw):
        out = real(p, method, **kw)
        calls.append((p, method, kw, out))
        return out

    monkeypatch.setattr(merge_pkg, "merge_pool", spy)
    extra = {"density": 0.5} if name == "dare_ties" else {}
    r = run_method(name, base, pool, data, k=K, seed=0, out_dir=str(tmp_path / name), progress=False, **extra)
    assert len(calls) == 1
    merged, method, kw, got = calls[0]
    assert method == name
    idx = np.asarray(r["indices"])
    assert list(merged.names) == [pool.names[i] for i in idx] and len(set(idx.tolist())) == K
    weights, params = RECIPE[name]
    want = real(pool.subset(idx), name, weights=weights, key=kw.get("key"), **params)
    for m in pool.modules:
        np.testing.assert_array_equal(np.asarray(got[m]), np.asarray(want[m]), err_msg=m)
    recorded = np.load(r["coefficients_path"])["weights"]
    np.testing.assert_allclose(recorded, np.full(K, 1.0 / K) if weights is None else weights, rtol=1e-7)
    # the reported validation loss is the one of exactly these deltas
    val = encode(data.validation, base.tokenizer, None, system=data.task.system)
    loss = _loss(base.params, {m: Dense(d) for m, d in want.items()}, val, base.config)
    assert r["best_val_loss"] == pytest.approx(loss, rel=1e-6)
    assert jnp.isfinite(loss) and 0.0 <= r["test_accuracy"] <= 1.0
