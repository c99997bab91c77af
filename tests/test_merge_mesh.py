"""Merges on a simulated 8-device CPU mesh equal the single-device ones, with the stacks sharded as
``stack_logical_axes`` + ``ShardingRules`` say; the linear merge needs no collective at all.

Runs in a subprocess: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX
starts, and the rest of the test session runs on one device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import mesh_env

SCRIPT = textwrap.dedent(r'''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jaxmerge import merge
    from jaxmerge.config import LlamaConfig
    from jaxmerge.sharding import ShardingRules, make_mesh
    from jaxmerge.stacks import ModuleStack, Pool, stack_logical_axes

    assert len(jax.devices()) == 8, jax.devices()
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    rng = np.random.default_rng(0)
    L, ranks = 2, (4, 8, 0, 2, 8)
    mods = {}
    for m in ("q_proj", "down_proj"):  # W sharded on its out dim, and on its in dim
        o, d = cfg.module_shape(m)
        R = sum(ranks)
        mods[m] = ModuleStack.from_ranks(jnp.asarray(rng.normal(size=(L, R, d)), jnp.float32),
                              jnp.asarray(rng.normal(size=(L, o, R)), jnp.float32),
                              jnp.asarray(rng.uniform(0.5, 2, len(ranks)), jnp.float32),
                              jnp.ones((len(ranks), L), bool), ranks)
    pool = Pool(mods, tuple("abcde"))
    mesh, rules = make_mesh(data=2, tensor=4), ShardingRules()

    def shard(stack, m):
        ax = stack_logical_axes(m)
        return ModuleStack(*(jax.device_put(getattr(stack, f), rules.sharding(mesh, ax[f], getattr(stack, f).shape))
                             for f in ("a", "b", "scale", "present", "owner")))

    sharded = Pool({m: shard(s, m) for m, s in mods.items()}, pool.names)
    w = jnp.asarray(rng.normal(size=len(ranks)), jnp.float32)
    coef = jnp.asarray(rng.normal(size=(len(ranks), L, 3)), jnp.float32)
    runs = {
        "linear": lambda p, m: merge.linear(p.modules[m], w),
        "average": lambda p, m: merge.average(p.modules[m]),
        "ties_total": lambda p, m: merge.ties(p.modules[m], w, 0.4, "total"),
        "ties_frequency": lambda p, m: merge.ties(p.modules[m], w, 0.7, "frequency"),
        "magnitude_prune": lambda p, m: merge.magnitude_prune(p.modules[m], w, 0.5),
        "tsv": lambda p, m: merge.tsv(p.modules[m], 4, jnp.abs(w)),
        "module_leaky": lambda p, m: merge.dense_deltas(p, coef, "module", "leaky_relu")[m],
    }
    report = {"max_err": {}, "spec": {}}
    for name, fn in runs.items():
        errs = []
        for m in mods:
            ref = np.asarray(fn(pool, m))
            got = fn(sharded, m)
            if name == "linear":
                report["spec"][m] = [list(x) if isinstance(x, tuple) else x for x in got.sharding.spec]
            errs.append(float(np.abs(np.asarray(got) - ref).max() / max(1.0, np.abs(ref).max())))
        report["max_err"][name] = max(errs)
    st = sharded.modules["q_proj"]
    hlo = jax.jit(merge.linear).lower(st, w).compile().as_text()
    report["linear_collectives"] = [c for c in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
                                    if c in hlo]
    print("REPORT" + json.dumps(report))
''')


def test_merges_on_an_8_device_mesh_equal_single_device():
    env = mesh_env(8)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.split("REPORT", 1)[1])
    for name, err in report["max_err"].items():
        assert err < 1e-5, (name, err, report)
    # ΔW comes out sharded like the base weight: q_proj [L, heads→tensor, embed→data], down_proj
    # [L, embed→data, mlp→tensor] (a swapped spec fails; trailing unsharded dims may be omitted)
    pad = lambda spec: spec + [None] * (3 - len(spec))
    assert pad(report["spec"]["q_proj"]) == [None, "tensor", "data"], report["spec"]
    assert pad(report["spec"]["down_proj"]) == [None, "data", "tensor"], report["spec"]
    # … and computing it moved no data between devices
    assert report["linear_collectives"] == [], report
