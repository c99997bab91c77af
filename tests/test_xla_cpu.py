"""``jaxmerge.xla_cpu``: oneDNN's GEMM is asked for only when the user has not chosen, and when JAX
starts after the call the merge really runs through it and still equals a float64 reference."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxmerge import xla_cpu

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _env_without_a_dot_choice() -> dict:
    """os.environ for a subprocess where XLA keeps no user choice of dot library (the suite's other
    XLA flags and compilation cache kept)."""
    env = {k: v for k, v in os.environ.items() if k != xla_cpu.OPT_OUT}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not xla_cpu.flag_names(f) & xla_cpu.DOT_CHOICE_FLAGS)
    return env


@pytest.mark.parametrize("flags, opt_out, changed", [
    ("", None, X86),
    ("--xla_force_host_platform_device_count=8", None, X86),
    ("--xla_cpu_use_onednn=false", None, False),               # the user chose: left alone
    ("--xla_cpu_experimental_ynn_fusion_type=dot", None, False),
    ("--xla_cpu_use_xnnpack", None, False),                    # a bare flag counts too
    ("", "default", False),                                     # opted out
])
def test_flags_added_only_without_a_user_choice(monkeypatch, flags, opt_out, changed):
    monkeypatch.setenv("XLA_FLAGS", flags)
    if opt_out:
        monkeypatch.setenv(xla_cpu.OPT_OUT, opt_out)
    else:
        monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
    assert xla_cpu.prefer_onednn_dot() is changed
    now = os.environ["XLA_FLAGS"]
    if changed:
        assert now.startswith(flags) and all(f in now.split() for f in xla_cpu.ONEDNN_DOT_FLAGS)
    else:
        assert now == flags


SCRIPT = r"""
import json, sys
from jaxmerge.xla_cpu import dot_backend, prefer_onednn_dot
changed = prefer_onednn_dot()          # before JAX starts its backend
import jax, jax.numpy as jnp, numpy as np
from jaxmerge.merge import linear_layer_into
from jaxmerge.stacks import ModuleStack
rng = np.random.default_rng(0)
ranks = (4, 8, 0, 16)
R, L, O, D = sum(ranks), 3, 96, 80
st = ModuleStack(a=jnp.asarray(rng.standard_normal((L, R, D)), jnp.float32),
                 b=jnp.asarray(rng.standard_normal((L, O, R)), jnp.float32),
                 scale=jnp.asarray([2.0, 0.5, 1.0, 0.25], jnp.float32),
                 present=jnp.ones((4, L), bool), ranks=ranks)
w = jnp.asarray([0.3, -1.2, 0.7, 0.9], jnp.float32)
compiled = linear_layer_into.lower(jnp.zeros((O, D), jnp.float32), st, w, 1).compile()
out = np.asarray(linear_layer_into(jnp.zeros((O, D), jnp.float32), st, w, 1), np.float64)
a, b, off = np.asarray(st.a[1], np.float64), np.asarray(st.b[1], np.float64), np.cumsum((0,) + ranks)
ref = sum(float(w[i] * st.scale[i]) * b[:, off[i]:off[i + 1]] @ a[off[i]:off[i + 1]] for i in range(4) if ranks[i])
print(json.dumps({"changed": changed, "backend": dot_backend(compiled),
                  "rel": float(np.abs(out - ref).max() / np.abs(ref).max())}))
"""


def test_merge_runs_through_onednn_and_stays_exact():
    env = _env_without_a_dot_choice()
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["changed"] is X86
    assert (r["backend"] == "onednn") is X86, r
    assert r["rel"] < 1e-6, r   # float32 GEMM of O(1) values vs float64: rounding only


def test_bench_merge_with_onednn_times_linear_merges_only(tmp_path):
    from transformers import LlamaConfig
    cfg = tmp_path / "config.json"
    LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128).to_json_file(str(cfg))
    env = _env_without_a_dot_choice()
    out = subprocess.run([sys.executable, "-m", "jaxmerge", "bench", "merge", "--json", "--model", str(cfg), "--k", "4",
                          "--layers", "2", "--rounds", "1", "--no-peft", "--xla-cpu-dot", "onednn"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout)
    assert (r["xla_cpu_dot"] == "onednn") is X86, r["xla_cpu_dot"]
    if X86:  # TIES/TSV never run under oneDNN
        assert "TIES/TSV skipped" in out.stderr and "tsv" not in r and "ties" not in r
    assert r["useful_gflops"] > 0
