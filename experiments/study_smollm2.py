"""The study on the smollm2-bigbench world: resumable parts, rendered with ``experiments.render``.

    python -m experiments.study_smollm2 run --part table2      # every Table 2 method, w/o and w/ target LoRA, seed 0
    python -m experiments.study_smollm2 run --part seeds       # ours (w/o, w/) and the target LoRA for seeds 1 and 2
    python -m experiments.study_smollm2 run --part fig3        # k × selection × random pool on FIG3_TASKS
    python -m experiments.study_smollm2 render --to experiments/results/smollm2-bigbench

Every run uses one named budget (``experiments.budgets``; default ``cpu``) and the shared references of
``jaxmerge.adaptive.references`` (zero-shot and the target LoRA once per task and seed, the same entries
``experiments.adaptive`` uses). Each finished run appends a line to ``OUT/results.jsonl`` (the schema of
``experiments.sweep``); a restarted part skips what is there and resumes a half-finished run from its
checkpoints, so the study may be run in pieces and across sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from .sweep import TABLE2_METHODS, Spec, append_jsonl, done_keys, grid

WORLD = "smollm2-bigbench"
FIG3_TASKS = ("unit_conversion_si_conversion", "sports_understanding")  # one with related pool LoRAs, one without
FIG3_KS = (3, 5, 10, 20)
SEEDS = (1, 2)


def part(name: str, tasks) -> list[Spec]:
    if name == "table2":
        return grid("table2", tasks, [0], TABLE2_METHODS)
    if name == "seeds":
        return [Spec("ours", t, tl, s) for s in SEEDS for t in tasks for tl in (False, True)]
    if name == "fig3":
        out = []
        for t in [t for t in FIG3_TASKS if t in tasks]:
            for k in FIG3_KS:
                for tl in (False, True):
                    out += [Spec("ours", t, tl, 0, k=k, selection="evaluation"), Spec("ours", t, tl, 0, k=k, selection="random"),
                            Spec("ours", t, tl, 0, k=k, selection="random", random_pool=True)]
        return out
    raise ValueError(f"part {name!r}: table2 | seeds | fig3")


def run(specs: list[Spec], out: str, budget_name: str = "cpu", progress: bool = True) -> None:
    import jaxmerge
    from jaxmerge.adaptive.methods import effective_k
    from jaxmerge.adaptive.references import reference
    from jaxmerge.adaptive.run import run_method
    from jaxmerge.progress import bar
    from jaxmerge.tasks import load_task
    from .budgets import resolve
    from .world import get_world

    budget = resolve(budget_name, WORLD)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    todo = [s for s in specs if s.key not in done_keys(results)]
    world = get_world(WORLD, progress=progress)
    base = jaxmerge.load_base(world.base_dir, dtype="float32")
    pool, report = jaxmerge.load_pool(world.pool_dirs, base.config, progress=progress)
    print(report.summary())
    tasks = {}
    with bar(len(specs), "study", "run", enabled=progress, initial=len(specs) - len(todo)) as b:
        for spec in todo:
            if spec.task not in tasks:
                tasks = {spec.task: load_task(spec.task, world=world)}
            td = tasks[spec.task]
            t0 = time.time()
            zero = reference("zero-shot", base, td, seed=spec.seed, progress=progress)
            target = reference("target-lora", base, td, seed=spec.seed, steps=budget.target_lora_steps, progress=progress)
            t1 = time.time()
            name = "average" if spec.method == "average-all" else spec.method
            k = pool.num_adapters if spec.method == "average-all" else spec.k if spec.k is not None else budget.k
            over = budget.overrides(name)
            r = run_method(name, base, pool, td, k=effective_k(name, k, pool.num_adapters), seed=spec.seed,
                           out_dir=os.path.join(out, "runs", spec.key), steps=over.pop("steps", None),
                           with_target_lora=spec.with_target_lora, random_pool=spec.random_pool or None,
                           selection_kind=spec.selection, target_lora=target["adapter_path"], progress=progress, **over)
            append_jsonl(results, {"spec": {**dataclasses.asdict(spec), "key": spec.key}, "budget": budget.to_dict(),
                                   "test_accuracy": r["test_accuracy"], "zero_shot_accuracy": zero["test_accuracy"],
                                   "target_lora_accuracy": target["test_accuracy"], "best_val_loss": r.get("best_val_loss"),
                                   "k": r.get("k"), "coefficients_path": r.get("coefficients_path"),
                                   "merged_names": r.get("merged_names"), "selected": r.get("selected"),
                                   "seconds": round(time.time() - t1, 1), "reference_seconds": round(t1 - t0, 1),
                                   "run_seconds": r.get("seconds"), "out_dir": os.path.join(out, "runs", spec.key)})
            b.update(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.study_smollm2", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) one part of the study")
    r.add_argument("--part", choices=("table2", "seeds", "fig3"), required=True)
    r.add_argument("--tasks", nargs="+", help="default: the world's six targets")
    r.add_argument("--budget", default="cpu")
    r.add_argument("--out", default="runs/smollm2-bigbench")
    r.add_argument("--quiet", action="store_true")
    d = sub.add_parser("render", help="table2.md and the figures from OUT/results.jsonl")
    d.add_argument("--out", default="runs/smollm2-bigbench")
    d.add_argument("--to", default="experiments/results/smollm2-bigbench")
    a = p.parse_args(argv)
    if a.cmd == "render":
        import shutil
        from .render import render
        for path in render(a.out, a.to):
            print(f"wrote {path}")
        shutil.copyfile(os.path.join(a.out, "results.jsonl"), os.path.join(a.to, "results.jsonl"))
        return 0
    if a.quiet:
        from jaxmerge.progress import quiet_libraries
        quiet_libraries()
    from .world import world_kind
    tasks = a.tasks or list(world_kind(WORLD).targets)
    run(part(a.part, tasks), a.out, a.budget, progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
