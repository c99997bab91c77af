"""Learned-coefficient merges: granularities nest, factored equals dense, padding rows change
nothing, and gradients with respect to the coefficients equal finite differences (float64).

Everything runs through the real forward (``jaxmerge.model.forward``) of a tiny random Llama with a
pool of mixed ranks over attention and MLP modules (one adapter lacks a module, one a layer).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmerge import merge
from jaxmerge.config import LlamaConfig
from jaxmerge.lora import Dense
from jaxmerge.model import forward
from jaxmerge.params import abstract_params
from jaxmerge.stacks import ModuleStack, Pool

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
MODS = ("q_proj", "v_proj", "gate_proj", "down_proj")
RANKS = {"q_proj": (4, 2, 8), "v_proj": (4, 0, 8), "gate_proj": (4, 2, 8), "down_proj": (4, 2, 8)}
N, L = 3, CFG.num_hidden_layers


def make_params(dtype, seed=0):
    leaves, tree = jax.tree.flatten(abstract_params(CFG, dtype))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    vals = [0.2 * jax.random.normal(k, s.shape, dtype) for k, s in zip(keys, leaves)]
    params = jax.tree.unflatten(tree, vals)
    params["norm"] = jnp.ones_like(params["norm"])
    for n in ("input_layernorm", "post_attention_layernorm"):
        params["layers"][n] = jnp.ones_like(params["layers"][n])
    return params


def make_pool(dtype, seed=1, pad=0) -> Pool:
    """Random pool; adapter 0 lacks layer 1 of down_proj. ``pad`` > 0 appends that many zero rows to
    adapter 1 (with nonzero B columns for them) in every module it has."""
    rng, pad_rng = np.random.default_rng(seed), np.random.default_rng(seed + 100)
    mods = {}
    for m in MODS:
        o, d = CFG.module_shape(m)
        A, B, ranks = [], [], []
        present = np.ones((N, L), bool)
        for i, r in enumerate(RANKS[m]):
            a = 0.3 * rng.normal(size=(L, r, d))
            b = 0.3 * rng.normal(size=(L, o, r))
            if m == "down_proj" and i == 0:
                a[1], b[1], present[i, 1] = 0, 0, False
            if pad and i == 1 and r:
                a = np.concatenate([a, np.zeros((L, pad, d))], 1)
                b = np.concatenate([b, pad_rng.normal(size=(L, o, pad))], 2)
            A.append(a), B.append(b), ranks.append(a.shape[1])
        present[[i for i, r in enumerate(ranks) if r == 0]] = False
        mods[m] = ModuleStack.from_ranks(jnp.asarray(np.concatenate(A, 1), dtype), jnp.asarray(np.concatenate(B, 2), dtype),
                                         jnp.asarray([0.5, 2.0, 0.25], jnp.float32), jnp.asarray(present), ranks)
    return Pool(mods, ("a", "b", "c"))


TOKENS = jnp.asarray(np.random.default_rng(2).integers(0, 64, size=(2, 7)), jnp.int32)


@functools.partial(jax.jit, static_argnames=("granularity", "activation", "dense"))
def logits(params, pool, w, granularity, activation, dense=False):
    if dense:
        adapters = {m: Dense(d) for m, d in merge.dense_deltas(pool, w, granularity, activation).items()}
    else:
        adapters = merge.factored_adapters(pool, w, granularity, activation)
    return forward(params, TOKENS, CFG, adapters=adapters)


def raw(granularity, seed=3):
    shape = merge.coefficient_shape(granularity, N, L, len(MODS))
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("activation", merge.ACTIVATIONS)
def test_granularities_nest(activation):
    pool = make_pool(jnp.float32)
    w_model = raw("model")
    w_layer = jnp.broadcast_to(w_model[:, None], (N, L))                 # layer tied across layers
    w_sub = jnp.broadcast_to(raw("layer")[:, :, None], (N, L, 2))         # sublayer tied across attn/mlp
    sub = raw("sublayer")
    w_mod = jnp.stack([sub[:, :, 0 if m in ("q_proj", "v_proj") else 1] for m in MODS], -1)
    dd = lambda w, g: merge.dense_deltas(pool, w, g, activation)
    for (wa, ga), (wb, gb) in (((w_model, "model"), (w_layer, "layer")),
                               ((raw("layer"), "layer"), (w_sub, "sublayer")),
                               ((sub, "sublayer"), (w_mod, "module"))):
        da, db = dd(wa, ga), dd(wb, gb)
        for m in MODS:
            np.testing.assert_allclose(da[m], db[m], rtol=0, atol=1e-6)


def test_factored_equals_dense_and_linear_merge():
    params, pool = make_params(jnp.float32), make_pool(jnp.float32)
    for g, act in (("module", "leaky_relu"), ("sublayer", "softmax")):
        w = raw(g)
        np.testing.assert_allclose(logits(params, pool, w, g, act), logits(params, pool, w, g, act, dense=True),
                                   rtol=1e-5, atol=1e-4)
        coefs = merge.module_coefficients(pool, w, g, act)
        dd = merge.dense_deltas(pool, w, g, act)
        for m in MODS:
            np.testing.assert_allclose(dd[m], merge.linear(pool.modules[m], coefs[m]), rtol=0, atol=1e-6)


def test_padding_rows_change_nothing():
    params = make_params(jnp.float32)
    pool, padded = make_pool(jnp.float32), make_pool(jnp.float32, pad=5)
    assert tuple(padded.modules["q_proj"].ranks) == (4, 7, 8)
    w = raw("module")
    np.testing.assert_allclose(logits(params, padded, w, "module", "leaky_relu"),
                               logits(params, pool, w, "module", "leaky_relu"), rtol=1e-5, atol=1e-5)
    for m in MODS:
        np.testing.assert_allclose(merge.dense_deltas(padded, w, "module", "softmax")[m],
                                   merge.dense_deltas(pool, w, "module", "softmax")[m], rtol=0, atol=1e-6)


def _merge_loss(pool, granularity, activation, dtype):
    """A smooth loss of every module's factored delta applied to fixed inputs (dtype-preserving
    einsums only: the model forward computes norms and logits in float32 by design)."""
    from jaxmerge.lora import apply_linear
    rng = np.random.default_rng(5)
    xs = {m: jnp.asarray(rng.normal(size=(2, 3, CFG.module_shape(m)[1])), dtype) for m in MODS}
    ws = {m: jnp.asarray(rng.normal(size=(L,) + CFG.module_shape(m)), dtype) for m in MODS}

    def loss(w):
        fac = merge.factored_adapters(pool, w, granularity, activation)
        total = 0.0
        for m, f in fac.items():
            for l in range(L):
                y = apply_linear(xs[m], ws[m][l], (type(f)(f.a[l], f.b[l], f.m[l]),))
                total = total + jnp.sum(jnp.tanh(y))
        return total
    return jax.jit(loss)


@pytest.mark.parametrize("granularity,activation", [("model", "linear"), ("layer", "softmax"),
                                                    ("sublayer", "leaky_relu"), ("module", "leaky_relu")])
def test_gradients_equal_finite_differences(granularity, activation):
    """float64; central differences along 3 random directions, step 1e-5: truncation O(h²) ≈ 1e-10
    and rounding ε·|f|/h ≈ 1e-10, so agreement to 1e-7 relative is a real check."""
    with jax.enable_x64(True):
        loss = _merge_loss(make_pool(jnp.float64), granularity, activation, jnp.float64)
        w = raw(granularity).astype(jnp.float64)
        g = jax.grad(loss)(w)
        assert g.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
        rng = np.random.default_rng(4)
        h = 1e-5
        for _ in range(3):
            v = jnp.asarray(rng.normal(size=w.shape))
            fd = (loss(w + h * v) - loss(w - h * v)) / (2 * h)
            ad = jnp.vdot(g, v)
            assert abs(float(fd - ad)) <= 1e-7 * max(1.0, abs(float(ad))), (float(fd), float(ad))


def test_gradients_through_the_forward_float32():
    """The real forward (float32): central differences with h = 1e-2 along random directions; the
    truncation error O(h²) ≈ 1e-4 and rounding ε·|f|/h ≈ 1e-5 bound the agreement at 1e-3 relative."""
    params, pool = make_params(jnp.float32), make_pool(jnp.float32)
    loss = jax.jit(lambda w: jnp.mean(jnp.square(
        forward(params, TOKENS, CFG, adapters=merge.factored_adapters(pool, w, "module", "leaky_relu")))))
    w = raw("module")
    g = jax.grad(loss)(w)
    assert bool(jnp.all(jnp.isfinite(g)))
    rng = np.random.default_rng(6)
    for _ in range(2):
        v = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
        fd = (loss(w + 1e-2 * v) - loss(w - 1e-2 * v)) / 2e-2
        ad = jnp.vdot(g, v)
        assert abs(float(fd - ad)) <= 1e-3 * abs(float(ad)), (float(fd), float(ad))


def test_leaky_relu_gradient_at_zero_is_the_slope():
    """``ours`` starts at exactly 0: the gradient there is slope × the linear one (PyTorch's rule)."""
    pool = make_pool(jnp.float32)
    w0 = jnp.zeros(merge.coefficient_shape("module", N, L, len(MODS)), jnp.float32)
    grad = lambda act: jax.grad(_merge_loss(pool, "module", act, jnp.float32))(w0)
    g_lin, g_leaky = grad("linear"), grad("leaky_relu")
    assert float(jnp.abs(g_lin).max()) > 0
    np.testing.assert_allclose(g_leaky, merge.LEAKY_SLOPE * g_lin, rtol=1e-5, atol=1e-9)
    # against PyTorch itself (the authors' activation): values and gradients at, below and above 0
    import torch
    x = np.array([-2.0, -1e-3, 0.0, 0.0, 1e-3, 3.0], np.float32)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.leaky_relu(t, merge.LEAKY_SLOPE).backward(torch.ones_like(t))
    act = lambda v: merge.activate(v, "leaky_relu")
    np.testing.assert_array_equal(np.asarray(act(jnp.asarray(x))),
                                  torch.nn.functional.leaky_relu(torch.tensor(x), merge.LEAKY_SLOPE).numpy())
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: act(v).sum())(jnp.asarray(x))), t.grad.numpy())
    assert t.grad[2] == np.float32(merge.LEAKY_SLOPE)  # PyTorch's rule at exactly 0 (jax.nn.leaky_relu gives 1)
    with pytest.raises(ValueError, match="granularity"):
        merge.coefficient_shape("row", N, L, 4)
    with pytest.raises(ValueError, match="activation"):
        merge.activate(w0, "relu")
