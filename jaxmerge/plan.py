"""Compiled memory plans: the coefficient-training step for real shapes, without the weights.

``jaxmerge plan --model llama-3.1-8b --k 30 --devices 1`` builds abstract params and LoRA stacks
(``ShapeDtypeStruct`` only), lowers and compiles the ``ours`` training step (module-granularity
leaky-ReLU coefficients, factored application, AdamW, remat per layer) for an N-device mesh —
simulated on CPU with ``--xla_force_host_platform_device_count`` — and reports XLA's per-device
memory analysis (arguments, temporaries, outputs), FLOPs per step and an estimated step time at a
stated device peak and utilisation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16
DEFAULT_MFU = 0.4


def compile_step(config, drawn, devices: int, *, batch: int, seq: int, tensor: int, dtype):
    """Lower and compile the ``ours`` step (module-granularity leaky-ReLU coefficients, factored
    application, AdamW, per-layer remat) on abstract inputs, every weight sharded in strict mode
    (``ShardingError`` rather than a replicated weight). Returns (compiled, padded abstract pool, mesh)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from . import shapes as shp
    from .adaptive.objectives import Coefficients
    from .adaptive.train import UpdateRule, optimizer, train_step
    from .merge.coefficients import coefficient_shape
    from .params import abstract_params
    from .sharding import ShardingRules, make_mesh, param_shardings
    from .stacks import Pool, pad_rows, pool_shardings

    if jax.device_count() < devices:
        raise RuntimeError(f"{devices} devices requested, {jax.device_count()} present")
    mesh = make_mesh(data=devices // tensor, tensor=tensor)
    rules = ShardingRules()
    # fsdp-style: the stacks' rank rows are split over data (so their model dim is not: one mesh axis per array)
    stack_rules = ShardingRules(rank="data", embed=None)
    params = abstract_params(config, dtype)
    pool = shp.abstract_pool(config, drawn, dtype)
    pool = Pool({m: pad_rows(st, mesh.shape["data"]) for m, st in pool.modules.items()}, pool.names)

    objective, rule = Coefficients(config, "module", "leaky_relu", remat=True), UpdateRule()
    w = {"w": jax.ShapeDtypeStruct(coefficient_shape("module", len(drawn), config.num_hidden_layers,
                                                     len(pool.modules)), jnp.float32)}
    opt = optimizer(rule)
    rep = NamedSharding(mesh, P())
    placed = lambda tree, sh: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                         {"trainable": w, "opt": jax.eval_shape(opt.init, w)})
    # strict: a dimension the mesh cannot shard as the rules say is an error, never a silently replicated weight
    frozen = {"params": placed(params, param_shardings(config, params, mesh, rules, strict=True)),
              "stacks": placed(pool, pool_shardings(pool, mesh, stack_rules, strict=True)).modules}
    tok_sh = rules.sharding(mesh, (None, "batch", None), (1, batch, seq), strict=True)
    mb = {k: jax.ShapeDtypeStruct((1, batch, seq), jnp.int32, sharding=tok_sh)
          for k in ("tokens", "attention_mask", "loss_mask")}
    with jax.set_mesh(mesh):
        lrs = jax.ShapeDtypeStruct((2,), jnp.float32, sharding=rep)
        lowered = train_step.lower(state, frozen, mb, lrs, objective=objective, rule=rule)
        return lowered.compile(), pool, mesh


def memory(compiled) -> dict:
    """XLA's per-device memory analysis in bytes, with ``total`` = arguments + temporaries + outputs − aliased."""
    m = compiled.memory_analysis()
    d = {"arguments": int(m.argument_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
         "outputs": int(m.output_size_in_bytes), "aliased": int(m.alias_size_in_bytes)}
    d["total"] = d["arguments"] + d["temporaries"] + d["outputs"] - d["aliased"]
    return d


def random_arguments(compiled, vocab_size: int, seed: int = 0):
    """Arrays of exactly the compiled step's argument shapes, dtypes and shardings, generated on the
    devices (no host copy of an 8B model): floats N(0, 0.01²), optimizer state 0, token ids in
    [1, min(vocab, 100)), every other integer (masks) 1, booleans True."""
    import jax
    import jax.numpy as jnp

    abstract = compiled.args_info[0]
    shardings = compiled.input_shardings[0]
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    # arguments the step never reads (the stacks' ``present`` masks) have no sharding: replicate them
    flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: x is None)
    mesh = next(x.mesh for x in flat_sh if x is not None)
    flat_sh = [jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if x is None else x for x in flat_sh]
    assert len(flat_sh) == len(flat), (len(flat_sh), len(flat))
    fills = []
    for path, a in flat:
        shape, dtype = a.shape, a._aval.dtype if not hasattr(a, "dtype") else a.dtype
        name = jax.tree_util.keystr(path)
        if dtype == jnp.bool_:
            fill = lambda k, shape=shape: jnp.ones(shape, jnp.bool_)
        elif "'opt'" in name:  # optimizer moments and counters start at zero (a negative ν would be NaN)
            fill = lambda k, shape=shape, dtype=dtype: jnp.zeros(shape, dtype)
        elif jnp.issubdtype(dtype, jnp.integer) and "tokens" in name:
            fill = lambda k, shape=shape, dtype=dtype: jax.random.randint(k, shape, 1, min(vocab_size, 100), dtype)
        elif jnp.issubdtype(dtype, jnp.integer):
            fill = lambda k, shape=shape, dtype=dtype: jnp.ones(shape, dtype)
        else:
            fill = lambda k, shape=shape, dtype=dtype: 0.01 * jax.random.normal(k, shape, dtype)
        fills.append(fill)
    make = lambda key: [f(jax.random.fold_in(key, i)) for i, f in enumerate(fills)]  # one program, one compile
    return jax.tree.unflatten(treedef, jax.jit(make, out_shardings=flat_sh)(jax.random.key(seed)))


def measure_step(compiled, vocab_size: int, steps: int = 3) -> dict:
    """Run the compiled step ``steps`` + 1 times on random arguments (the first is a warm-up) and
    measure it: median seconds per step, and memory — where the backend reports it (GPU/TPU) the
    devices' peak bytes in use (arguments included) and its growth during the steps, else the
    process's peak RSS growth during the steps (CPU; the kernel's peak mark is reset just before the
    first step; ``None`` where it cannot be reset)."""
    import jax

    from .memstat import current_rss, peak_rss, reset_peak_rss

    state, frozen, mb, lrs = random_arguments(compiled, vocab_size)
    jax.block_until_ready((state, frozen, mb, lrs))
    devs = jax.local_devices()
    stats = [d.memory_stats() or {} for d in devs]
    on_device = all("peak_bytes_in_use" in s for s in stats)
    in_use = [s.get("bytes_in_use", 0) for s in stats]
    reset = False if on_device else reset_peak_rss()
    rss_before = current_rss()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        state, loss = compiled(state, frozen, mb, lrs)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - t)
    out = {"steps": steps, "step_seconds": float(np.median(times[1:])) if steps else None,
           "first_step_seconds": times[0], "loss": float(loss)}
    if on_device:  # the peak since the process started includes the arguments; the growth does not
        peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devs]
        out.update(memory_source="device peak_bytes_in_use", peak_bytes_per_device=int(max(peaks)),
                   bytes_in_use_before_per_device=int(max(in_use)),
                   peak_growth_bytes_per_device=int(max(p - u for p, u in zip(peaks, in_use))))
    else:
        out.update(memory_source="process peak RSS growth (CPU)",
                   peak_growth_bytes=peak_rss() - rss_before if reset else None)
    return out


def plan(model: str, k: int, devices: int, *, pool_shapes: str | None = None, batch: int = 8, seq: int = 512,
         tensor: int = 1, dtype: str = "bfloat16", seed: int = 0, peak_tflops: float = DEFAULT_PEAK_TFLOPS,
         mfu: float = DEFAULT_MFU, measure: int = 0) -> dict:
    """The plan as a dict (see module docstring); ``devices`` devices must exist (``run`` simulates them).
    ``measure`` > 0 also runs that many steps on random arrays of the real shapes (``measure_step``).

    XLA's CPU backend computes bf16 matmuls in float32 and keeps float32 copies of bf16 weights as
    temporaries, which no GPU/TPU backend does. For bf16 on CPU the plan therefore also compiles the
    same step in float32 and reports ``accelerator_estimate_bytes`` = bf16 arguments + the float32
    compile's temporaries (an upper bound: activations counted at 4 bytes).
    """
    import jax
    import jax.numpy as jnp

    from . import shapes as shp
    from .config import known_or_json

    config = known_or_json(model)
    all_shapes, source = shp.load_shapes(pool_shapes)
    drawn = shp.draw(all_shapes, k, seed)
    t0 = time.perf_counter()
    compiled, pool, mesh = compile_step(config, drawn, devices, batch=batch, seq=seq, tensor=tensor,
                                        dtype=jnp.dtype(dtype))
    compile_s = time.perf_counter() - t0
    per_device = memory(compiled)
    estimate = dict(per_device)
    if jnp.dtype(dtype) != jnp.float32 and jax.default_backend() == "cpu":
        f32, _, _ = compile_step(config, drawn, devices, batch=batch, seq=seq, tensor=tensor, dtype=jnp.float32)
        estimate["temporaries"] = memory(f32)["temporaries"]
        estimate["total"] = estimate["arguments"] + estimate["temporaries"] + estimate["outputs"] - estimate["aliased"]
    flops = analytic_flops(config, pool, batch, seq)
    ranks = [s.r for s in drawn]
    step_s = flops / devices / (peak_tflops * 1e12 * mfu)
    measured = None
    if measure > 0:
        measured = measure_step(compiled, config.vocab_size, measure)
        measured["tflops_per_device"] = flops / devices / measured["step_seconds"] / 1e12
    return {
        "model": model, "k": len(drawn), "devices": devices, "mesh": dict(mesh.shape), "batch": batch, "seq": seq,
        "dtype": dtype, "backend": jax.default_backend(), "pool_shapes": source,
        "rank_sum_per_module": {m: int(sum(s.ranks)) for m, s in pool.modules.items()},
        "adapter_params": int(sum(np.prod(s.a.shape) + np.prod(s.b.shape) for s in pool.modules.values())),
        "ranks": {"min": min(ranks), "max": max(ranks), "mean": float(np.mean(ranks))},
        "per_device_bytes": per_device, "accelerator_estimate_bytes": estimate,
        "flops_per_step": flops, "xla_flops_per_device": float((compiled.cost_analysis() or {}).get("flops", -1)),
        "peak_tflops": peak_tflops, "mfu": mfu, "estimated_step_seconds": step_s,
        "estimated_100_steps_seconds": 100 * step_s, "compile_seconds": compile_s,
        "device_kind": jax.devices()[0].device_kind, "measured": measured,
    }


def analytic_flops(config, pool, batch: int, seq: int) -> float:
    """FLOPs of one coefficient-training step with per-layer remat: forward, recomputed forward and
    backward (activation gradients ≈ 2× forward; the frozen weights get no gradient).

    Forward per token: 2·Σ(out·in) over projections and the LM head, 4·T·H·K per layer for attention
    (causal mask not exploited), 2·(in+out)·R per factored module."""
    from .config import MODULES
    c, tokens = config, batch * seq
    dense = sum(o * i for o, i in map(c.module_shape, MODULES))
    lora = sum(sum(s.ranks) * sum(c.module_shape(m)) for m, s in pool.modules.items())
    attn = 4 * seq * c.num_attention_heads * c.head_dim
    per_token_layers = c.num_hidden_layers * (2 * dense + 2 * lora + attn)
    head = 2 * c.vocab_size * c.hidden_size
    fwd = tokens * (per_token_layers + head)
    return float(fwd + tokens * per_token_layers + 2 * fwd)  # forward + remat forward of layers + backward


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="compiled per-device memory plan of the coefficient-training step")
    from .config import KNOWN
    p.add_argument("--model", default="llama-3.1-8b", help=f"{' | '.join(KNOWN)} | PATH/config.json")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--pool-shapes", default=None, help="JSON of adapter shapes (default: the real pool's if found)")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--tensor", type=int, default=1, help="size of the tensor-parallel mesh axis")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS)
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure", type=int, default=0, metavar="STEPS",
                   help="also run STEPS steps on random arrays of these shapes and measure time and memory "
                        "(on an accelerator: device peak bytes; on CPU: peak RSS growth)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from .config import known_or_json
    from .errors import cli_errors
    with cli_errors("jaxmerge plan"):
        known_or_json(args.model)  # an unknown model fails here, naming the known ones, before any compile
        return _run(args)


def _run(args) -> int:
    import jax
    if jax.device_count() < args.devices:
        if os.environ.get("_JAXMERGE_PLAN_CHILD"):
            raise RuntimeError("could not simulate the requested device count")
        # Simulate the mesh on CPU: re-run this command in a child with N host devices.
        env = dict(os.environ, _JAXMERGE_PLAN_CHILD="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                              f" --xla_force_host_platform_device_count={args.devices}").strip())
        return subprocess.call([sys.executable, "-m", "jaxmerge", *sys.argv[1:]], env=env)
    r = plan(args.model, args.k, args.devices, pool_shapes=args.pool_shapes, batch=args.batch, seq=args.seq,
             tensor=args.tensor, dtype=args.dtype, seed=args.seed, peak_tflops=args.peak_tflops, mfu=args.mfu,
             measure=args.measure)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    b = r["per_device_bytes"]
    gib = lambda x: f"{x / 2**30:8.2f} GiB"
    print(f"{r['model']}  k={r['k']}  devices={r['devices']} mesh={r['mesh']}  batch {r['batch']}×{r['seq']}  {r['dtype']}")
    print(f"pool shapes: {r['pool_shapes']}  ranks {r['ranks']}  adapter params {r['adapter_params'] / 1e9:.2f} B")
    e = r["accelerator_estimate_bytes"]
    print(f"  per device  {'compiled (' + r['backend'] + ')':>22}  {'accelerator estimate':>22}")
    for key in ("arguments", "temporaries", "outputs", "aliased", "total"):
        print(f"  {key:<12}{gib(b[key]):>22}  {gib(e[key]):>22}")
    print(f"FLOPs/step {r['flops_per_step'] / 1e12:.1f} T; at {r['peak_tflops']:.0f} TFLOP/s × {r['mfu']:.0%} "
          f"utilisation: {r['estimated_step_seconds']:.2f} s/step, {r['estimated_100_steps_seconds'] / 60:.1f} min "
          f"for 100 steps (compiled in {r['compile_seconds']:.1f} s)")
    m = r["measured"]
    if m:
        if "peak_bytes_per_device" in m:
            mem = (f"device peak {gib(m['peak_bytes_per_device'])} (growth during the steps "
                   f"{gib(m['peak_growth_bytes_per_device'])})")
        elif m["peak_growth_bytes"] is not None:
            mem = f"peak RSS growth {gib(m['peak_growth_bytes'])}"
        else:
            mem = "peak RSS growth not measurable here"
        print(f"measured on {r['device_kind']}: {m['step_seconds']:.3f} s/step (median of {m['steps']}; first "
              f"{m['first_step_seconds']:.1f} s), {m['tflops_per_device']:.1f} TFLOP/s per device; {mem}")
    return 0
