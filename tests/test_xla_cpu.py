"""``jaxmerge.xla_cpu``: oneDNN's GEMM is chosen per compiled executable — "auto" only on an x86-64
CPU without a user choice — and the merge compiled with it really runs through oneDNN and equals a
float64 reference at shapes of both orientations, while other programs keep XLA's default (the bench
side: tests/test_bench_merge.py)."""

from __future__ import annotations

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmerge import xla_cpu
from jaxmerge.merge import linear_layer_into
from jaxmerge.stacks import ModuleStack

X86 = platform.machine().lower() in ("x86_64", "amd64")
ONEDNN = xla_cpu.ONEDNN_DOT_OPTIONS


@pytest.mark.parametrize("dot, flags, opt_out, platform_name, want", [
    ("auto", "", None, "cpu", ONEDNN if X86 else {}),
    ("auto", "--xla_force_host_platform_device_count=8", None, "cpu", ONEDNN if X86 else {}),
    ("auto", "--xla_cpu_use_onednn=false", None, "cpu", {}),          # the user chose: left alone
    ("auto", "--xla_cpu_experimental_ynn_fusion_type=dot", None, "cpu", {}),
    ("auto", "--xla_cpu_use_xnnpack", None, "cpu", {}),               # a bare flag counts too
    ("auto", "", "default", "cpu", {}),                               # opted out
    ("auto", "", None, "gpu", {}),                                    # XLA:CPU's options only for the CPU
    ("onednn", "--xla_cpu_use_xnnpack", "default", "cpu", ONEDNN),    # asked for explicitly
    ("onednn", "", None, "gpu", {}),                                  # … but never given to another backend
    ("default", "", None, "cpu", {}),
])
def test_dot_options(monkeypatch, dot, flags, opt_out, platform_name, want):
    monkeypatch.setenv("XLA_FLAGS", flags)
    if opt_out:
        monkeypatch.setenv(xla_cpu.OPT_OUT, opt_out)
    else:
        monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
    assert xla_cpu.dot_options(dot, platform_name) == want
    with pytest.raises(ValueError, match="expected one of"):
        xla_cpu.dot_options("mkl", platform_name)


@pytest.mark.parametrize("o, d, L", [(96, 80, 3), (80, 96, 3), (64, 32, 1), (32, 64, 2), (112, 64, 2), (16, 16, 2)])
def test_merge_compiled_with_onednn_is_exact_and_others_keep_the_default(o, d, L):
    rng = np.random.default_rng(o * d + L)
    ranks = (4, 8, 0, 16)
    R = sum(ranks)
    st = ModuleStack.from_ranks(jnp.asarray(rng.standard_normal((L, R, d)), jnp.float32),
                                jnp.asarray(rng.standard_normal((L, o, R)), jnp.float32),
                                jnp.asarray([2.0, 0.5, 1.0, 0.25], jnp.float32), jnp.ones((4, L), bool), ranks)
    w = jnp.asarray([0.3, -1.2, 0.7, 0.9], jnp.float32)
    lowered = linear_layer_into.lower(jax.ShapeDtypeStruct((o, d), jnp.float32), st, w, 0)
    compiled = []
    if X86:  # oneDNN's XLA:CPU fusion is x86's
        compiled.append(xla_cpu.compile(lowered, "onednn"))
        assert xla_cpu.dot_backend(compiled[-1]) == "onednn"
    # compiled after the oneDNN one, from the same lowering: the options stay with their executable
    compiled.append(xla_cpu.compile(lowered, "default"))
    assert xla_cpu.dot_backend(compiled[-1]) != "onednn"
    l = L - 1
    a, b, off = np.asarray(st.a[l], np.float64), np.asarray(st.b[l], np.float64), np.cumsum((0,) + ranks)
    ref = sum(float(w[i] * st.scale[i]) * b[:, off[i]:off[i + 1]] @ a[off[i]:off[i + 1]] for i in range(4) if ranks[i])
    for c in compiled:
        out = np.asarray(c(jnp.zeros((o, d), jnp.float32), st, w, l), np.float64)
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-6  # float32 GEMM of O(1) values: rounding only


def test_rejected_options_fall_back_under_auto_and_raise_when_asked(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
    monkeypatch.setattr(xla_cpu, "ONEDNN_DOT_OPTIONS", {"xla_cpu_no_such_option_in_any_xla": True})
    lowered = jax.jit(lambda x, y: x @ y).lower(jnp.ones((8, 8)), jnp.ones((8, 8)))
    with pytest.raises(Exception, match="xla_cpu_no_such_option_in_any_xla"):
        xla_cpu.compile(lowered, "onednn")
    if X86:  # "auto" asks for oneDNN here: warned, XLA's default compiled
        with pytest.warns(RuntimeWarning, match="rejects the oneDNN dot options"):
            compiled = xla_cpu.compile(lowered, "auto")
    else:
        compiled = xla_cpu.compile(lowered, "auto")
    assert xla_cpu.dot_backend(compiled) != "onednn"
    np.testing.assert_array_equal(np.asarray(compiled(jnp.ones((8, 8)), jnp.ones((8, 8)))), 8.0)
