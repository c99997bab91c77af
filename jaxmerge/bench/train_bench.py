"""``jaxmerge bench train``: tokens/s of the ``ours`` coefficient-training step, JAX vs PyTorch.

The step (paper App. C, REFERENCE §1): module-granularity coefficients ``w [k, L, M]`` (k = 30 pool
LoRAs, init 0), leaky-ReLU activation, the merged delta Σ_i act(w_i)·s_i·B_i·A_i applied factored or
dense per module as the engine chooses (``adaptive.train.choose_application``), next-token
cross-entropy on the answer tokens with the LM head at the answer positions only
(``answer_loss_sums``), AdamW (weight decay 0, warmup-cosine schedule), one jitted step with the
trainable and optimizer state donated: the engine's own ``objectives.Coefficients`` through
``train.train_step``, on the pool bucketed as ``run_method`` buckets it.

Against PyTorch in the same process, on the same weights (shared memory), batch and schedule
(``jaxmerge.bench.torch_ref``): the authors' rank-concatenated LoRA layer and PEFT with k separate
adapters, each with the full-logits loss and with the LM head on the answer rows only. Every side runs
the same steps from w = 0; its losses are compared step by step with the JAX side's
(``loss_first_step_abs_diff``, ``loss_max_abs_diff``), so all compute the same thing. The figure of
merit is jaxmerge's tokens/s over the best PyTorch variant's.

Shapes: ``--preset`` (several in one run: ``--preset all``) — SmolLM2-135M-Instruct's config and
Llama-3.1-8B's layer shapes with 2 layers — or ``--base CONFIG``, or the embedded default world's base;
random weights (speed does not depend on them). The k adapter shapes are drawn from the real pool's
shapes (``jaxmerge.shapes``); on a base narrower than 4096 (Llama-3.1-8B, whose pool they describe)
their ranks are scaled by ``hidden / 4096`` (at least 1), so the LoRA share of the work is the real
pool's at 8B; ``--no-scale-ranks`` keeps them.

Fairness: float32 everywhere, ``torch.set_num_threads`` = the CPUs this process may use (XLA's pool is
sized from the same mask), ``--warmup`` untimed steps each (JAX compilation, allocator warm-up), then
``--steps`` timed steps per side, sides alternating ``--repeats`` times; the best repeat counts (the
machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time

import numpy as np

REAL_HIDDEN = 4096  # Llama-3.1-8B, whose pool the shapes file describes
WARMUP = 0.1  # the schedule's warmup fraction (REFERENCE §1), on both sides


@dataclasses.dataclass(frozen=True)
class Preset:
    hf_config: dict        # config.json fields (transformers' names)
    batch: int
    seq: int
    about: str


SMOLLM2_135M = dict(  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json (REFERENCE §5)
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
    tie_word_embeddings=True, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2)
LLAMA_31_8B_2L = dict(  # meta-llama/Llama-3.1-8B-Instruct's config.json, 2 of its 32 layers
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
    tie_word_embeddings=False, max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128009)
PRESETS = {
    # PEFT keeps every adapter's [tokens, out] product for the backward of its scaling: at 8 x 128 tokens
    # the SmolLM2 run was SIGKILLed at 24 GB; 8 x 32 peaks at 14.5 GiB, the 8B one at 17.1 GiB (BUILD_NOTES)
    "smollm2-135m": Preset(SMOLLM2_135M, 8, 32, "SmolLM2-135M-Instruct's config, random weights"),
    "llama-3.1-8b-2layers": Preset(LLAMA_31_8B_2L, 8, 32, "Llama-3.1-8B's layer shapes, 2 layers, random weights"),
}


# --- setup -------------------------------------------------------------------------------------------
def _world_config() -> tuple[dict, str]:
    """(config.json dict of the embedded default world's base, where it came from)."""
    try:
        from experiments import synthetic, world, world_train
    except ImportError:
        dims, vocab, where = dict(hidden=64, layers=4, heads=4, kv_heads=2, ffn=128), 359, "built-in world dims"
    else:
        rec = world.recipe("default")
        built = os.path.join(world.cache_root(), f"world-default-{world.recipe_hash(rec)}", "base", "config.json")
        if os.path.exists(built):
            with open(built) as f:
                return json.load(f), built
        dims, vocab = rec["dims"], len(world_train.SPECIALS) + len(synthetic.vocabulary())
        where = "experiments.world recipe 'default' (world not built)"
    return dict(model_type="llama", vocab_size=vocab, hidden_size=dims["hidden"], intermediate_size=dims["ffn"],
                num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                num_key_value_heads=dims["kv_heads"], head_dim=dims["hidden"] // dims["heads"], rope_theta=500000.0,
                rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=32)), where


def _hf_config(base: str | None) -> tuple[dict, str]:
    if not base:
        return _world_config()
    path = os.path.join(base, "config.json") if os.path.isdir(base) else base
    with open(path) as f:
        return json.load(f), os.path.abspath(path)


def _adapter_shapes(k: int, hidden: int, scale_ranks: bool, seed: int, path: str | None):
    from ..shapes import AdapterShape, draw, load_shapes
    shapes, source = load_shapes(path)
    drawn = draw(shapes, k, seed)
    if scale_ranks and hidden < REAL_HIDDEN:
        f = hidden / REAL_HIDDEN
        drawn = [AdapterShape(max(1, round(s.r * f)), s.alpha, s.modules) for s in drawn]
    return drawn, source


def usable_cpus() -> int:
    """CPUs this process may run on (XLA sizes its thread pool from the same affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def random_params(config, seed: int):
    """Random float32 weights of ``config``'s schema (norms 1 + N(0, 0.1²), the rest N(0, 0.02²))."""
    import jax
    import jax.numpy as jnp

    from ..params import abstract_params
    key = jax.random.key(seed)
    flat, tree = jax.tree_util.tree_flatten_with_path(abstract_params(config, jnp.float32))
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        z = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.float32)
        leaves.append(1.0 + 0.1 * z if "norm" in jax.tree_util.keystr(path) else 0.02 * z)
    return jax.tree_util.tree_unflatten(tree, leaves)


def make_batch(vocab: int, batch: int, seq: int, answer: int, seed: int) -> dict[str, np.ndarray]:
    """Random rows whose last ``answer`` next-token targets are scored (``jaxmerge.tasks.encode``'s
    convention, ``answer_index`` included)."""
    from ..tasks.encode import answer_index
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, seq - 1 - min(answer, seq // 2):-1] = 1
    return dict(tokens=tokens, attention_mask=np.ones_like(tokens), loss_mask=loss_mask,
                answer_index=answer_index(loss_mask))


# --- JAX -----------------------------------------------------------------------------------------------
def jax_side(config, params, pool, batch, *, lr: float, total: int, application: str = "auto"):
    """(``run(n_steps) -> losses`` over donated state, the per-module application, the dot library):
    the engine's own ``ours`` step (``objectives.Coefficients`` through ``train.train_step``) on ``pool``
    bucketed as ``run_method`` buckets it, learning rates as data (``train.learning_rates``)."""
    import jax
    import jax.numpy as jnp

    from .. import xla_cpu
    from ..adaptive import objectives
    from ..adaptive.space import Tuning
    from ..adaptive.train import UpdateRule, choose_application, learning_rates, optimizer, train_step
    from ..stacks import bucketed

    pool = bucketed(pool)
    choice = choose_application(pool, config, int(batch["tokens"].size), application)
    objective = objectives.Coefficients(config, "module", "leaky_relu", tuple(sorted(choice.items())))
    rule = UpdateRule()
    lrs = jnp.asarray(learning_rates(Tuning(lr=lr, steps=total, warmup=WARMUP)))
    w = jnp.zeros((pool.num_adapters, pool.num_layers, len(pool.modules)), jnp.float32)
    state = {"trainable": {"w": w}, "opt": optimizer(rule).init({"w": w})}
    frozen = {"params": params, "stacks": pool.modules}
    dev_batch = {k: jnp.asarray(v)[None] for k, v in batch.items()}  # one micro-batch: the effective batch
    step = train_step.lower(state, frozen, dev_batch, lrs[0], objective=objective, rule=rule).compile()
    done = 0

    def run(n):
        nonlocal state, done
        losses = []
        for _ in range(n):
            state, loss = step(state, frozen, dev_batch, lrs[done])
            losses.append(loss)
            done += 1
        return [float(x) for x in jax.block_until_ready(losses)]

    return run, choice, xla_cpu.dot_backend(step)


# --- one measurement ----------------------------------------------------------------------------------
def measure(args, hf_config: dict, where: str, batch_size: int, seq: int) -> dict:
    import jax

    from ..config import ModelConfig
    from ..errors import require
    from ..memstat import peak_rss, reset_peak_rss
    from ..shapes import random_pool
    from . import torch_ref
    torch = require("torch", "jaxmerge bench train (its PyTorch reference)", '-e ".[test]"  (CPU torch: see README)')
    threads = args.torch_threads or usable_cpus()
    torch.set_num_threads(threads)
    reset_peak_rss()
    config = ModelConfig.from_dict(hf_config)
    params = random_params(config, args.seed)
    shapes, source = _adapter_shapes(args.k, config.hidden_size, not args.no_scale_ranks, args.seed, args.pool_shapes)
    pool = random_pool(config, shapes, jax.random.key(args.seed), std=0.05)
    batch = make_batch(config.vocab_size, batch_size, seq, args.answer_tokens, args.seed)
    total = args.warmup + args.steps * args.repeats
    t = time.perf_counter()
    runs = {}
    runs["jaxmerge"], choice, dot = jax_side(config, params, pool, batch, lr=args.lr, total=total,
                                             application=args.application)
    compile_s = time.perf_counter() - t
    runs.update(torch_ref.sides(hf_config, params, config, pool, batch, variants=args.torch, lr=args.lr,
                                warm=int(WARMUP * total), total=total))
    losses, times, first = {n: [] for n in runs}, {n: [] for n in runs}, {}
    for name, run in runs.items():
        t = time.perf_counter()
        losses[name] += run(args.warmup)
        first[name] = time.perf_counter() - t
    for _ in range(args.repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            losses[name] += run(args.steps)
            times[name].append(time.perf_counter() - t)
    tokens = batch_size * seq * args.steps
    jl = np.array(losses["jaxmerge"])
    sides = {}
    for name in runs:
        best = min(times[name])
        sides[name] = {"tokens_per_s": round(tokens / best, 1), "step_ms": round(1e3 * best / args.steps, 2),
                       "step_ms_per_repeat": [round(1e3 * t / args.steps, 2) for t in times[name]],
                       "warmup_s": round(first[name], 2)}
        if name != "jaxmerge":
            d = np.abs(np.array(losses[name]) - jl)
            sides[name].update(loss_first_step_abs_diff=float(d[0]), loss_max_abs_diff=float(d.max()))
    torch_names = [n for n in runs if n != "jaxmerge"]
    best_torch = max(torch_names, key=lambda n: sides[n]["tokens_per_s"])
    jt = sides["jaxmerge"]["tokens_per_s"]
    return {
        "sides": sides, "best_torch": best_torch, "speedup_vs_best_torch": round(jt / sides[best_torch]["tokens_per_s"], 2),
        "speedup_vs": {n: round(jt / sides[n]["tokens_per_s"], 2) for n in torch_names},
        "loss_first_last": [float(jl[0]), float(jl[-1])],
        "application": choice, "xla_cpu_dot": dot, "jax_compile_s": round(compile_s, 2), "peak_rss_gib": round(peak_rss() / 2**30, 2),
        "k": args.k, "batch": batch_size, "seq": seq, "answer_tokens_per_row": int(batch["loss_mask"][0].sum()),
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "ranks": sorted(s.r for s in shapes),
        "sum_rank_per_module": {m: int(sum(s.ranks)) for m, s in pool.modules.items()},
        "rank_scaling": ("none" if args.no_scale_ranks or config.hidden_size >= REAL_HIDDEN
                         else f"r * {config.hidden_size}/{REAL_HIDDEN}, at least 1"),
        "pool_shapes_source": source, "base": where,
        "config": dict(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                       kv_heads=config.num_key_value_heads, ffn=config.intermediate_size, vocab=config.vocab_size,
                       tied=config.tie_word_embeddings, model_type=config.family),
        "dtype": "float32", "threads": threads, "jax": jax.__version__, "torch": torch.__version__,
        "backend": jax.default_backend(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from . import torch_ref
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--preset", nargs="+", choices=[*PRESETS, "all"], default=None,
                        help="real model shapes (several: measured one after the other in this run); "
                        "default: --base, else the embedded world's base")
    parser.add_argument("--base", default=None, help="a config.json (or its folder) to benchmark; weights are random")
    parser.add_argument("--k", type=int, default=30, help="pool LoRAs merged (default 30)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: the preset's, else 8)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's, else 32)")
    parser.add_argument("--answer-tokens", type=int, default=16,
                        help="scored (answer) tokens per row, at most seq/2 (default 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed repeats; the best is reported")
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch", nargs="+", choices=torch_ref.VARIANTS, default=list(torch_ref.VARIANTS),
                        help="PyTorch variants (merge - loss); default: all")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: the CPUs this process may use, as XLA)")
    parser.add_argument("--application", choices=("auto", "factored", "dense"), default="auto",
                        help="jaxmerge's LoRA application (auto: the engine's per-module choice)")
    parser.add_argument("--pool-shapes", default=None, help="the real pool's shapes (default: the shipped "
                        "paper-llama31-8b manifest, or $JAXMERGE_POOL_SHAPES)")
    parser.add_argument("--no-scale-ranks", action="store_true", help="keep the real ranks on a narrow base")
    return parser


def _targets(args) -> list[tuple[str, dict, str, int, int]]:
    """(label, config dict, where, batch, seq) of every measurement asked for."""
    if args.preset:
        names = list(PRESETS) if "all" in args.preset else list(dict.fromkeys(args.preset))
        return [(n, PRESETS[n].hf_config, f"preset {n}: {PRESETS[n].about}", args.batch or PRESETS[n].batch,
                 args.seq or PRESETS[n].seq) for n in names]
    hf, where = _hf_config(args.base)
    return [("base", hf, where, args.batch or 8, args.seq or 32)]


def _print(label: str, res: dict) -> None:
    print(f"[{label}] ours coefficient-training step, k={res['k']}, batch {res['batch']}x{res['seq']} tokens "
          f"({res['answer_tokens_per_row']} scored per row), {res['threads']} torch threads, peak RSS {res['peak_rss_gib']} GiB")
    print(f"  base: {res['base']}  {res['config']}")
    print(f"  ranks ({res['rank_scaling']}): {res['ranks']}")
    print(f"  jaxmerge application: {res['application']}, XLA:CPU dot: {res['xla_cpu_dot']}")
    for name, s in res["sides"].items():
        agree = "" if name == "jaxmerge" else (f"  x{res['speedup_vs'][name]}  losses agree to "
                                               f"{s['loss_max_abs_diff']:.1e} (first step {s['loss_first_step_abs_diff']:.1e})")
        print(f"  {name:14s} {s['tokens_per_s']:9.0f} tokens/s ({s['step_ms']} ms/step){agree}")
    print(f"  speedup vs the best PyTorch ({res['best_torch']}): {res['speedup_vs_best_torch']}x")


def run(args) -> int:
    results = []
    for label, hf, where, b, s in _targets(args):
        res = measure(args, hf, where, b, s)
        results.append(dict(res, label=label))
        gc.collect()  # the previous shapes' weights go before the next measurement's
        if not args.json:
            _print(label, res)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"runs": results}))
    return 0


def main(argv=None) -> int:
    return run(add_arguments(argparse.ArgumentParser(prog="jaxmerge bench train")).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
