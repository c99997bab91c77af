"""``jaxmerge bench select``: evaluation-based selection at pool scale (the paper's "K evals").

Every pool LoRA is scored on the target's 100 examples (its train + validation rows), twice:

* jaxmerge — the pool loaded once into rank-concatenated stacks (``jaxmerge.load_pool``), then
  scored batched over adapters (``adaptive.multi_eval.pool_losses`` / ``pool_answers``: one adapter per
  group of batch rows);
* transformers + PEFT one adapter at a time, as the authors do (``jaxmerge.bench.peft_eval``: load from
  disk, evaluate, unload).

Two scores: the mean answer-token loss, and greedy generations (the paper's protocol). Timed end to
end from the adapter folders on disk, base already loaded on both sides: jaxmerge's figure is the pool
load plus the scoring, compilation included (this process compiles everything it runs); the other
side's is the sum of its loads, evaluations and unloads. The results are compared: losses (max abs
and relative difference) and generations (identical count; the differing ones listed).

Inputs: a world (``--world``, default ``smollm2-bigbench``: SmolLM2-135M-Instruct and its PEFT pool;
built on first use), its ``--task`` (default: the world's); or ``--base`` + ``--adapters`` + ``--task``.
The pool filter decides which adapters are scored; both sides score the same kept ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Mapping, Sequence

import numpy as np


def measure(base_dir: str, adapter_dirs: Sequence[str], examples: Sequence[Mapping], *, max_len: int | None = None,
            max_new_tokens: int = 30, system: str | None = None, kinds: Sequence[str] = ("loss", "generate"),
            adapters_per_batch: int = 8, loss_examples_per_step: int = 4, gen_examples_per_step: int = 16,
            hf_batch: int = 20, torch_threads: int | None = None, warm: bool = False, progress: bool = True) -> dict:
    """Both sides on ``examples`` (``{"prompt", "answer"}``) for the adapters in ``adapter_dirs`` that
    the pool filter keeps; see the module docstring for what is timed and compared."""
    import jax

    from ..adaptive import multi_eval
    from ..errors import require
    from ..params import load_base
    from ..pool.load import load_pool
    from ..tasks.encode import encode, pad_id
    from . import peft_eval
    from .train_bench import usable_cpus
    torch = require("torch", "jaxmerge bench select (its transformers + PEFT side)", '-e ".[test]"  (CPU torch: see README)')
    require("peft", "jaxmerge bench select (its transformers + PEFT side)", '-e ".[test]"')
    threads = torch_threads or usable_cpus()
    torch.set_num_threads(threads)
    unknown = set(kinds) - {"loss", "generate"}
    if unknown:
        raise ValueError(f"kinds {sorted(unknown)}: expected 'loss' and/or 'generate'")

    base = load_base(base_dir, dtype="float32")
    tok, config = base.tokenizer, base.config
    hf_model = peft_eval.load_base(base_dir)
    t = time.perf_counter()
    pool, report = load_pool(list(adapter_dirs), config, progress=progress)
    load_s = time.perf_counter() - t
    kept = list(pool.names)
    ends, pad = multi_eval._end_ids(config, tok), pad_id(tok)
    out = {"n_adapters": len(kept), "n_skipped": len(adapter_dirs) - len(kept), "n_examples": len(examples),
           "ranks": {m: [int(r) for r in s.ranks] for m, s in pool.modules.items()}, "jaxmerge_pool_load_s": round(load_s, 2),
           "threads": threads, "jax": jax.__version__, "torch": torch.__version__}

    def timed(fn):
        t = time.perf_counter()
        res = fn()
        return res, time.perf_counter() - t

    if "loss" in kinds:
        batch = encode(examples, tok, max_len, system=system)
        score = lambda: multi_eval.pool_losses(base.params, config, pool, batch, adapters_per_batch=adapters_per_batch,
                                                examples_per_step=loss_examples_per_step, progress=progress)
        ours, ours_s = timed(score)
        ref = peft_eval.one_at_a_time(hf_model, kept, batch=batch, batch_size=hf_batch, progress=progress)
        hf_model = ref["model"]
        hf_s = ref["load_s"] + ref["eval_s"]
        diff = np.abs(ours - ref["losses"])
        out["loss"] = {"jaxmerge_s": round(load_s + ours_s, 2), "jaxmerge_score_s": round(ours_s, 2),
                       "transformers_peft_s": round(hf_s, 2), "hf_load_s": round(ref["load_s"], 2),
                       "hf_eval_s": round(ref["eval_s"], 2), "speedup": round(hf_s / (load_s + ours_s), 2),
                       "max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / np.abs(ref["losses"])).max()),
                       "tokens_per_row": int(batch["tokens"].shape[1]),
                       "losses": [round(float(x), 6) for x in ours], "losses_ref": [round(float(x), 6) for x in ref["losses"]]}
        if warm:
            out["loss"]["jaxmerge_score_warm_s"] = round(timed(score)[1], 2)
    if "generate" in kinds:
        gen = lambda: multi_eval.pool_answers(base.params, config, tok, pool, examples, adapters_per_batch=adapters_per_batch,
                                               examples_per_step=gen_examples_per_step, max_new_tokens=max_new_tokens,
                                               system=system, progress=progress)
        ours, ours_s = timed(gen)
        prompts = encode(examples, tok, None, with_answer=False, system=system)
        ref = peft_eval.one_at_a_time(hf_model, kept, prompts=prompts, tokenizer=tok, ends=ends, pad=pad,
                                      max_new_tokens=max_new_tokens, batch_size=hf_batch, progress=progress)
        hf_model = ref["model"]
        hf_s = ref["load_s"] + ref["eval_s"]
        differ = [dict(adapter=os.path.basename(kept[i]), example=j, jaxmerge=a, transformers_peft=b)
                  for i, (row, ref_row) in enumerate(zip(ours, ref["answers"]))
                  for j, (a, b) in enumerate(zip(row, ref_row)) if a != b]
        n = len(kept) * len(examples)
        out["generate"] = {"jaxmerge_s": round(load_s + ours_s, 2), "jaxmerge_score_s": round(ours_s, 2),
                           "transformers_peft_s": round(hf_s, 2), "hf_load_s": round(ref["load_s"], 2),
                           "hf_eval_s": round(ref["eval_s"], 2), "speedup": round(hf_s / (load_s + ours_s), 2),
                           "max_new_tokens": max_new_tokens, "identical": n - len(differ), "total": n,
                           "distinct_answers": len({a for row in ours for a in row}), "differ": differ[:20]}
        if warm:
            out["generate"]["jaxmerge_score_warm_s"] = round(timed(gen)[1], 2)
    return out


def _inputs(args) -> tuple[str, list[str], list[dict], str, int, str | None]:
    """(base folder, adapter sources, the 100 examples, where from, max_new_tokens, system prompt)."""
    from ..tasks import load_task
    if args.base:
        if not args.adapters or not args.task:
            from ..errors import UserError
            raise UserError("--base needs --adapters and --task")
        world, base_dir, sources = None, args.base, list(args.adapters)
    else:
        from experiments.world import get_world
        world = get_world(args.world, progress=not args.quiet)
        base_dir, sources = world.base_dir, list(args.adapters or world.pool_dirs)
    data = load_task(args.task or world.default_task, world=world)
    examples = (list(data.train) + list(data.validation))[:args.examples]
    where = f"world {args.world}" if world is not None else base_dir
    return base_dir, sources, examples, f"{where}, task {data.task.name}", args.max_new_tokens or data.task.max_new_tokens, data.task.system


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--world", default="smollm2-bigbench", help="a world of experiments.world (built on first use)")
    parser.add_argument("--task", default=None, help="the target task (default: the world's)")
    parser.add_argument("--base", default=None, help="a base folder instead of a world (with --adapters, --task)")
    parser.add_argument("--adapters", nargs="+", default=None, help="adapter sources (default: the world's pool)")
    parser.add_argument("--examples", type=int, default=100, help="target examples scored (train + validation: 100)")
    parser.add_argument("--only", choices=("loss", "generate"), default=None, help="one of the two scores")
    parser.add_argument("--max-len", type=int, default=None, help="truncate scoring rows (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: the task's)")
    parser.add_argument("--adapters-per-batch", type=int, default=8)
    parser.add_argument("--loss-examples-per-step", type=int, default=4)
    parser.add_argument("--gen-examples-per-step", type=int, default=16)
    parser.add_argument("--hf-batch", type=int, default=20, help="examples per transformers forward / generate")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: the CPUs this process may use, as XLA)")
    parser.add_argument("--warm", action="store_true", help="also time jaxmerge's scoring a second time (compiled)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    base_dir, sources, examples, where, max_new, system = _inputs(args)
    res = measure(base_dir, sources, examples, max_len=args.max_len, max_new_tokens=max_new, system=system,
                  kinds=(args.only,) if args.only else ("loss", "generate"), adapters_per_batch=args.adapters_per_batch,
                  loss_examples_per_step=args.loss_examples_per_step, gen_examples_per_step=args.gen_examples_per_step,
                  hf_batch=args.hf_batch, torch_threads=args.torch_threads, warm=args.warm, progress=not args.quiet)
    res["inputs"] = where
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"evaluation-based selection: {res['n_adapters']} adapters ({res['n_skipped']} skipped by the filter) x "
          f"{res['n_examples']} examples of {where}, {res['threads']} torch threads")
    for kind in ("loss", "generate"):
        if kind not in res:
            continue
        r = res[kind]
        agree = (f"losses agree to {r['max_abs_diff']:.1e} (relative {r['max_rel_diff']:.1e})" if kind == "loss"
                 else f"{r['identical']} of {r['total']} generations identical")
        print(f"  {kind:8s} jaxmerge {r['jaxmerge_s']:8.1f} s (pool load {res['jaxmerge_pool_load_s']} s + scoring "
              f"{r['jaxmerge_score_s']} s)  transformers+PEFT {r['transformers_peft_s']:8.1f} s  "
              f"speedup {r['speedup']}x; {agree}")
    return 0


def main(argv=None) -> int:
    return run(add_arguments(argparse.ArgumentParser(prog="jaxmerge bench select")).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
