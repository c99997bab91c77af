"""``jaxmerge bench merge``: materialise merged ΔW at Llama-3.1-8B shapes and compare with the
machine's float32 matmul peak and with PEFT/PyTorch folding the same adapters.

k adapters (default 30) are drawn with the real pool's (rank, alpha, target modules) mix
(``jaxmerge.shapes``: the shapes file when found, else built-in proportions); their factors are
random. For N layers (default 2) and every targeted module the benchmark measures, in one run:

* jaxmerge: ``linear`` (Σ_i s_i/k·B_i·A_i as one matmul over the rank-concatenated factors), one
  jitted call per layer, each layer's deltas freed before the next;
* peak: the fastest float32 4096³ matmul (JAX, and torch for reference);
* PEFT: ``peft.tuners.lora.Linear.get_delta_weight`` per adapter, weighted and summed in torch on
  CPU (how the authors' release folds adapters);
* TIES and TSV on ``--method-layers`` layers at the same shapes.

Useful work counts 2·out·in·Σr FLOPs per module and layer (Σr over the adapters that target the
module). Memory: the process's peak RSS above the pre-stack baseline against "stacks + one layer's
deltas", and XLA's own plan for one merge call (``compiled.memory_analysis()``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--layers", type=int, default=2, help="layers merged (32 = all of Llama-3.1-8B)")
    parser.add_argument("--k", type=int, default=30, help="adapters merged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-shapes", default=None, help="pool shapes JSON (default: $JAXMERGE_POOL_SHAPES or "
                        "../shared/data/llama31_8b_pool_shapes.json, else built-in proportions)")
    parser.add_argument("--method-layers", type=int, default=1, help="layers for the TIES and TSV timings (0 = skip)")
    parser.add_argument("--density", type=float, default=0.8, help="TIES density (1 − p)")
    parser.add_argument("--tsv-k", type=int, default=8)
    parser.add_argument("--with-tsv", action="store_true", help="also time TSV (off by default: at Llama shapes "
                        "the jitted TSV has been seen to hang inside XLA:CPU on this machine; BUILD_NOTES)")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT/PyTorch baseline")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the layers (best is kept)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")


def _rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _rss_bytes()


def matmul_peak(n: int = 4096, repeats: int = 5) -> dict:
    """Fastest float32 n³ matmul, GFLOP/s, in JAX and in torch."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(ta, tb)
    tbest = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(ta, tb)
        tbest = min(tbest, time.perf_counter() - t)
    flops = 2.0 * n ** 3
    return {"jax_gflops": flops / best / 1e9, "torch_gflops": flops / tbest / 1e9}


def synth_pool(config, adapters, seed: int, std: float = 0.02):
    """Random float32 factors of these shapes, generated module by module in NumPy (no transient
    copies beyond one module's stack)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..shapes import abstract_pool
    from ..stacks import ModuleStack, Pool

    abstract = abstract_pool(config, adapters, jnp.float32)
    rng = np.random.default_rng(seed)
    scale = jnp.asarray([s.alpha / s.r for s in adapters], jnp.float32)
    L = config.num_hidden_layers
    mods = {}
    for m, st in abstract.modules.items():
        a = rng.standard_normal(st.a.shape, dtype=np.float32)
        a *= std
        a = jax.device_put(a)
        b = rng.standard_normal(st.b.shape, dtype=np.float32)
        b *= std
        b = jax.device_put(b)
        present = jnp.asarray(np.repeat((np.array(st.ranks) > 0)[:, None], L, 1))
        mods[m] = ModuleStack(a, b, scale, present, st.ranks)
    return Pool(mods, abstract.names)


def _timed_layers(fn, pool, layers: int, label: str, repeats: int = 1) -> tuple[float, float]:
    """(compile seconds, best run seconds) of ``fn(pool, l)`` over layers 0..layers-1."""
    import jax
    from tqdm import tqdm

    t = time.perf_counter()
    compiled = jax.jit(fn).lower(pool, 0).compile()
    compile_s = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for l in tqdm(range(layers), desc=label, unit="layer", file=sys.stderr, leave=False):
            jax.block_until_ready(compiled(pool, l))
        best = min(best, time.perf_counter() - t)
    return compile_s, best


def peft_fold(pool, weights, layers: int) -> tuple[float, dict]:
    """Seconds for PEFT to fold the pool layer by layer (Σ_i w_i·get_delta_weight(i) per module),
    and layer 0's results (for the agreement check). Building the layers is not timed."""
    import numpy as np
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear
    from tqdm import tqdm

    layers_peft = {}
    for m, st in pool.modules.items():
        o, d = st.b.shape[1], st.a.shape[2]
        base = torch.nn.Linear(d, o, bias=False)
        names = [f"a{i}" for i, r in enumerate(st.ranks) if r]
        layer = None
        for i, r in enumerate(st.ranks):
            if not r:
                continue
            alpha = float(st.scale[i]) * r
            cfg = LoraConfig(r=r, lora_alpha=alpha)
            if layer is None:
                layer = LoraLinear(base, f"a{i}", config=cfg, r=r, lora_alpha=alpha)
            else:
                layer.update_layer(f"a{i}", r=r, lora_alpha=alpha, config=cfg)
        layers_peft[m] = (layer, names)

    total, first = 0.0, {}
    a_np = {m: np.asarray(st.a) for m, st in pool.modules.items()}
    b_np = {m: np.asarray(st.b) for m, st in pool.modules.items()}
    w = [float(x) for x in np.asarray(weights)]
    with torch.no_grad():
        for l in tqdm(range(layers), desc="peft", unit="layer", file=sys.stderr, leave=False):
            for m, st in pool.modules.items():
                layer, names = layers_peft[m]
                off = st.offsets
                for name in names:
                    i = int(name[1:])
                    layer.lora_A[name].weight.copy_(torch.from_numpy(a_np[m][l, off[i]:off[i + 1]]))
                    layer.lora_B[name].weight.copy_(torch.from_numpy(b_np[m][l, :, off[i]:off[i + 1]]))
                t = time.perf_counter()
                acc = None
                for name in names:
                    dw = layer.get_delta_weight(name) * w[int(name[1:])]
                    acc = dw if acc is None else acc.add_(dw)
                total += time.perf_counter() - t
                if l == 0:
                    first[m] = acc.numpy()
                del acc
    return total, first


def run(args) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..config import LLAMA_3_1_8B
    from ..merge import linear, ties, tsv
    from ..merge._groups import layer_window
    from ..shapes import draw, load_shapes

    if args.layers < 1 or args.k < 1:
        print("jaxmerge bench merge: --layers and --k must be positive", file=sys.stderr)
        return 2
    shapes, source = load_shapes(args.pool_shapes)
    adapters = draw(shapes, args.k, args.seed)
    config = dataclasses.replace(LLAMA_3_1_8B, num_hidden_layers=args.layers)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    log(f"shapes: {source}; k={len(adapters)} ranks={sorted(s.r for s in adapters)}")
    peak = matmul_peak()
    rss_before = _current_rss_bytes()
    pool = synth_pool(config, adapters, args.seed)
    stack_bytes = sum(s.a.nbytes + s.b.nbytes for s in pool.modules.values())
    layer_delta_bytes = sum(s.b.shape[1] * s.a.shape[2] * 4 for s in pool.modules.values())
    sum_r = {m: int(sum(s.ranks)) for m, s in pool.modules.items()}
    useful_flops = sum(2.0 * s.b.shape[1] * s.a.shape[2] * sum(s.ranks) for s in pool.modules.values()) * args.layers
    n = len(adapters)
    w = jnp.full((n,), 1.0 / n, jnp.float32)

    def merge_layer(p, l):
        return {m: linear(layer_window(s, l), w) for m, s in p.modules.items()}

    compile_s, jax_s = _timed_layers(merge_layer, pool, args.layers, "jaxmerge", args.repeats)
    rss_peak = _rss_bytes()
    mem = jax.jit(merge_layer).lower(pool, 0).compile().memory_analysis()
    xla_plan = None if mem is None else {"argument_bytes": int(mem.argument_size_in_bytes),
                                         "output_bytes": int(mem.output_size_in_bytes),
                                         "temp_bytes": int(mem.temp_size_in_bytes)}
    ref0 = {m: np.asarray(d[0]) for m, d in jax.jit(merge_layer)(pool, 0).items()}

    result = {
        "shapes_source": source, "k": n, "layers": args.layers, "seed": args.seed,
        "ranks": [s.r for s in adapters], "sum_r_per_module": sum_r,
        "useful_gflop": useful_flops / 1e9,
        "jaxmerge_seconds": jax_s, "jaxmerge_compile_seconds": compile_s,
        "useful_gflops": useful_flops / jax_s / 1e9,
        "peak_gflops": max(peak["jax_gflops"], peak["torch_gflops"]),
        "peak_jax_gflops": peak["jax_gflops"], "peak_torch_gflops": peak["torch_gflops"],
        "memory": {"stack_bytes": stack_bytes, "one_layer_delta_bytes": layer_delta_bytes,
                   "budget_bytes": stack_bytes + layer_delta_bytes,
                   "rss_before_stacks_bytes": rss_before, "rss_peak_bytes": rss_peak,
                   "rss_peak_above_baseline_bytes": rss_peak - rss_before, "xla_plan_one_layer": xla_plan},
        "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__, "device": str(jax.devices()[0].device_kind),
    }
    result["fraction_of_peak"] = result["useful_gflops"] / result["peak_gflops"]
    result["memory"]["within_budget"] = result["memory"]["rss_peak_above_baseline_bytes"] <= result["memory"]["budget_bytes"]
    log(f"jaxmerge linear: {args.layers} layers in {jax_s:.3f} s (compile {compile_s:.1f} s) = "
        f"{result['useful_gflops']:.0f} useful GFLOP/s; peak {result['peak_gflops']:.0f} GFLOP/s "
        f"(jax {peak['jax_gflops']:.0f}, torch {peak['torch_gflops']:.0f}) → {result['fraction_of_peak']:.2f} of peak")
    m = result["memory"]
    log(f"memory: peak RSS above baseline {m['rss_peak_above_baseline_bytes'] / 2**30:.2f} GiB vs stacks "
        f"{stack_bytes / 2**30:.2f} + one layer's deltas {layer_delta_bytes / 2**30:.2f} GiB")

    if args.method_layers > 0:
        ml = min(args.method_layers, args.layers)

        def ties_layer(p, l):
            return {m: ties(layer_window(s, l), w, args.density, "total") for m, s in p.modules.items()}

        def tsv_layer(p, l):
            return {m: tsv(layer_window(s, l), args.tsv_k, w) for m, s in p.modules.items()}

        c, t = _timed_layers(ties_layer, pool, ml, "ties")
        result["ties"] = {"layers": ml, "seconds": t, "seconds_per_layer": t / ml, "compile_seconds": c,
                          "density": args.density}
        log(f"ties (density {args.density}): {t / ml:.2f} s per layer (compile {c:.1f} s)")
        if args.with_tsv:
            c, t = _timed_layers(tsv_layer, pool, ml, "tsv")
            result["tsv"] = {"layers": ml, "seconds": t, "seconds_per_layer": t / ml, "compile_seconds": c,
                             "k": args.tsv_k}
            log(f"tsv (k {args.tsv_k}): {t / ml:.2f} s per layer (compile {c:.1f} s)")
        else:
            result["tsv"] = None
            log("tsv: not timed (pass --with-tsv; see BUILD_NOTES for the open XLA:CPU hang at these shapes)")

    if not args.no_peft:
        peft_s, first = peft_fold(pool, w, args.layers)
        err = max(float(np.abs(first[m] - ref0[m]).max() / max(np.abs(first[m]).max(), 1e-30)) for m in first)
        result.update(peft_seconds=peft_s, peft_gflops=useful_flops / peft_s / 1e9,
                      speedup_vs_peft=peft_s / jax_s, peft_max_rel_diff_layer0=err)
        log(f"peft get_delta_weight fold: {peft_s:.2f} s ({result['peft_gflops']:.0f} GFLOP/s) → "
            f"jaxmerge {result['speedup_vs_peft']:.1f}× faster; max rel diff {err:.1e}")
    result["load_average_end"] = list(os.getloadavg())

    text = json.dumps(result, indent=1)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    if args.json:
        print(text)
    return 0
