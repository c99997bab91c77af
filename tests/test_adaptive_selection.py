"""LoRA selection: every similarity kind against a dense NumPy computation over the full deltas."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmerge.adaptive import selection
from jaxmerge.stacks import ModuleStack, Pool

SHAPES = {"q_proj": (12, 10), "v_proj": (6, 10), "down_proj": (10, 14)}  # (out, in)
L = 3


def random_pool(seed=0, n=7, shapes=SHAPES, ranks=(2, 4, 2, 1, 3, 4, 2), lacks=((3, "down_proj"), (5, "v_proj")),
                absent_layers=((2, 1),)):
    """N adapters with mixed ranks; adapter 3 lacks down_proj, 5 lacks v_proj, adapter 2 lacks layer 1."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32)
    modules = {}
    for m, (o, d) in shapes.items():
        rk = tuple(0 if (i, m) in lacks else ranks[i] for i in range(n))
        present = np.ones((n, L), bool)
        a_parts, b_parts = [], []
        for i, r in enumerate(rk):
            a = rng.normal(size=(L, r, d)).astype(np.float32)
            b = rng.normal(size=(L, o, r)).astype(np.float32)
            for (ai, li) in absent_layers:
                if ai == i:
                    a[li], b[li], present[i, li] = 0, 0, False
            a_parts.append(a)
            b_parts.append(b)
        modules[m] = ModuleStack.from_ranks(np.concatenate(a_parts, 1), np.concatenate(b_parts, 2), scale, present, rk)
    return Pool(modules, tuple(f"lora{i}" for i in range(n)))


def dense_vectors(pool):
    """[N, P] flattened task vectors over all modules and layers (the oracle)."""
    vecs = []
    for i in range(pool.num_adapters):
        parts = []
        for m, st in pool.modules.items():
            a, b = (np.asarray(x, np.float64) for x in st.adapter(i))
            parts.append((float(st.scale[i]) * np.einsum("lor,lrd->lod", b, a)).ravel())
        vecs.append(np.concatenate(parts))
    return np.stack(vecs)


def oracle(vecs, t, kind):
    x, y = vecs, vecs[t]
    if kind == "quasi_fim":
        x, y = x ** 2, y ** 2
    prod = x * y
    num = {"cosine": prod, "clamp": np.maximum(prod, 0), "abs": np.abs(prod), "quasi_fim": prod}[kind].sum(1)
    return num / (np.linalg.norm(x, axis=1) * np.linalg.norm(y))


@pytest.mark.parametrize("kind,method", [("cosine", "auto"), ("cosine", "dense"), ("clamp", "auto"),
                                         ("abs", "auto"), ("quasi_fim", "factored"), ("quasi_fim", "dense"),
                                         ("quasi_fim", "auto")])
def test_similarity_matches_dense_numpy(kind, method):
    pool = random_pool()
    vecs = dense_vectors(pool)
    for t in (0, 3):
        got = selection.similarity(pool, t, kind, method=method)
        want = oracle(vecs, t, kind)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    if kind in ("cosine", "quasi_fim"):
        assert got[3] == pytest.approx(1.0, rel=1e-5)
    if kind == "clamp":  # clamp lies between cosine and abs
        cos = oracle(vecs, 3, "cosine")
        assert np.all(got >= cos - 1e-6) and np.all(got <= oracle(vecs, 3, "abs") + 1e-6)


def test_external_target_and_missing_modules():
    """A target outside the pool, lacking a module, compares over the union of modules."""
    pool = random_pool()
    target = random_pool(seed=5, n=1, ranks=(3,), lacks=((0, "v_proj"),), absent_layers=())
    vecs = dense_vectors(pool)
    # the target's vector over the pool's module order (zeros where it lacks v_proj)
    tv = dense_vectors(target)[0]
    for kind in ("cosine", "clamp"):
        got = selection.similarity(pool, target, kind)
        want = oracle(np.concatenate([vecs, tv[None]]), len(vecs), kind)[:-1]
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_khatri_rao_quasi_fim_exact_for_wide_blocks():
    """Small ranks on wide blocks: 'auto' takes the factored quasi-FIM path and stays exact."""
    shapes = {"gate_proj": (64, 48)}
    pool = random_pool(seed=2, n=4, shapes=shapes, ranks=(1, 2, 2, 1), lacks=(), absent_layers=())
    assert selection._use_khatri_rao(2, 2, 64, 48)
    vecs = dense_vectors(pool)
    np.testing.assert_allclose(selection.similarity(pool, 1, "quasi_fim"), oracle(vecs, 1, "quasi_fim"), rtol=2e-5)


def test_zero_candidate_and_zero_target():
    pool = random_pool()
    zeroed = Pool({m: ModuleStack(s.a, np.asarray(s.b) * np.repeat(np.arange(7) != 4, s.ranks)[None, None, :],
                                  s.scale, s.present, s.owner) for m, s in pool.modules.items()}, pool.names)
    sim = selection.similarity(zeroed, 0, "cosine")
    assert sim[4] == 0.0 and np.isfinite(sim).all()
    with pytest.raises(ValueError, match="delta is zero"):
        selection.similarity(zeroed, 4, "cosine")
    with pytest.raises(ValueError, match="no factored form"):
        selection.similarity(pool, 0, "clamp", method="factored")
    with pytest.raises(ValueError, match="expected one of"):
        selection.similarity(pool, 0, "euclid")


def test_select_kinds():
    pool = random_pool()
    vecs = dense_vectors(pool)
    key = jax.random.key(0)
    for kind in selection.SIMILARITIES:
        got = selection.select(pool, kind, 3, target_index=0, key=key)
        sims = oracle(vecs, 0, kind)
        sims[0] = -np.inf  # the target itself is never selected
        np.testing.assert_array_equal(got, np.argsort(-sims, kind="stable")[:3])
    # evaluation: top-k with ties to the lower index, exclusions honoured
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9, 0.2, 0.7])
    np.testing.assert_array_equal(selection.select(pool, "evaluation", 3, eval_scores=scores), [1, 2, 4])
    np.testing.assert_array_equal(selection.select(pool, "evaluation", 3, eval_scores=scores, exclude=[2]), [1, 4, 6])
    with pytest.raises(ValueError, match="NaN"):
        selection.select(pool, "evaluation", 2, eval_scores=np.full(7, np.nan))
    # random: distinct, repeatable with the key, excluding what is excluded
    r1 = selection.select(pool, "random", 4, key=jax.random.key(3), exclude=[0])
    r2 = selection.select(pool, "random", 4, key=jax.random.key(3), exclude=[0])
    np.testing.assert_array_equal(r1, r2)
    assert len(set(r1.tolist())) == 4 and 0 not in r1
    draws = {tuple(selection.select(pool, "random", 3, key=jax.random.key(s))) for s in range(8)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="cannot select"):
        selection.select(pool, "random", 7, key=key, exclude=[1])
    with pytest.raises(ValueError, match="needs key"):
        selection.select(pool, "random", 2)
    with pytest.raises(ValueError, match="needs target_index"):
        selection.select(pool, "cosine", 2)
