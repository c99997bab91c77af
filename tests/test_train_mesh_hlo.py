"""The `ours` training step on a simulated 8-device mesh gathers no coefficient: the compiled step's
data movements (all-gather, all-to-all, collective-permute) never carry an array of a coefficient's
shape — the raw coefficients w [N, L, M], their per-layer slice, the activated per-module coefficients
[N, L], the row multipliers [L, R] / [R] — while reductions (all-reduce, reduce-scatter) are the
data-parallel gradient sums, the coefficients' included; and its all-gathers are
FSDP gathers of weights (a base parameter or stack array, whole or per layer, or a shard of one), of
batch-sharded activations ``[micro, T, …]`` or of the batch's integer indices. (The linear merge's no-collective proof is in test_merge_mesh.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import mesh_env

SCRIPT = textwrap.dedent(r'''
    import json, re, sys, tempfile
    import jax, jax.numpy as jnp
    from helpers import make_setup
    import jaxmerge
    from jaxmerge.adaptive.objectives import Coefficients
    from jaxmerge.adaptive.train import UpdateRule, micro_batches, optimizer, place_batch, place_state, train_step
    from jaxmerge.sharding import ShardingRules
    from jaxmerge.stacks import bucketed, pool_shardings
    from jaxmerge.tasks import encode
    assert len(jax.devices()) == 8
    base, pool, data = make_setup(tempfile.mkdtemp())
    mesh = jaxmerge.make_mesh(data=4, tensor=2)
    sharded = jaxmerge.load_base(base.path, dtype="float32", mesh=mesh)
    pool = bucketed(pool)
    stacks = jax.device_put(pool, pool_shardings(pool, mesh, ShardingRules())).modules
    N, L, M = pool.num_adapters, pool.num_layers, len(pool.modules)
    for application in ("factored", "dense"):
        obj = Coefficients(base.config, "module", "leaky_relu", tuple((m, application) for m in pool.modules))
        rule = UpdateRule()
        w = {"w": jnp.zeros((N, L, M))}
        state = place_state({"trainable": w, "opt": optimizer(rule).init(w)}, mesh)
        batch = place_batch(micro_batches(encode(data.train[:8], base.tokenizer, None), 8), mesh)
        lrs = jax.device_put(jnp.zeros(2), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        with jax.set_mesh(mesh):
            hlo = train_step.lower(state, {"params": sharded.params, "stacks": stacks}, batch, lrs,
                                   objective=obj, rule=rule).compile().as_text()
        ops = re.findall(r"= (?:\(?)(\w+)\[([\d,]*)\][^\n]*? (all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(?:-start)?\(", hlo)
        report = {"collectives": [[kind, dtype, [int(x) for x in dims.split(",") if x]] for dtype, dims, kind in ops]}
        report["coefficient_shapes"] = [[N, L, M], [N, M], [N, L], [N]] + \
            [[L, s.a.shape[1]] for s in stacks.values()] + [[s.a.shape[1]] for s in stacks.values()]
        weights = [list(x.shape) for x in jax.tree.leaves(sharded.params)] + \
            [list(getattr(s, f).shape) for s in stacks.values() for f in ("a", "b")]
        report["weight_shapes"] = weights + [w_[1:] for w_ in weights if len(w_) > 1]
        report["batch"], report["tokens"] = [int(x) for x in batch["tokens"].shape[1:]]
        print("REPORT " + application + " " + json.dumps(report))
''')


def _fits(shape, full):
    """``shape`` is ``full`` or a shard of it (each dim the full one or a divisor of it by 2, 4 or 8)."""
    return len(shape) == len(full) and all(s == f or (f % s == 0 and f // s in (2, 4, 8)) for s, f in zip(shape, full))


def test_the_ours_step_on_a_mesh_moves_no_coefficient():
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=mesh_env(8), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [line.split(" ", 2) for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert {app for _, app, _ in reports} == {"factored", "dense"}
    for _, application, text in reports:
        r = json.loads(text)
        assert r["collectives"], "a sharded step with no collective at all would mean nothing was sharded"
        for kind, dtype, shape in r["collectives"]:
            if kind in ("all-reduce", "reduce-scatter"):
                continue  # summing the gradients (of the coefficients too) over data-parallel shards is the point
            assert shape not in r["coefficient_shapes"], (application, kind, dtype, shape)
            if kind == "all-gather" and dtype.startswith(("f", "bf")):  # integer gathers: the batch's indices
                weight = any(_fits(shape, w) for w in r["weight_shapes"])
                activation = len(shape) >= 2 and shape[0] in (r["batch"], r["batch"] // 4)  # [micro rows, …]
                assert weight or activation, (application, dtype, shape)
