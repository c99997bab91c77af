"""``python -m experiments.adaptive --method ours``: one method of the paper on one target task.

With no ``--base`` / ``--pool`` / ``--task`` it runs on a world (``--world``, default the embedded
default world, built and cached on first use; see ``experiments.world``); with them, on any supported
checkpoint (folder or hub id), any pool of PEFT adapters (folders, a folder of folders, a text file of
paths or hub ids) and any task (a registry name such as ``arc_easy``, a task folder or data file).

The comparison table has two references: zero-shot (computed, cheap) and the target-task LoRA (400
training steps by the paper's recipe). Both are shared: computed once per (base, task, seed, recipe) in
the user cache (``$JAXMERGE_CACHE/references``, or ``--reference-dir``) and reused by every method and
``--out``. The target LoRA is trained only when the method needs it (``--with-target-lora``, a
similarity selection, ``--method target-lora``) or when asked (``--references all``); otherwise the table
shows it if it is cached. The method's own run writes ``OUT/result.json`` with its full identity (base,
dtype, pool, task, method point, seed, version): the same command again reuses it and says so, a
different run under the same ``--out`` is refused naming what differs, and a killed run resumes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def build_parser() -> argparse.ArgumentParser:
    from jaxmerge.adaptive.methods import method_names
    from jaxmerge.adaptive.space import SELECTIONS
    from jaxmerge.merge.coefficients import ACTIVATIONS, GRANULARITIES
    from experiments.world import WORLDS

    p = argparse.ArgumentParser(prog="python -m experiments.adaptive", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=method_names())  # the paper's points + every registered merge
    p.add_argument("--world", default="default", choices=sorted(WORLDS),
                   help="the world whose base / pool / task fill in what is not given (default: default)")
    p.add_argument("--base", help="checkpoint folder or hub id (default: the world's)")
    p.add_argument("--pool", nargs="+", help="adapter folders / a folder of them / a text file of paths or hub ids")
    p.add_argument("--task", help="task name, task folder or data file (default: the world's default task)")
    p.add_argument("--k", type=int, default=None, help="number of recycled LoRAs to merge (recipe: 30, π-tuning 20)")
    tl = p.add_mutually_exclusive_group()
    tl.add_argument("--with-target-lora", dest="with_target_lora", action="store_true", default=None)
    tl.add_argument("--without-target-lora", dest="with_target_lora", action="store_false")
    p.add_argument("--random-pool", action="store_true", default=None, help="redraw the recycled LoRAs at random (std-matched)")
    p.add_argument("--selection", choices=SELECTIONS)
    p.add_argument("--granularity", choices=GRANULARITIES)
    p.add_argument("--activation", choices=ACTIVATIONS)
    p.add_argument("--steps", type=int, help="tuning steps (default: the method's recipe)")
    p.add_argument("--target-lora-steps", type=int, help="steps of the target-task LoRA (recipe: 400)")
    p.add_argument("--budget", default="auto", help="paper | cpu (experiments.budgets) | auto: cpu for a real-model "
                                                    "world on a CPU backend, else the paper's recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default runs/adaptive/TASK/seedS/METHOD…)")
    p.add_argument("--references", choices=("auto", "all"), default="auto",
                   help="auto: zero-shot, and the target LoRA when the method needs it or it is cached; all: both")
    p.add_argument("--reference-dir", help="where shared references live (default $JAXMERGE_CACHE/references)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="base dtype (default: the world's, float32 on the embedded worlds; else bfloat16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or library chatter")
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


# --- checks that need nothing loaded ------------------------------------------------------------------
def check_args(args) -> None:
    """Every check the arguments alone decide, before any model, pool or world is touched."""
    from jaxmerge.errors import UserError
    from experiments.world import world_kind

    for flag in ("k", "steps", "target_lora_steps"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UserError(f"--{flag.replace('_', '-')} {v}: must be ≥ 1")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be ≥ 0")
    if args.base is not None and not os.path.exists(args.base) and not HUB_ID.fullmatch(args.base) \
            and not args.base.startswith("pypi:"):
        raise UserError(f"--base {args.base}: no such file or folder, and not a hub id of the form 'owner/name'")
    from jaxmerge.pool.sources import SourceError, check_source
    for src in args.pool or ():  # a path, a hub id or a pool manifest (paper-llama31-8b …)
        try:
            check_source(src)
        except SourceError as e:
            raise UserError(f"--pool {src}: {str(e).split(': ', 1)[1]}") from None
    if args.task is not None and not os.path.exists(args.task):
        from jaxmerge.tasks import ALIASES, REGISTRY
        kind = world_kind(args.world)
        if args.task not in REGISTRY and args.task not in ALIASES and args.task not in kind.targets \
                and not args.task.startswith("bigbench:"):
            raise UserError(f"--task {args.task}: not a task of world {args.world!r} ({', '.join(kind.targets)}), "
                            f"not a registry task (`jaxmerge tasks list`), and no such file or folder")
    world_kind(args.world)


# --- the run --------------------------------------------------------------------------------------------
def load_inputs(args):
    """(base, pool or None, pool report or None, task data, world or None)."""
    import jaxmerge
    from jaxmerge.errors import UserError
    from jaxmerge.tasks import load_task
    from experiments.world import get_world, world_kind

    world = None
    needs_pool = args.method not in ("zero-shot", "target-lora")
    world_task = args.task in world_kind(args.world).targets and not os.path.exists(args.task)
    if args.base is None or (needs_pool and args.pool is None) or args.task is None or world_task:
        world = get_world(args.world, progress=not args.quiet)
    base_src = args.base or world.base_dir
    dtype = args.dtype or (world_kind(args.world).dtype if args.base is None else "bfloat16")
    base = jaxmerge.load_base(base_src, dtype=dtype)
    if base.tokenizer is None:
        raise UserError(f"{base_src} has no tokenizer files; the experiments need one")
    task = load_task(args.task or world.default_task, world=world)
    pool = report = None
    if needs_pool:
        pool, report = jaxmerge.load_pool(args.pool or world.pool_dirs, base.config, progress=not args.quiet)
        if pool is None or pool.num_adapters == 0:
            raise UserError("no adapter of the pool was kept:\n" + report.summary())
    return base, pool, report, task, world


def references(args, base, task, needs_target: bool) -> tuple[dict, dict | None]:
    """(zero-shot result, target-LoRA result or None), from the shared cache or computed now."""
    from jaxmerge.adaptive.references import reference
    common = dict(seed=args.seed, root=args.reference_dir, progress=not args.quiet)
    zero = reference("zero-shot", base, task, **common)
    compute = needs_target or args.references == "all"
    target = reference("target-lora", base, task, steps=args.target_lora_steps, compute=compute, **common)
    return zero, target


def run(args) -> dict:
    from jaxmerge.adaptive.checkpoint import save_json
    from jaxmerge.adaptive.methods import effective_k, method, requested_k
    from jaxmerge.adaptive.run import run_method
    from jaxmerge.adaptive.selection import SIMILARITIES
    from jaxmerge.distributed import maybe_initialize

    maybe_initialize()
    t0 = time.time()
    base, pool, report, task, world = load_inputs(args)
    m = method(args.method, with_target_lora=args.with_target_lora, selection_kind=args.selection)
    needs_target = m.tuning.kind == "lora" or m.with_target_lora or m.selection.kind in SIMILARITIES
    out = args.out or os.path.join("runs", "adaptive", task.task.name, f"seed{args.seed}", run_name(args))
    if report is not None:
        print(report.summary())
        os.makedirs(out, exist_ok=True)
        report.save(os.path.join(out, "pool_report.json"))
    from experiments.budgets import resolve as resolve_budget
    budget = resolve_budget(args.budget, args.world if args.base is None else None)
    if args.target_lora_steps is None:
        args.target_lora_steps = budget.target_lora_steps
    zero, target = references(args, base, task, needs_target)
    if args.method == "zero-shot":
        result = dict(zero)
    elif args.method == "target-lora":
        result = dict(target)
    else:
        want_k = args.k if args.k is not None else budget.k
        k, wanted = effective_k(args.method, want_k, pool.num_adapters), requested_k(args.method, want_k)
        if wanted is not None and wanted > k:
            print(f"note: k={wanted} > {pool.num_adapters} adapters kept in the pool; merging all of them")
        overrides = {f: getattr(args, f) for f in ("granularity", "activation") if getattr(args, f) is not None}
        overrides.update({k: v for k, v in budget.overrides(args.method).items() if k != "steps"})
        if args.selection is not None:
            overrides["selection_kind"] = args.selection
        steps = args.steps if args.steps is not None else budget.overrides(args.method).get("steps")
        result = run_method(args.method, base, pool, task, k=k, out_dir=out, steps=steps,
                            with_target_lora=args.with_target_lora, random_pool=args.random_pool,
                            target_lora=None if target is None else target["adapter_path"],
                            target_lora_steps=args.target_lora_steps, seed=args.seed, progress=not args.quiet,
                            **overrides)
    reused = result.pop("reused", False)
    result = {**result, "budget": budget.to_dict(), "zero_shot_accuracy": zero["test_accuracy"],
              "target_lora_accuracy": None if target is None else target["test_accuracy"],
              "references": {"zero-shot": zero["out_dir"], "target-lora": None if target is None else target["out_dir"]}}
    path = save_json(os.path.join(out, "result.json"), result)
    print_table(result, zero, target, time.time() - t0)
    print(f"{'reused the finished run in' if reused else 'wrote'} {path}")
    return result


def print_table(result: dict, zero: dict, target: dict | None, seconds: float) -> None:
    tl = "with" if result.get("with_target_lora") else "without"
    print(f"\ntask {result['task']} · k={result.get('k')} · seed {result['seed']} · {tl} target LoRA in the pool")
    print(f"{'method':<16}{'test acc':>10}{'best val loss':>15}")
    rows = [("zero-shot", zero), ("target-lora", target)]
    if result["method"] not in ("zero-shot", "target-lora"):
        rows.append((result["method"], result))
    for label, r in rows:
        if r is None:
            print(f"{label:<16}{'—':>10}   (not computed: --references all, or --method target-lora)")
            continue
        val = r.get("best_val_loss")
        print(f"{label:<16}{r['test_accuracy']:>10.3f}{'' if val is None else f'{val:>15.4f}'}")
    print(f"({seconds:.0f} s)")


def main(argv=None) -> int:
    from jaxmerge.errors import cli_errors
    args = build_parser().parse_args(argv)
    with cli_errors("experiments.adaptive"):
        check_args(args)
        if args.quiet:
            from jaxmerge.progress import quiet_libraries
            quiet_libraries()
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
