"""``jaxmerge bench train``: tokens/s of the ``ours`` coefficient-training step, JAX vs PyTorch.

The step (paper App. C, REFERENCE §1): module-granularity coefficients ``w [k, L, M]`` (k = 30 pool
LoRAs, init 0), leaky-ReLU activation, the merged delta Σ_i act(w_i)·s_i·B_i·A_i applied factored
(``x·A_catᵀ·diag(m)·B_catᵀ`` over the rank-concatenated stacks), next-token cross-entropy on the
answer tokens, AdamW (weight decay 0, warmup-cosine schedule), one jitted step with the trainable and
optimizer state donated (``jaxmerge.adaptive.train.make_step``).

The reference is the authors' approach in PyTorch, in the same process, on the same weights and data:
transformers' ``LlamaForCausalLM`` whose every targeted ``nn.Linear`` is wrapped by a rank-concatenated
LoRA layer ``base(x) + ((x A_catᵀ) ⊙ m) B_catᵀ`` with ``m = leaky_relu(w)·s`` per rank row, the base
frozen, ``torch.optim.AdamW`` on ``w`` only with the same schedule. Both see the same batch every step;
their losses are compared step by step (``loss_max_abs_diff`` in the report) so the two sides are known
to compute the same thing.

Shapes: the embedded default world's base (``experiments.world``: its built ``base/config.json`` when
cached, else its recipe's dimensions) or ``--base CONFIG``, random weights (speed does not depend on them). The k adapter
shapes are drawn from the real pool's shapes file (``jaxmerge.shapes``; built-in mix without it) and
their ranks scaled by ``hidden / 4096`` (Llama-3.1-8B's width; at least 1) so the LoRA share of the
work matches the real pool's at 8B; ``--no-scale-ranks`` keeps the real ranks.

Fairness: float32 on both sides, ``torch.set_num_threads`` = the CPU count XLA's thread pool uses,
``--warmup`` untimed steps (JAX compilation, torch allocator warm-up), then ``--steps`` timed steps
each side, alternating ``--repeats`` times; the best repeat is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REAL_HIDDEN = 4096  # Llama-3.1-8B, whose pool the shapes file describes


# --- setup -------------------------------------------------------------------------------------------
def _world_config(base: str | None = None):
    """(LlamaConfig, where it came from): ``base`` (a config.json or a folder holding one), else the
    embedded default world's base."""
    from ..config import LlamaConfig, RopeConfig
    if base:
        return LlamaConfig.from_json(base), os.path.abspath(base)
    try:
        from experiments import synthetic, world, world_train
        rec = world.recipe("default")
        built = os.path.join(world.cache_root(), f"world-default-{world.recipe_hash(rec)}", "base", "config.json")
        if os.path.exists(built):
            return LlamaConfig.from_json(built), built
        dims = rec["dims"]
        vocab = len(world_train.SPECIALS) + len(synthetic.vocabulary())
        where = "experiments.world recipe 'default' (world not built)"
    except ImportError:
        dims, vocab, where = dict(hidden=64, layers=4, heads=4, kv_heads=2, ffn=128), 359, "built-in copy of the world dims"
    return LlamaConfig(vocab_size=vocab, hidden_size=dims["hidden"], intermediate_size=dims["ffn"],
                       num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                       num_key_value_heads=dims["kv_heads"], head_dim=dims["hidden"] // dims["heads"],
                       rope=RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 32)), where


def _adapter_shapes(k: int, hidden: int, scale_ranks: bool, seed: int, path: str | None):
    from ..shapes import AdapterShape, draw, load_shapes
    shapes, source = load_shapes(path)
    drawn = draw(shapes, k, seed)
    if scale_ranks:
        f = hidden / REAL_HIDDEN
        drawn = [AdapterShape(max(1, round(s.r * f)), s.alpha, s.modules) for s in drawn]
    return drawn, source


def _setup(args):
    import jax
    import jax.numpy as jnp

    from ..params import abstract_params
    from ..shapes import random_pool
    config, where = _world_config(args.base)
    rng = np.random.default_rng(args.seed)
    params = jax.tree_util.tree_map_with_path(
        lambda p, l: jnp.asarray(1.0 + 0.1 * rng.standard_normal(l.shape) if "norm" in jax.tree_util.keystr(p)
                                 else 0.02 * rng.standard_normal(l.shape), jnp.float32),
        abstract_params(config, jnp.float32))
    shapes, source = _adapter_shapes(args.k, config.hidden_size, not args.no_scale_ranks, args.seed, args.pool_shapes)
    pool = random_pool(config, shapes, jax.random.key(args.seed), std=0.05)
    tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, args.seq // 2:-1] = 1  # the "answer": second half (next-token convention)
    batch = dict(tokens=tokens, attention_mask=np.ones_like(tokens), loss_mask=loss_mask)
    return config, where, params, pool, shapes, source, batch


# --- JAX -----------------------------------------------------------------------------------------------
def _jax_side(config, params, pool, batch, args):
    """A ``run(n_steps) -> list of losses`` closure over donated state (compiled on first use)."""
    import jax
    import jax.numpy as jnp
    import optax

    from ..adaptive.train import answer_loss_sums, make_step
    from ..merge.coefficients import factored_adapters

    def loss_fn(trainable, frozen, mb):
        adapters = factored_adapters(frozen["pool"], trainable["w"], "module", "leaky_relu")
        return answer_loss_sums(frozen["params"], config, mb, adapters)

    total = args.warmup + args.steps * args.repeats
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, int(0.1 * total), total, 0.0)
    opt = optax.adamw(sched, weight_decay=0.0)
    step = make_step(loss_fn, opt)
    w = jnp.zeros((pool.num_adapters, pool.num_layers, len(pool.modules)), jnp.float32)
    state = {"trainable": {"w": w}, "opt": opt.init({"w": w})}
    frozen = {"params": params, "pool": pool}
    dev_batch = {k: jnp.asarray(v)[None] for k, v in batch.items()}  # one micro-batch of the effective 8

    def run(n):
        nonlocal state
        losses = []
        for _ in range(n):
            state, loss = step(state, frozen, dev_batch)
            losses.append(loss)
        return [float(x) for x in jax.block_until_ready(losses)]

    return run


# --- PyTorch: the authors' rank-concatenated LoRA layer ---------------------------------------------------
def _torch_side(config, params, pool, batch, args):
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    from ..params import params_to_hf

    class ConcatLoRALinear(torch.nn.Module):
        """base(x) + ((x A_catᵀ) ⊙ m) B_catᵀ, m[r] = leaky_relu(w[owner[r], l, j])·s[owner[r]]."""

        def __init__(self, base, a, b, owner, scale, w, layer, j):
            super().__init__()
            self.base, self.w, self.layer, self.j = base, w, layer, j
            self.register_buffer("a", a)
            self.register_buffer("b", b)
            self.register_buffer("owner", owner)
            self.register_buffer("scale", scale)

        def forward(self, x):
            m = (F.leaky_relu(self.w[:, self.layer, self.j], 0.01) * self.scale)[self.owner]
            return self.base(x) + ((x @ self.a.T) * m) @ self.b.T

    hf = HFConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                  head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope.theta,
                  rope_scaling=None if config.rope.rope_type == "default" else dict(
                      rope_type="llama3", factor=config.rope.factor, low_freq_factor=config.rope.low_freq_factor,
                      high_freq_factor=config.rope.high_freq_factor,
                      original_max_position_embeddings=config.rope.original_max_position_embeddings),
                  max_position_embeddings=max(config.max_position_embeddings, args.seq),
                  tie_word_embeddings=config.tie_word_embeddings, attention_dropout=0.0)
    model = LlamaForCausalLM(hf).eval()
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in params_to_hf(params, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:  # the head is the embedding, loaded through it (no lm_head tensor exists)
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"torch reference: weights did not map (missing {missing}, unexpected {unexpected})")
    for p in model.parameters():
        p.requires_grad_(False)
    modules = list(pool.modules)
    w = torch.nn.Parameter(torch.zeros(pool.num_adapters, pool.num_layers, len(modules)))
    for j, name in enumerate(modules):
        st = pool.modules[name]
        owner = torch.from_numpy(st.owner.astype(np.int64))
        scale = torch.from_numpy(np.array(st.scale, np.float32))
        a_all, b_all = np.asarray(st.a, np.float32), np.asarray(st.b, np.float32)
        for layer_idx, layer in enumerate(model.model.layers):
            group = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            setattr(group, name, ConcatLoRALinear(getattr(group, name), torch.from_numpy(a_all[layer_idx].copy()),
                                                  torch.from_numpy(b_all[layer_idx].copy()), owner, scale, w,
                                                  layer_idx, j))
    total = args.warmup + args.steps * args.repeats
    warm = int(0.1 * total)
    opt = torch.optim.AdamW([w], lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # optax.warmup_cosine_decay_schedule(0, lr, warm, total, 0)
        opt, lambda s: s / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(s - warm, total - warm)
                                                                     / max(total - warm, 1))))
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
    attn = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    mask = torch.from_numpy(batch["loss_mask"][:, :-1].astype(np.float32))

    def run(n):
        losses = []
        for _ in range(n):
            logits = model(input_ids=tokens, attention_mask=attn).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
            loss = (nll * mask.reshape(-1)).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        return losses

    return run


# --- the benchmark -------------------------------------------------------------------------------------
def measure(args) -> dict:
    import jax

    from ..errors import require
    torch = require("torch", "jaxmerge bench train (its PyTorch reference)", '-e ".[test]"  (CPU torch: see README)')
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    config, where, params, pool, shapes, source, batch = _setup(args)
    jax_run = _jax_side(config, params, pool, batch, args)
    torch_run = _torch_side(config, params, pool, batch, args)
    t0 = time.perf_counter()
    jl = jax_run(args.warmup)
    compile_s = time.perf_counter() - t0
    tl = torch_run(args.warmup)
    jax_times, torch_times = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        jl += jax_run(args.steps)
        jax_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        tl += torch_run(args.steps)
        torch_times.append(time.perf_counter() - t)
    tokens = args.batch * args.seq * args.steps
    jt, tt = tokens / min(jax_times), tokens / min(torch_times)
    ranks = sorted(s.r for s in shapes)
    return {
        "jaxmerge_tokens_per_s": round(jt, 1), "torch_tokens_per_s": round(tt, 1), "speedup_vs_torch": round(jt / tt, 2),
        "jax_step_ms": round(1e3 * min(jax_times) / args.steps, 2),
        "torch_step_ms": round(1e3 * min(torch_times) / args.steps, 2),
        "jax_first_steps_s_incl_compile": round(compile_s, 2),
        "loss_first_step_abs_diff": abs(jl[0] - tl[0]),
        "loss_max_abs_diff": float(np.max(np.abs(np.array(jl) - np.array(tl)))),
        "loss_first_last": [jl[0], jl[-1]],
        "k": args.k, "batch": args.batch, "seq": args.seq, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "ranks": ranks, "sum_rank_per_module": {m: int(sum(s.ranks)) for m, s in pool.modules.items()},
        "rank_scaling": "none" if args.no_scale_ranks else f"r * {config.hidden_size}/{REAL_HIDDEN}, at least 1",
        "pool_shapes_source": source, "base": where,
        "config": dict(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                       kv_heads=config.num_key_value_heads, ffn=config.intermediate_size, vocab=config.vocab_size),
        "dtype": "float32", "threads": threads, "jax": jax.__version__, "torch": torch.__version__,
        "backend": jax.default_backend(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--k", type=int, default=30, help="pool LoRAs merged (default 30)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (the effective batch, 8)")
    parser.add_argument("--seq", type=int, default=32, help="tokens per sequence (the world's max_len, 32)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed repeats; the best is reported")
    parser.add_argument("--lr", type=float, default=5e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-shapes", default=None, help="the real pool's shapes JSON (default: found "
                        "via $JAXMERGE_POOL_SHAPES or ../shared/data/)")
    parser.add_argument("--base", default=None, help="a Llama config.json (or its folder) to benchmark instead "
                        "of the embedded world's base; weights are random")
    parser.add_argument("--no-scale-ranks", action="store_true", help="keep the real ranks on the small base")
    return parser


def run(args) -> int:
    res = measure(args)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"ours coefficient-training step, k={res['k']}, batch {res['batch']}x{res['seq']} tokens, {res['threads']} threads")
    print(f"  base: {res['base']}  {res['config']}")
    print(f"  ranks ({res['rank_scaling']}): {res['ranks']}  from {res['pool_shapes_source']}")
    print(f"  jaxmerge: {res['jaxmerge_tokens_per_s']:.0f} tokens/s ({res['jax_step_ms']} ms/step)")
    print(f"  torch:    {res['torch_tokens_per_s']:.0f} tokens/s ({res['torch_step_ms']} ms/step)")
    print(f"  speedup:  {res['speedup_vs_torch']}x   (losses agree to {res['loss_max_abs_diff']:.1e})")
    return 0


def main(argv=None) -> int:
    return run(add_arguments(argparse.ArgumentParser(prog="jaxmerge bench train")).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
