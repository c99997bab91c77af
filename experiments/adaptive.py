"""``python -m experiments.adaptive --method ours``: one method of the paper on one target task.

With no ``--base`` / ``--pool`` / ``--task`` it runs on the embedded default world (built and cached
on first use, see ``experiments.world``); with them, on any Llama 3.x checkpoint (path or hub id),
any pool of PEFT adapters (folders, a folder of folders, a text file of paths or hub ids) and any
task (a registry name such as ``arc_easy``, a task folder or data file).

Every run also has its two references — zero-shot and the target-task LoRA — computed once under
``--reference-dir`` (default ``OUT/reference``) and reused; the target LoRA trained there is the one
put in slot 0 by ``--with-target-lora`` and used by similarity selections. The method's own run
writes ``OUT/result.json``; killed and started again with the same ``--out`` it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

METHOD_NAMES = ("ours", "adamerging", "pi-tuning", "lorahub", "lorahub-grad", "average", "ties", "tsv",
                "target-lora", "zero-shot")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.adaptive", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHOD_NAMES)
    p.add_argument("--base", help="Llama 3.x checkpoint folder or hub id (default: the embedded world's)")
    p.add_argument("--pool", nargs="+", help="adapter folders / a folder of them / a text file of paths or hub ids")
    p.add_argument("--task", help="task name, task folder or data file (default: the world's default task)")
    p.add_argument("--k", type=int, default=None, help="number of recycled LoRAs to merge (recipe: 30, π-tuning 20)")
    tl = p.add_mutually_exclusive_group()
    tl.add_argument("--with-target-lora", dest="with_target_lora", action="store_true", default=None)
    tl.add_argument("--without-target-lora", dest="with_target_lora", action="store_false")
    p.add_argument("--random-pool", action="store_true", default=None, help="redraw the recycled LoRAs at random (std-matched)")
    p.add_argument("--selection", choices=("random", "evaluation", "cosine", "clamp", "abs", "quasi_fim"))
    p.add_argument("--granularity", choices=("model", "layer", "sublayer", "module"))
    p.add_argument("--activation", choices=("linear", "softmax", "leaky_relu"))
    p.add_argument("--steps", type=int, help="tuning steps (default: the method's recipe)")
    p.add_argument("--target-lora-steps", type=int, help="steps of the target-task LoRA (recipe: 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default runs/adaptive/TASK/seedS/METHOD…)")
    p.add_argument("--reference-dir", help="where zero-shot and the target LoRA are computed (default OUT/reference)")
    p.add_argument("--world", default="default", choices=("default", "small"), help="embedded world size")
    p.add_argument("--dtype", help="base dtype (default float32 for the embedded world, else bfloat16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run_name(args) -> str:
    parts = [args.method] + ([f"k{args.k}"] if args.k is not None else [])
    if args.with_target_lora:
        parts.append("with-target")
    if args.random_pool:
        parts.append("random-pool")
    for f in ("selection", "granularity", "activation", "steps"):
        if getattr(args, f) is not None:
            parts.append(f"{f}-{getattr(args, f)}")
    return "-".join(parts)


def load_inputs(args):
    """(base, pool or None, pool report or None, task data, world or None)."""
    import jaxmerge
    from jaxmerge.tasks import load_task

    world = None
    if args.base is None or args.pool is None or args.task is None:
        from experiments.world import build_world
        world = build_world(size=args.world, progress=not args.quiet)
    base_src = args.base or world.base_dir
    dtype = args.dtype or ("float32" if args.base is None else "bfloat16")
    base = jaxmerge.load_base(base_src, dtype=dtype)
    if base.tokenizer is None:
        raise SystemExit(f"{base_src} has no tokenizer files; the experiments need one")
    pool = report = None
    if args.method not in ("zero-shot", "target-lora"):
        sources = args.pool or world.pool_dirs
        pool, report = jaxmerge.load_pool(sources, base.config, progress=not args.quiet)
        if pool is None or pool.num_adapters == 0:
            raise SystemExit("no adapter of the pool was kept:\n" + report.summary())
    task = load_task(args.task or world.default_task, world=world)
    return base, pool, report, task, world


def run(args) -> dict:
    from jaxmerge.adaptive.run import run_method
    from jaxmerge.distributed import maybe_initialize

    maybe_initialize()
    t0 = time.time()
    base, pool, report, task, world = load_inputs(args)
    name = task.task.name
    out = args.out or os.path.join("runs", "adaptive", name, f"seed{args.seed}", run_name(args))
    ref = args.reference_dir or os.path.join(out, "reference")
    progress = not args.quiet
    if report is not None:
        print(report.summary())
        os.makedirs(out, exist_ok=True)
        report.save(os.path.join(out, "pool_report.json"))
    common = dict(seed=args.seed, progress=progress)
    zero = run_method("zero-shot", base, None, task, out_dir=os.path.join(ref, "zero-shot"), **common)
    target = run_method("target-lora", base, None, task, out_dir=os.path.join(ref, "target-lora"),
                        steps=args.target_lora_steps, **common)
    if args.method == "zero-shot":
        result = dict(zero)
    elif args.method == "target-lora":
        result = dict(target)
    else:
        from jaxmerge.adaptive.methods import effective_k, requested_k
        k, wanted = effective_k(args.method, args.k, pool.num_adapters), requested_k(args.method, args.k)
        if wanted is not None and wanted > k:
            print(f"note: k={wanted} > {pool.num_adapters} adapters kept in the pool; merging all of them")
        overrides = {f: getattr(args, f) for f in ("granularity", "activation") if getattr(args, f) is not None}
        if args.selection is not None:
            overrides["selection_kind"] = args.selection
        result = run_method(args.method, base, pool, task, k=k, out_dir=out, steps=args.steps,
                            with_target_lora=args.with_target_lora, random_pool=args.random_pool,
                            target_lora=target["adapter_path"], **overrides, **common)
    result = {**result, "zero_shot_accuracy": zero["test_accuracy"], "target_lora_accuracy": target["test_accuracy"]}
    from jaxmerge.adaptive.checkpoint import save_json
    save_json(os.path.join(out, "result.json"), result)
    print_table(result, zero, target, time.time() - t0)
    print(f"wrote {os.path.join(out, 'result.json')}")
    return result


def print_table(result: dict, zero: dict, target: dict, seconds: float) -> None:
    tl = "with" if result.get("with_target_lora") else "without"
    print(f"\ntask {result['task']} · k={result.get('k')} · seed {result['seed']} · {tl} target LoRA in the pool")
    print(f"{'method':<16}{'test acc':>10}{'best val loss':>15}")
    rows = [("zero-shot", zero), ("target-lora", target)]
    if result["method"] not in ("zero-shot", "target-lora"):
        rows.append((result["method"], result))
    for label, r in rows:
        val = r.get("best_val_loss")
        print(f"{label:<16}{r['test_accuracy']:>10.3f}{'' if val is None else f'{val:>15.4f}'}")
    print(f"({seconds:.0f} s)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
