"""``jaxmerge bench merge``: materialise merged ΔW at Llama-3.1-8B shapes (or ``--model``'s) and
compare with the machine's float32 matmul peak and with PEFT/PyTorch folding the same adapters.

k adapters (default 30) are drawn with the real pool's (rank, alpha, target modules) mix
(``jaxmerge.shapes``: the shipped paper-llama31-8b manifest's recorded configs by default); their factors are
random. For N layers (default 2) and every targeted module the benchmark measures, in one run:

* jaxmerge: ``linear_layer_into`` (Σ_i s_i/k·B_i·A_i as one matmul over the rank-concatenated
  factors), one jitted call per module and layer (largest first), each ΔW written into a recycled
  buffer of its shape (one per distinct module shape, donated back each call): the workload of a
  consumer that uses each ΔW (folds it, writes it) before the next one of the same shape;
* peak: the fastest float32 4096³ matmul, JAX's and torch's, both into preallocated outputs (the
  larger is "the peak"); JAX's compiled with the same dot library as the merge (``--xla-cpu-dot``:
  ``auto`` = oneDNN on an x86-64 CPU, else XLA's default; ``jaxmerge.xla_cpu``; the JSON's
  ``xla_cpu_dot`` says what the merge ran);
* PEFT: ``peft.tuners.lora.Linear.get_delta_weight`` per adapter, weighted and summed in torch on
  CPU, a fresh tensor per delta as PEFT does it (how the authors' release folds adapters); its
  layer 0 is checked against jaxmerge's (computed through the same recycled buffers);
* TIES and TSV on ``--method-layers`` layers at the same shapes (fresh arrays, a layer's deltas
  held until the layer is done), compiled with XLA's default dot library (TSV's program does not
  compile under XLA's oneDNN fusion, ``jaxmerge.xla_cpu``).

The machine is shared, so ``--rounds`` interleaves (both matmul peaks, one merge pass, one pass of
XLA's bare GEMM on the same operands into the same buffers) and keeps the best of each; the
per-round ratio is reported too, and PEFT (run once) is compared with jaxmerge's median round.
Useful work counts 2·out·in·Σr FLOPs per module and layer (Σr over the adapters that target the
module). Memory: before anything else of these shapes is allocated, the kernel's peak-RSS mark is
reset, the output buffers are allocated and one untimed merge pass runs; its peak above that
baseline (stacks held) is the merge's own footprint, buffers included, compared with one layer's
deltas (the budget is stacks + one layer's deltas); XLA's workspace per module call
(``memory_analysis``) is reported beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

from ..memstat import current_rss, peak_rss, reset_peak_rss
from .. import xla_cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--layers", type=int, default=2, help="layers merged (32 = all of Llama-3.1-8B)")
    parser.add_argument("--k", type=int, default=30, help="adapters merged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-shapes", default=None, help="pool shapes JSON or pool manifest (default: "
                        "$JAXMERGE_POOL_SHAPES or the shipped paper-llama31-8b manifest's recorded configs)")
    parser.add_argument("--method-layers", type=int, default=1, help="layers for the TIES and TSV timings (0 = skip)")
    parser.add_argument("--density", type=float, default=0.8, help="TIES density (1 − p)")
    parser.add_argument("--tsv-k", type=int, default=8)
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT/PyTorch baseline")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of (matmul peaks, merge pass); "
                        "the best of each is kept")
    parser.add_argument("--model", default="llama-3.1-8b", help="llama-3.1-8b | llama-3.2-1b | PATH/config.json "
                        "(shapes only)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    parser.add_argument("--xla-cpu-dot", choices=xla_cpu.DOT_CHOICES, default="auto",
                        help="XLA:CPU dot library of the linear merge and JAX's matmul peak: auto (oneDNN on an x86-64 "
                        "CPU unless $JAXMERGE_XLA_CPU_DOT=default or XLA_FLAGS names one), default (XLA's: YNNPACK in "
                        "jax 0.10) or onednn; TIES/TSV always XLA's default; the JSON reports what ran")


PEAK_N = 4096
PEAK_FLOPS = 2.0 * PEAK_N ** 3


def _matmul_into(dot: str):
    """``f(out, x, y) = x @ y`` written into the donated ``out`` (kept though unused, so that XLA
    aliases the result to its buffer), compiled per shape with ``dot``'s library (``xla_cpu``)."""
    import jax

    jitted = jax.jit(lambda out, x, y: x @ y, donate_argnums=0, keep_unused=True)
    compiled = {}

    def call(out, x, y):
        key = (out.shape, x.shape, y.shape)
        if key not in compiled:
            compiled[key] = xla_cpu.compile(jitted.lower(out, x, y), dot)
        return compiled[key](out, x, y)

    return call


def _peak_arrays(dot: str):
    """Operands for the float32 PEAK_N³ matmul peak in JAX (jitted, writing into a donated output
    buffer) and in torch (``out=``): both with preallocated outputs, like the merge pass, so that
    neither pays for faulting in fresh pages and the peak is the best this machine does."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (PEAK_N, PEAK_N), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (PEAK_N, PEAK_N), jnp.float32)
    mm = _matmul_into(dot)
    state = {"out": mm(jnp.zeros((PEAK_N, PEAK_N), jnp.float32), a, b).block_until_ready()}
    ta, tb, tout = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N), torch.empty(PEAK_N, PEAK_N)
    torch.matmul(ta, tb, out=tout)

    def jax_mm():
        state["out"] = mm(state["out"], a, b)
        state["out"].block_until_ready()

    return jax_mm, lambda: torch.matmul(ta, tb, out=tout)


def _time_matmuls(arrays, repeats: int = 3) -> tuple[float, float]:
    """Best seconds of the JAX and of the torch PEAK_N³ float32 matmul."""
    jax_mm, torch_mm = arrays
    best_jax = best_torch = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax_mm()
        best_jax = min(best_jax, time.perf_counter() - t)
        t = time.perf_counter()
        torch_mm()
        best_torch = min(best_torch, time.perf_counter() - t)
    return best_jax, best_torch


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
        mods[m] = ModuleStack(a, b, scale, present, jnp.asarray(st.owner))
    return Pool(mods, abstract.names)


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


def _modules_by_size(pool) -> list[str]:
    """Largest delta first (for TIES and TSV, which hold a layer's deltas: the modules computed last,
    with all others' deltas already held, have the smallest workspaces)."""
    return sorted(pool.modules, key=lambda m: -pool.modules[m].b.shape[1] * pool.modules[m].a.shape[2])


def _shape(pool, m) -> tuple[int, int]:
    st = pool.modules[m]
    return st.b.shape[1], st.a.shape[2]


def _timed_layers(run_layer, layers: int, label: str) -> float:
    """Seconds for ``run_layer(l)`` (dispatches one layer's calls, returns the arrays to wait on)
    over the layers: one sync per layer, a progress bar."""
    import jax
    from tqdm import tqdm

    t = time.perf_counter()
    for l in tqdm(range(layers), desc=label, unit="layer", file=sys.stderr, leave=False):
        jax.block_until_ready(run_layer(l))
    return time.perf_counter() - t


def _recycle(call, pool, buffers: dict):
    """``run_layer`` for ``_timed_layers``: every module's ``call(m, buffer, l)`` (which donates the
    buffer of its shape and returns the new one), largest first."""
    def run_layer(l):
        for m in _modules_by_size(pool):
            sh = _shape(pool, m)
            buffers[sh] = call(m, buffers[sh], l)
        return list(buffers.values())
    return run_layer


def _compile_per_module(lower, pool, dot: str = "default") -> tuple[dict, float, dict]:
    """AOT-compile ``lower(module, stack)`` (a ``jax.stages.Lowered``) per module with ``dot``'s
    library (``xla_cpu``): (executables, seconds, XLA's workspace bytes per module)."""
    t = time.perf_counter()
    fns, temp = {}, {}
    for m, st in pool.modules.items():
        fns[m] = xla_cpu.compile(lower(m, st), dot)
        mem = fns[m].memory_analysis()
        temp[m] = None if mem is None else int(mem.temp_size_in_bytes)
    return fns, time.perf_counter() - t, temp


def run(args) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..config import KNOWN, LlamaConfig
    from ..merge import linear_layer_into, ties, tsv
    from ..merge._groups import layer_window, static_ranks
    from ..shapes import draw, load_shapes

    if args.layers < 1 or args.k < 1 or args.rounds < 1:
        print("jaxmerge bench merge: --layers, --k and --rounds must be positive", file=sys.stderr)
        return 2
    base = KNOWN[args.model] if args.model in KNOWN else LlamaConfig.from_json(args.model)
    shapes, source = load_shapes(args.pool_shapes)
    adapters = draw(shapes, args.k, args.seed)
    config = dataclasses.replace(base, num_hidden_layers=args.layers)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"model {args.model}; shapes: {source}; k={len(adapters)} ranks={sorted(s.r for s in adapters)}")

    rss_before = current_rss()
    pool = synth_pool(config, adapters, args.seed)
    n = len(adapters)
    w = jnp.full((n,), 1.0 / n, jnp.float32)
    stack_bytes = sum(s.a.nbytes + s.b.nbytes for s in pool.modules.values())
    layer_delta_bytes = sum(s.b.shape[1] * s.a.shape[2] * 4 for s in pool.modules.values())
    useful_flops = sum(2.0 * s.b.shape[1] * s.a.shape[2] * sum(s.ranks) for s in pool.modules.values()) * args.layers
    shapes_out = sorted({_shape(pool, m) for m in pool.modules}, key=lambda sh: -sh[0] * sh[1])
    f32 = jnp.float32
    compiled, compile_s, temps = _compile_per_module(
        lambda m, st: linear_layer_into.lower(jax.ShapeDtypeStruct(_shape(pool, m), f32), st, w, 0), pool,
        args.xla_cpu_dot)
    fns = {m: (lambda buf, st, l, c=c: c(buf, st, w, l)) for m, c in compiled.items()}
    dot_lib = sorted({xla_cpu.dot_backend(c) for c in compiled.values()})
    if args.xla_cpu_dot == "onednn" and dot_lib != ["onednn"]:
        log(f"jaxmerge bench merge: oneDNN asked for, but the merge's dots run on {','.join(dot_lib)} "
            f"(JAX's backend: {jax.default_backend()})")
    peak_arrays = _peak_arrays(args.xla_cpu_dot)

    # Memory first, before anything else of these shapes is allocated and freed (freed heap blocks
    # could be reused unseen): the kernel's peak-RSS mark is reset, the output buffers (one per
    # module shape) are allocated and one merge pass runs; the peak above that baseline is the
    # merge's own footprint, buffers included.
    reset = reset_peak_rss()
    rss_base = current_rss()
    buffers = {sh: jnp.zeros(sh, f32) for sh in shapes_out}
    merge_layer = _recycle(lambda m, buf, l: fns[m](buf, pool.modules[m], l), pool, buffers)
    _timed_layers(merge_layer, args.layers, "jaxmerge (memory pass)")
    rss_peak = peak_rss()
    # layer 0 as the timed passes compute it (recycled buffers), copied out before each buffer is
    # reused, and checked against PEFT below
    ref0 = {}

    def merge_and_keep(m, buf, l):
        out = fns[m](buf, pool.modules[m], l)
        ref0[m] = np.array(out)  # a copy: the next module of this shape reuses the buffer
        return out

    _recycle(merge_and_keep, pool, buffers)(0)
    # XLA's own GEMM on exactly the merge's operands (every layer, contiguous, unscaled, into the
    # same recycled buffers; one sync per layer like the merge pass): what the merge would run at
    # with zero overhead of its own
    dot = _matmul_into(args.xla_cpu_dot)
    gemm_ops = [{m: (st.b[l], st.a[l]) for m, st in pool.modules.items()} for l in range(args.layers)]
    gemm_layer = _recycle(lambda m, buf, l: dot(buf, *gemm_ops[l][m]), pool, buffers)
    _timed_layers(gemm_layer, args.layers, "XLA GEMM (warm-up)")

    # Interleaved timed rounds (the machine is shared): each round times the JAX and torch float32
    # matmul peaks, one merge pass and one same-shape GEMM pass; the best of each is kept, and the
    # per-round ratio is reported too.
    best = {"jax": float("inf"), "torch": float("inf"), "merge": float("inf"), "gemm": float("inf")}
    ratios, merge_times = [], []
    for i in range(args.rounds):
        jax_mm, torch_mm = _time_matmuls(peak_arrays)
        t = _timed_layers(merge_layer, args.layers, f"jaxmerge round {i + 1}/{args.rounds}")
        t_gemm = _timed_layers(gemm_layer, args.layers, f"XLA GEMM round {i + 1}/{args.rounds}")
        best = {"jax": min(best["jax"], jax_mm), "torch": min(best["torch"], torch_mm), "merge": min(best["merge"], t),
                "gemm": min(best["gemm"], t_gemm)}
        merge_times.append(t)
        ratios.append((useful_flops / t) / (PEAK_FLOPS / min(jax_mm, torch_mm)))
    del peak_arrays, gemm_ops, buffers, merge_layer, gemm_layer
    peak = {"jax_gflops": PEAK_FLOPS / best["jax"] / 1e9, "torch_gflops": PEAK_FLOPS / best["torch"] / 1e9}
    jax_s = best["merge"]
    workspace = rss_peak - rss_base
    result = {
        "model": args.model, "shapes_source": source, "k": n, "layers": args.layers, "seed": args.seed,
        "rounds": args.rounds, "ranks": [s.r for s in adapters],
        "sum_r_per_module": {m: int(sum(s.ranks)) for m, s in pool.modules.items()},
        "useful_gflop": useful_flops / 1e9,
        "jaxmerge_seconds": jax_s, "jaxmerge_compile_seconds": compile_s,
        "useful_gflops": useful_flops / jax_s / 1e9,
        "peak_gflops": max(peak.values()), "peak_jax_gflops": peak["jax_gflops"],
        "peak_torch_gflops": peak["torch_gflops"],
        "fraction_of_peak_per_round": ratios,
        "jaxmerge_seconds_median": float(np.median(merge_times)),
        "xla_gemm_same_shapes_gflops": useful_flops / best["gemm"] / 1e9,
        "memory": {
            "stack_bytes": stack_bytes, "one_layer_delta_bytes": layer_delta_bytes,
            "output_buffer_shapes": [list(sh) for sh in shapes_out],
            "output_buffer_bytes": sum(4 * o * d for o, d in shapes_out),
            "budget_bytes": stack_bytes + layer_delta_bytes,
            "rss_before_stacks_bytes": rss_before, "rss_baseline_bytes": rss_base,
            "merge_peak_above_baseline_bytes": workspace if reset else None,
            "process_peak_rss_bytes": rss_peak,
            "xla_temp_bytes_per_module": temps,
        },
        "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__, "device": str(jax.devices()[0].device_kind),
        "xla_cpu_dot": ",".join(dot_lib), "xla_cpu_dot_asked": args.xla_cpu_dot,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    result["fraction_of_peak"] = result["useful_gflops"] / result["peak_gflops"]
    m = result["memory"]
    m["within_budget"] = None if not reset else stack_bytes + workspace <= m["budget_bytes"]
    log(f"jaxmerge linear: {args.layers} layers in {jax_s:.3f} s (compile {compile_s:.1f} s) = "
        f"{result['useful_gflops']:.0f} useful GFLOP/s; peak {result['peak_gflops']:.0f} GFLOP/s "
        f"(jax {peak['jax_gflops']:.0f}, torch {peak['torch_gflops']:.0f}) → {result['fraction_of_peak']:.2f} of peak "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)}); XLA's own GEMM on the same operand shapes "
        f"{result['xla_gemm_same_shapes_gflops']:.0f} GFLOP/s; dots by {result['xla_cpu_dot']}")
    if reset:
        log(f"memory: merge peak above the baseline (stacks held) {workspace / 2**30:.3f} GiB vs one layer's deltas "
            f"{layer_delta_bytes / 2**30:.3f} GiB (stacks {stack_bytes / 2**30:.2f} GiB; output buffers "
            f"{m['output_buffer_bytes'] / 2**30:.3f} GiB; largest XLA workspace "
            f"{max(t or 0 for t in temps.values()) / 2**30:.3f} GiB) → "
            f"{'within' if m['within_budget'] else 'OVER'} the budget")
    else:
        log("memory: cannot reset the peak RSS here (/proc/self/clear_refs); merge peak not measured")

    if args.method_layers > 0:
        ml = min(args.method_layers, args.layers)
        for name, fn, extra in (
                ("ties", lambda s, l, r: ties(layer_window(s, l), w, args.density, "total", r), {"density": args.density}),
                ("tsv", lambda s, l, r: tsv(layer_window(s, l), args.tsv_k, w, r), {"k": args.tsv_k})):
            # the rank structure is static (the stack's owner array is traced inside the jit)
            mfns, c, _ = _compile_per_module(
                lambda m, st, fn=fn: jax.jit(functools.partial(fn, r=static_ranks(st))).lower(st, 0), pool)
            t = _timed_layers(lambda l, f=mfns: [f[m](pool.modules[m], l) for m in _modules_by_size(pool)], ml, name)
            result[name] = {"layers": ml, "seconds": t, "seconds_per_layer": t / ml, "compile_seconds": c, **extra}
            log(f"{name} ({', '.join(f'{k} {v}' for k, v in extra.items())}): {t / ml:.2f} s per layer (compile {c:.1f} s)")

    if not args.no_peft:
        peft_s, first = peft_fold(pool, w, args.layers)
        err = max(float(np.abs(first[m] - ref0[m]).max() / max(np.abs(first[m]).max(), 1e-30)) for m in first)
        # PEFT runs once, so it is compared with jaxmerge's median round, not its best
        result.update(peft_seconds=peft_s, peft_gflops=useful_flops / peft_s / 1e9,
                      speedup_vs_peft=peft_s / result["jaxmerge_seconds_median"], peft_max_rel_diff_layer0=err)
        log(f"peft get_delta_weight fold: {peft_s:.2f} s ({result['peft_gflops']:.0f} GFLOP/s) → "
            f"jaxmerge {result['speedup_vs_peft']:.1f}× faster (median round); max rel diff {err:.1e}")
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
