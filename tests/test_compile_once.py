"""Compile once per shape class: the row → adapter map and the learning rate are data, so pools of
different rank mixes padded to the same row count — and any learning rate — run the same compiled
training step and evaluation; padding changes no number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make_setup
from jaxmerge.adaptive import Tuning
from jaxmerge.adaptive.objectives import Coefficients
from jaxmerge.adaptive.train import fit
from jaxmerge.compiles import count_compiles
from jaxmerge.stacks import Pool, bucketed, pad_rows, rank_bucket
from jaxmerge.tasks import encode


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("compile_once")))


def _padded(pool: Pool, rows: int) -> Pool:
    return Pool({m: pad_rows(s, rows=rows) for m, s in pool.modules.items()}, pool.names)


def _fit(base, pool, train, val, lr):
    objective = Coefficients(base.config, "module", "leaky_relu")
    w0 = {"w": jnp.zeros((pool.num_adapters, pool.num_layers, len(pool.modules)))}
    return fit(objective, w0, {"params": base.params, "stacks": pool.modules}, train, val,
               Tuning(steps=4, eval_every=2, lr=lr), key=jax.random.key(0), progress=False)


def test_pools_of_one_bucket_share_the_compiled_step_and_padding_changes_nothing(setup):
    base, pool, data = setup
    enc = lambda ex: encode(ex, base.tokenizer, None)
    train, val = enc(data.train), enc(data.validation)
    a, b = pool.subset([0, 1, 2]), pool.subset([3, 4, 5])
    assert [tuple(a.modules[m].ranks) for m in a.modules] != [tuple(b.modules[m].ranks) for m in b.modules]
    rows = 16  # ≥ every module's Σr in both subsets
    with count_compiles() as c0:
        first = _fit(base, _padded(a, rows), train, val, lr=5e-2)
    assert c0.by_function.get("jit(train_step)") == 1 and c0.by_function.get("jit(eval_loss)") == 1, c0.by_function
    with count_compiles() as c:
        second = _fit(base, _padded(b, rows), train, val, lr=1e-2)  # another rank mix, another learning rate
    assert not [f for f in c.by_function if "train_step" in f or "eval_loss" in f], c.by_function
    assert np.abs(second.final["w"]).max() > 0 and not np.allclose(first.final["w"], second.final["w"])
    # the padded path trains exactly what the unpadded one does
    plain = _fit(base, b, train, val, lr=1e-2)
    np.testing.assert_allclose(second.final["w"], plain.final["w"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second.best_val_loss, plain.best_val_loss, rtol=1e-6)


def test_rank_buckets_are_few_and_padding_is_bounded():
    sizes = {rank_bucket(r) for r in range(600, 1400)}
    assert sizes == {768, 1024, 1536}  # the Σr of 30 of the real pool's LoRAs: a handful of compiled shapes
    for r in range(1, 5000):
        b = rank_bucket(r)
        assert r <= b <= max(r, int(np.ceil(1.5 * r)))
        assert r <= 16 or b in {1 << n for n in range(4, 14)} | {3 << n for n in range(3, 13)}


def test_bucketed_pool_keeps_its_ranks(setup):
    _, pool, _ = setup
    sub = pool.subset([1, 2, 4])
    padded = bucketed(sub)
    for m, s in padded.modules.items():
        assert s.a.shape[1] == rank_bucket(sub.modules[m].a.shape[1])
        assert tuple(s.ranks) == tuple(sub.modules[m].ranks)
        assert (np.asarray(s.owner)[int(sum(s.ranks)):] == -1).all()


def test_compiled_programs_are_released_near_the_mapping_limit(monkeypatch):
    """Each compiled XLA:CPU program holds memory mappings until dropped; ``release_compiled`` clears
    JAX's caches once the process is over the given fraction of vm.max_map_count, and not before: a
    program called again after a release compiles again."""
    from jaxmerge import compiles
    counts = compiles.mapping_count()
    if counts is None:
        pytest.skip("no /proc/self/maps on this platform")
    f = jax.jit(lambda x: jnp.tanh(x) * 2)
    x = jnp.ones(3)
    f(x)
    assert not compiles.release_compiled(fraction=1.0)  # far from the limit: nothing dropped
    with count_compiles() as kept:
        f(x)
    monkeypatch.setattr(compiles, "mapping_count", lambda: (counts[1], counts[1]))  # at the limit
    assert compiles.release_compiled()
    with count_compiles() as released:
        f(x)
    assert kept.total == 0 and released.total >= 1
