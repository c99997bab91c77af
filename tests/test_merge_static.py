"""Static merges against the real libraries: PEFT's merge_utils (task arithmetic, magnitude pruning,
TIES) on random factors and on adapters written by PEFT itself; TSV against a plain dense NumPy
implementation of the published algorithm; padding rows and streaming never change a result.

Tolerances: float32 merges of O(10)-magnitude deltas, compared elementwise at 1e-5 relative to the
largest |entry| (summation order differs from torch's); TSV at 1e-5 relative Frobenius error
against float64 NumPy.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft.utils import merge_utils as mu

from jaxmerge import merge
from jaxmerge.merge import SIGN_METHODS, registry
from jaxmerge.stacks import ModuleStack

from helpers import fixed_bernoulli, fixed_noise, hf_llama

RTOL = 1e-5


def build_stack(A, B, scale, present=None) -> ModuleStack:
    """A stack from per-adapter factors A_i [L, r_i, in], B_i [L, out, r_i] (r_i may be 0)."""
    ranks = tuple(a.shape[1] for a in A)
    L = A[0].shape[0]
    present = np.ones((len(A), L), bool) if present is None else present
    return ModuleStack.from_ranks(jnp.asarray(np.concatenate(A, 1)), jnp.asarray(np.concatenate(B, 2)),
                                  jnp.asarray(np.asarray(scale, np.float32)), jnp.asarray(present), ranks)


def random_factors(rng, ranks, L=2, o=24, d=40, absent=()):
    """Factors with N(0,1) entries; (adapter, layer) pairs in ``absent`` are zero (not targeted)."""
    A = [rng.normal(size=(L, r, d)).astype(np.float32) for r in ranks]
    B = [rng.normal(size=(L, o, r)).astype(np.float32) for r in ranks]
    present = np.array([[r > 0] * L for r in ranks])
    for i, l in absent:
        A[i][l] = 0
        B[i][l] = 0
        present[i, l] = False
    scale = np.array([(2.0 * r) / r if r else 1.0 for r in ranks], np.float32) * rng.uniform(0.5, 2, len(ranks))
    return A, B, scale.astype(np.float32), present


def torch_deltas(A, B, scale, l):
    """PEFT's get_delta_weight arithmetic: (B @ A) * scaling."""
    return [(torch.from_numpy(B[i][l]) @ torch.from_numpy(A[i][l])) * float(scale[i]) for i in range(len(A))]


def assert_close(got, ref):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=RTOL * max(1.0, float(np.abs(ref).max())))


RANKS = (4, 0, 8, 4, 2, 16)
ABSENT = ((3, 1),)  # adapter 3 does not touch layer 1


@pytest.fixture(scope="module")
def pool_factors():
    return random_factors(np.random.default_rng(0), RANKS, absent=ABSENT)


@pytest.mark.parametrize("sign", ["total", "frequency"])
@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_ties_equals_peft(pool_factors, sign, density):
    A, B, scale, present = pool_factors
    stack = build_stack(A, B, scale, present)
    for w in (np.ones(len(RANKS)), np.full(len(RANKS), 0.3), np.random.default_rng(1).normal(size=len(RANKS))):
        w = w.astype(np.float32)
        got = merge.ties(stack, jnp.asarray(w), density, sign)
        for l in range(2):
            with pytest.warns(UserWarning) if density >= 1 else _nothing():
                ref = mu.ties(torch_deltas(A, B, scale, l), torch.from_numpy(w), density, sign)
            assert_close(got[l], ref.numpy())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("density", [0.0, 0.35, 0.9])
def test_magnitude_prune_and_task_arithmetic_equal_peft(pool_factors, density):
    A, B, scale, present = pool_factors
    stack = build_stack(A, B, scale, present)
    w = np.random.default_rng(2).normal(size=len(RANKS)).astype(np.float32)
    got_mp = merge.magnitude_prune(stack, jnp.asarray(w), density)
    got_ta = merge.linear(stack, jnp.asarray(w))
    n = len(RANKS)
    got_avg = merge.average(stack)
    for l in range(2):
        deltas = torch_deltas(A, B, scale, l)
        assert_close(got_mp[l], mu.magnitude_prune(deltas, torch.from_numpy(w), density).numpy())
        assert_close(got_ta[l], mu.task_arithmetic(deltas, torch.from_numpy(w)).numpy())
        assert_close(got_avg[l], mu.task_arithmetic(deltas, torch.full((n,), 1.0 / n)).numpy())


def _registry_merge(method, stack, w, noise=fixed_noise, **params):
    """A registered method on one stack, all layers, with the injected noise."""
    L = stack.a.shape[0]
    return registry.get(method).merge(stack, jnp.asarray(registry.resolve_weights(method, stack.num_adapters, L, w)),
                                      registry.make_params(method, **params), key=jax.random.key(0),
                                      layers=jnp.arange(L), noise=noise)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9, 1.0])
def test_dare_equals_peft_with_the_same_mask(pool_factors, density, monkeypatch):
    """DARE linear / TIES = PEFT's ``merge_utils.dare_linear`` / ``dare_ties`` when both draw the same mask
    (``torch.bernoulli`` replaced by the shared fixed pattern; jaxmerge given the same ``noise``): random
    drop, kept entries scaled by 1/density, then the sum or TIES' election (both sign methods)."""
    A, B, scale, present = pool_factors
    stack = build_stack(A, B, scale, present)
    monkeypatch.setattr(torch, "bernoulli", fixed_bernoulli)
    w = np.random.default_rng(9).normal(size=len(RANKS)).astype(np.float32)
    got_lin = _registry_merge("dare_linear", stack, w, density=density)
    got_ties = {sign: _registry_merge("dare_ties", stack, w, density=density, sign=sign) for sign in SIGN_METHODS}
    for l in range(2):
        deltas = torch_deltas(A, B, scale, l)
        with pytest.warns(UserWarning) if density >= 1 else _nothing():
            assert_close(got_lin[l], mu.dare_linear(deltas, torch.from_numpy(w), density).numpy())
        for sign in SIGN_METHODS:
            with pytest.warns(UserWarning) if density >= 1 else _nothing():
                assert_close(got_ties[sign][l], mu.dare_ties(deltas, torch.from_numpy(w), density, sign).numpy())
    if density < 1:  # the injected mask did drop entries: the oracle is not plain task arithmetic
        assert np.abs(np.asarray(got_lin) - np.asarray(merge.linear(stack, jnp.asarray(w)))).max() > 1e-2


def test_dare_masks_from_the_key_are_drawn_per_module_layer_and_adapter():
    """With the real noise: each entry kept with probability density (rescaled by 1/density), independently
    across layers, adapters and modules; the same key gives the same masks, another key others."""
    rng = np.random.default_rng(11)
    A, B, scale, present = random_factors(rng, (4, 4), L=2, o=64, d=96)
    stack = build_stack(A, B, scale, present)
    from jaxmerge.stacks import Pool
    pool = Pool({"q_proj": stack, "v_proj": stack}, ("a", "b"))
    density, n = 0.3, 64 * 96
    out = merge.merge_pool(pool, "dare_linear", weights=[1.0, 0.0], density=density, key=jax.random.key(5))
    again = merge.merge_pool(pool, "dare_linear", weights=[1.0, 0.0], density=density, key=jax.random.key(5))
    other = merge.merge_pool(pool, "dare_linear", weights=[1.0, 0.0], density=density, key=jax.random.key(6))
    masks = {}
    for m in ("q_proj", "v_proj"):
        for l in range(2):
            full = scale[0] * B[0][l].astype(np.float64) @ A[0][l]
            got = np.asarray(out[m][l], np.float64)
            kept = got != 0
            np.testing.assert_allclose(got[kept], full[kept] / density, rtol=0, atol=RTOL * np.abs(full).max() / density)
            assert abs(kept.mean() - density) < 4 * np.sqrt(density * (1 - density) / n)
            masks[m, l] = kept
            np.testing.assert_array_equal(np.asarray(again[m][l]), np.asarray(out[m][l]))
            assert (np.asarray(other[m][l]) != 0).tolist() != kept.tolist()
    pairs = [(("q_proj", 0), ("q_proj", 1)), (("q_proj", 0), ("v_proj", 0))]
    for x, y in pairs:  # independent masks overlap on about density² of the entries
        assert abs((masks[x] & masks[y]).mean() - density ** 2) < 0.03
    # adapter 1 (weight 0 above) draws its own mask: the two adapters' kept sets differ
    both = merge.merge_pool(pool, "dare_linear", weights=[0.0, 1.0], density=density, key=jax.random.key(5))
    assert abs(((np.asarray(both["q_proj"][0]) != 0) & masks["q_proj", 0]).mean() - density ** 2) < 0.03


@pytest.mark.parametrize("per_layer", [False, True])
def test_linear_layer_into_writes_the_layer_into_the_donated_buffer(pool_factors, per_layer):
    """Equal to PEFT's task arithmetic of that layer (weights [N] or per layer [N, L]), computed in the
    donated buffer's memory, and the buffer passed back is reused by the next layer (the recycling
    loop of ``jaxmerge bench merge``)."""
    A, B, scale, present = pool_factors
    stack = build_stack(A, B, scale, present)
    w = np.random.default_rng(3).normal(size=(len(RANKS), 2) if per_layer else len(RANKS)).astype(np.float32)
    buf = jnp.full((B[0].shape[1], A[0].shape[2]), 7.0, jnp.float32)  # old contents must not leak in
    for l in range(2):
        pointer = buf.unsafe_buffer_pointer()
        old = buf
        buf = merge.linear_layer_into(buf, stack, jnp.asarray(w), jnp.int32(l))
        assert old.is_deleted()
        assert buf.unsafe_buffer_pointer() == pointer
        w_l = torch.from_numpy(np.ascontiguousarray(w[:, l] if per_layer else w))
        assert_close(buf, mu.task_arithmetic(torch_deltas(A, B, scale, l), w_l).numpy())
    with pytest.raises(ValueError, match="buffer of shape"):
        merge.linear_layer_into(jnp.zeros((3, 3)), stack, jnp.asarray(w), 0)


def test_magnitude_threshold_is_exact_kth_largest():
    rng = np.random.default_rng(3)
    # wide dynamic range, negative values, exact zeros, values sharing the top 16 bits
    x = (rng.normal(size=(37, 53)) * 10.0 ** rng.integers(-20, 20, size=(37, 53))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0
    x[0, :10] = np.float32(1.0) + np.arange(10, dtype=np.float32) * np.float32(2 ** -23)
    mags = np.sort(np.abs(x).ravel())[::-1]
    for k in (1, 2, 5, 100, 1000, x.size - 1, x.size):
        t = merge.magnitude_threshold(jnp.asarray(x), k)
        assert float(jax.lax.bitcast_convert_type(t, jnp.float32)) == mags[k - 1], k
    mask = np.asarray(merge.magnitude_mask(jnp.asarray(x), 0.3))
    assert mask.sum() == int(0.3 * x.size)
    assert np.abs(x[mask]).min() >= np.abs(x[~mask]).max()
    with pytest.raises(ValueError, match="density"):
        merge.magnitude_mask(jnp.asarray(x), -0.1)


def pad_rows(A, B, i, p, rng):
    """Adapter i with p extra zero rows in A (and zero columns in B)."""
    A, B = list(A), list(B)
    L, _, d = A[i].shape
    o = B[i].shape[1]
    A[i] = np.concatenate([A[i], np.zeros((L, p, d), np.float32)], 1)
    B[i] = np.concatenate([B[i], rng.normal(size=(L, o, p)).astype(np.float32) * 0], 2)
    return A, B


def test_padding_rows_never_change_a_result(pool_factors):
    A, B, scale, present = pool_factors
    ref = build_stack(A, B, scale, present)
    # zero rows in A with arbitrary B columns, and zero B columns with arbitrary A rows: both add nothing
    rng = np.random.default_rng(4)
    A2, B2 = pad_rows(A, B, 0, 3, rng)
    B2[0][:, :, -3:] = rng.normal(size=B2[0][:, :, -3:].shape)
    A2, B2 = pad_rows(A2, B2, 4, 6, rng)   # rank 2 → 8 ≥ tsv k: the padding would enter the top-k
    A2[4][:, -6:] = rng.normal(size=A2[4][:, -6:].shape)
    padded = build_stack(A2, B2, scale, present)
    w = jnp.asarray(rng.normal(size=len(RANKS)).astype(np.float32))
    assert_close(merge.linear(padded, w), merge.linear(ref, w))
    assert_close(merge.ties(padded, w, 0.4, "total"), merge.ties(ref, w, 0.4, "total"))
    assert_close(merge.tsv(padded, 8, w), merge.tsv(ref, 8, w))


# ----------------------------------------------------------------------------------------- TSV
def tsv_dense_reference(deltas, ranks, k, weights):
    """The published algorithm on dense float64 matrices: SVD of each ΔW_i, its top min(k, r_i)
    triplets (an adapter of rank below k keeps all it has), σ weighted, U and V stacked and replaced
    by their polar factors P·Qᵀ, ΔW = U_⊥ diag(S) V_⊥ᵀ. Adapters lacking the matrix are skipped."""
    us, ss, vs = [], [], []
    for dw, r, w in zip(deltas, ranks, weights):
        dw = np.asarray(dw, np.float64)
        if r == 0 or not dw.any():
            continue
        u, s, vt = np.linalg.svd(dw, full_matrices=False)
        kk = min(k, r)
        us.append(u[:, :kk]), ss.append(w * s[:kk]), vs.append(vt[:kk].T)
    U, S, V = np.concatenate(us, 1), np.concatenate(ss), np.concatenate(vs, 1)

    def polar(x):
        p, _, qt = np.linalg.svd(x, full_matrices=False)
        return p @ qt

    return polar(U) @ np.diag(S) @ polar(V).T


def _tsv_case(dtype, k, o, d, seed=5):
    rng = np.random.default_rng(seed)
    ranks = (4, 0, 8, 12, 2, 16, 8)
    A, B, scale, present = random_factors(rng, ranks, o=o, d=d, absent=((3, 1),))
    stack = build_stack([a.astype(dtype) for a in A], [b.astype(dtype) for b in B], scale, present)
    errs = []
    for w in (np.full(len(ranks), 1 / len(ranks), np.float32), rng.uniform(0.1, 1, len(ranks)).astype(np.float32)):
        got = np.asarray(merge.tsv(stack, k, jnp.asarray(w)))
        assert got.dtype == dtype
        wd = w
        for l in range(2):
            deltas = [scale[i] * (B[i][l].astype(np.float64) @ A[i][l]) for i in range(len(ranks))]
            ranks_l = [r if present[i, l] else 0 for i, r in enumerate(ranks)]
            ref = tsv_dense_reference(deltas, ranks_l, k, wd)
            errs.append(np.linalg.norm(got[l] - ref) / np.linalg.norm(ref))
    return max(errs)


@pytest.mark.parametrize("k,o,d", [(8, 96, 64), (3, 24, 40)])
def test_tsv_equals_dense_numpy_float64(k, o, d):
    """The algorithm itself: in float64 the factor route equals the dense one to rounding."""
    with jax.enable_x64(True):
        assert _tsv_case(np.float64, k, o, d) < 1e-10


def test_tsv_equals_dense_numpy_float32():
    """float32 factors against the float64 dense reference: 1e-5 relative where the kept singular
    values are separated from the dropped ones (k = 8 of up to 16 here); the k = 3 cut of the same
    adapters falls between close singular values and measures 1.1e-5 (vector error ∝ ε/gap), so it
    is held to 5e-5."""
    assert _tsv_case(np.float32, 8, 96, 64) < 1e-5
    assert _tsv_case(np.float32, 3, 24, 40) < 5e-5


def test_factor_svd_equals_dense_svd():
    """σ, and the triplets themselves: U·diag(σ)·Vᵀ is the best rank-5 approximation of the dense float64
    s·B·A (distinct singular values, so it is unique), U and V are orthonormal."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(12, 50)).astype(np.float32), rng.normal(size=(30, 12)).astype(np.float32)
    u, s, v = merge.factor_svd(jnp.asarray(a), jnp.asarray(b), 0.5, 5)
    u, s, v = (np.asarray(x, np.float64) for x in (u, s, v))
    du, ds, dvt = np.linalg.svd(0.5 * b.astype(np.float64) @ a, full_matrices=False)
    np.testing.assert_allclose(s, ds[:5], rtol=1e-5)
    best = du[:, :5] @ np.diag(ds[:5]) @ dvt[:5]
    np.testing.assert_allclose(u @ np.diag(s) @ v.T, best, rtol=0, atol=1e-5 * np.abs(best).max())
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(v.T @ v, np.eye(5), atol=1e-5)
    # each right vector matches the dense one up to its sign, paired with the left vector's sign
    signs = np.sign(np.sum(v * dvt[:5].T, axis=0))
    np.testing.assert_allclose(v * signs, dvt[:5].T, atol=1e-4)
    np.testing.assert_allclose(u * signs, du[:, :5], atol=1e-4)


# ---------------------------------------------------------------------------- PEFT-written adapters
def _peft_adapters(tmp_path):
    """Three adapters written by PEFT's save_pretrained on a tiny transformers Llama: different ranks,
    alphas, rsLoRA, target modules and layers. Returns (dirs, {name: peft model}) ."""
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    hf_llama(base_dir)
    specs = [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
             dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]),
             dict(r=2, lora_alpha=4, target_modules=["v_proj", "down_proj"], layers_to_transform=[1])]
    dirs = []
    for j, spec in enumerate(specs):
        from transformers import LlamaForCausalLM
        torch.manual_seed(10 + j)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                               LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **spec))
        d = tmp_path / f"adapter{j}"
        model.save_pretrained(d)
        dirs.append(d)
    return base_dir, dirs


def _stack_from_peft_dirs(dirs, module, L):
    """Read adapter_model.safetensors files as written by PEFT → ModuleStack for one module."""
    from safetensors.numpy import load_file
    A, B, scale, present = [], [], [], []
    for d in dirs:
        cfg = json.loads((d / "adapter_config.json").read_text())
        tensors = load_file(os.path.join(d, "adapter_model.safetensors"))
        keys = {l: [k for k in tensors if f".layers.{l}." in k and f".{module}.lora_A" in k] for l in range(L)}
        r = cfg["r"] if any(keys.values()) else 0
        sa = np.zeros((L, r, 64 if module != "down_proj" else 112), np.float32)
        o = {"q_proj": 64, "k_proj": 32, "v_proj": 32, "down_proj": 64}[module]
        sb = np.zeros((L, o, r), np.float32)
        pres = []
        for l in range(L):
            pres.append(bool(keys[l]))
            if keys[l]:
                ka = keys[l][0]
                sa[l] = tensors[ka]
                sb[l] = tensors[ka.replace("lora_A", "lora_B")]
        A.append(sa), B.append(sb), present.append(pres)
        scale.append(cfg["lora_alpha"] / (np.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"]))
    return build_stack(A, B, scale, np.array(present))


def test_merges_equal_peft_on_peft_written_adapters(tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base_dir, dirs = _peft_adapters(tmp_path)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), dirs[0], adapter_name="a0")
    for j, d in enumerate(dirs[1:], 1):
        model.load_adapter(d, adapter_name=f"a{j}")
    names = [f"a{j}" for j in range(len(dirs))]
    w = np.array([0.7, -0.4, 1.3], np.float32)
    L = 2
    for module, parent in (("q_proj", "self_attn"), ("down_proj", "mlp")):
        stack = _stack_from_peft_dirs(dirs, module, L)
        got = {"ties_t": merge.ties(stack, jnp.asarray(w), 0.6, "total"),
               "ties_f": merge.ties(stack, jnp.asarray(w), 0.3, "frequency"),
               "mp": merge.magnitude_prune(stack, jnp.asarray(w), 0.5),
               "ta": merge.linear(stack, jnp.asarray(w))}
        for l in range(L):
            layer = getattr(model.base_model.model.model.layers[l], parent)
            lin = getattr(layer, module)
            with torch.no_grad():
                deltas = [lin.get_delta_weight(n) if n in lin.lora_A else torch.zeros_like(lin.weight) for n in names]
            wt = torch.from_numpy(w)
            assert_close(got["ties_t"][l], mu.ties(deltas, wt, 0.6, "total").numpy())
            assert_close(got["ties_f"][l], mu.ties(deltas, wt, 0.3, "frequency").numpy())
            assert_close(got["mp"][l], mu.magnitude_prune(deltas, wt, 0.5).numpy())
            assert_close(got["ta"][l], mu.task_arithmetic(deltas, wt).numpy())
            ranks = [stack.ranks[i] if bool(stack.present[i, l]) else 0 for i in range(3)]
            ref = tsv_dense_reference([x.numpy() for x in deltas], ranks, 8, [1 / 3] * 3)
            err = np.linalg.norm(np.asarray(merge.tsv(stack, 8))[l] - ref) / np.linalg.norm(ref)
            assert err < 1e-5, (module, l, err)


# ------------------------------------------------------------------------------ pool-level API
def test_merge_pool_streaming_and_errors(pool_factors):
    from jaxmerge.stacks import Pool
    A, B, scale, present = pool_factors
    stack = build_stack(A, B, scale, present)
    n = len(RANKS)
    A2, B2, s2, p2 = random_factors(np.random.default_rng(7), RANKS)
    pool = Pool({"q_proj": stack, "v_proj": build_stack(A2, B2, s2, p2)}, tuple(f"a{i}" for i in range(n)))
    w = jnp.asarray(np.random.default_rng(8).normal(size=n).astype(np.float32))
    for method, kw in (("average", {}), ("linear", dict(weights=w)), ("ties", dict(weights=w, density=0.5)),
                       ("tsv", dict(tsv_k=4))):
        full = merge.merge_pool(pool, method, **kw)
        assert set(full) == {"q_proj", "v_proj"}
        for start, window in merge.iter_merge_pool(pool, method, **kw):
            for m in full:
                assert_close(window[m][0], full[m][start])
    assert_close(merge.merge_pool(pool, "ties", density=0.5)["q_proj"], merge.ties(stack, jnp.ones(n), 0.5))
    assert_close(merge.merge_pool(pool, "tsv", tsv_k=4)["q_proj"], merge.tsv(stack, 4, jnp.full((n,), 1 / n)))
    # streaming average over chunks of adapters equals the one-shot average
    chunks = [stack.subset(range(0, 2)), stack.subset(range(2, 5)), stack.subset(range(5, n))]
    assert_close(merge.average_chunks(iter(chunks), n), merge.average(stack))
    with pytest.raises(ValueError, match="num_adapters"):
        merge.average_chunks(iter(chunks[:2]), n)
    # the recipe's defaults, and every bad request named (a MergeMethodError: one line at the CLI)
    assert_close(merge.merge_pool(pool, "ties")["q_proj"], merge.ties(stack, jnp.ones(n), 0.8, "total"))
    for bad, match in ((dict(method="avg"), "unknown merge method 'avg': expected one of average, breadcrumbs"),
                       (dict(method="average", weights=w), "takes no weights"),
                       (dict(method="linear", weights=w[:2]), "2 weights for 6 adapters"),
                       (dict(method="ties", density=0.5, sign="max"), "sign='max': expected one of total, frequency"),
                       (dict(method="ties", density=1.5), "density=1.5: must be ≤ 1"),
                       (dict(method="tsv", tsv_k=0), "tsv_k=0: must be ≥ 1"),
                       (dict(method="ties", tsv_k=3), "'ties' does not take tsv_k \\(it takes density, sign\\)"),
                       (dict(method="dare_linear"), "'dare_linear' needs density")):
        with pytest.raises(registry.MergeMethodError, match=match):
            merge.merge_pool(pool, **bad)
