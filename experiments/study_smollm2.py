"""The study on the smollm2-bigbench world: resumable parts, rendered with ``experiments.render``.

    python -m experiments.study_smollm2 run --part table2      # every Table 2 method, w/o and w/ target LoRA, seed 0
    python -m experiments.study_smollm2 run --part seeds       # ours (w/o, w/) and the target LoRA for seeds 1 and 2
    python -m experiments.study_smollm2 run --part fig3        # k × selection × random pool on FIG3_TASKS
    python -m experiments.study_smollm2 render --to experiments/results/smollm2-bigbench

``run`` also renders into the committed results folder after every finished run (``--render-to``), so a
run is in a tracked file the moment it ends: session 13's 33 runs were lost with the scratch ``OUT``.

Every run uses one named budget (``experiments.budgets``; default ``cpu``) and the shared references of
``jaxmerge.adaptive.references`` (zero-shot and the target LoRA once per task and seed, the same entries
``experiments.adaptive`` uses). Each finished run appends a line to ``OUT/results.jsonl`` (the schema of
``experiments.sweep``); a restarted part skips what is there and resumes a half-finished run from its
checkpoints, so the study may be run in pieces. Across machines, ``--resume-from`` (default: the
committed ``experiments/results/smollm2-bigbench/results.jsonl``) seeds a new ``OUT`` with the runs
already finished; every line records the world folder (its recipe hash) and the pool's identity, and
``render`` refuses to mix runs on differently built pools.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from .sweep import TABLE2_METHODS, Spec, append_jsonl, done_keys, grid

WORLD = "smollm2-bigbench"
COMMITTED = os.path.join(os.path.dirname(__file__), "results", WORLD, "results.jsonl")
FIG3_TASKS = ("unit_conversion_si_conversion", "sports_understanding")  # one with related pool LoRAs, one without
FIG3_KS = (3, 5, 10, 20)
SEEDS = (1, 2)


def part(name: str, tasks, k: int | None = None) -> list[Spec]:
    """The specs of one part; ``k``: the budget's default k, whose evaluation-selected fig3 point is Table 2's
    Ours run (listed under its Table 2 key, so it runs once)."""
    if name == "table2":
        return grid("table2", tasks, [0], TABLE2_METHODS)
    if name == "seeds":
        return [Spec("ours", t, tl, s) for s in SEEDS for t in tasks for tl in (False, True)]
    if name == "fig3":
        out = []
        for t in [t for t in FIG3_TASKS if t in tasks]:
            for kk in FIG3_KS:
                for tl in (False, True):
                    out += [Spec("ours", t, tl, 0) if kk == k else Spec("ours", t, tl, 0, k=kk, selection="evaluation"),
                            Spec("ours", t, tl, 0, k=kk, selection="random")]
                # the paper re-initialises the recycled LoRAs with the target-task LoRA kept intact: w/ only
                out.append(Spec("ours", t, True, 0, k=kk, selection="random", random_pool=True))
        return out
    raise ValueError(f"part {name!r}: table2 | seeds | fig3")


def publish(out: str, to: str) -> list[str]:
    """Render ``OUT/results.jsonl`` into ``TO``: table2.md, the figures, paper.md and a copy of results.jsonl."""
    from jaxmerge.atomic import write_bytes, write_text
    from .render import read, render
    written = render(out, to)
    written.append(write_text(os.path.join(to, "paper.md"), beside_paper(read(os.path.join(out, "results.jsonl")))))
    with open(os.path.join(out, "results.jsonl"), "rb") as f:
        written.append(write_bytes(os.path.join(to, "results.jsonl"), f.read()))
    return written


def run(specs: list[Spec], out: str, budget_name: str = "cpu", progress: bool = True,
        resume_from: str | None = COMMITTED, render_to: str | None = None) -> None:
    """Run ``specs`` not yet in ``OUT/results.jsonl``; with ``render_to``, publish there after every run, so
    that a finished run is in the tracked results folder at once, not only in the scratch ``OUT``."""
    import jaxmerge
    from jaxmerge.adaptive.methods import effective_k
    from jaxmerge.adaptive.references import reference
    from jaxmerge.adaptive.run import run_method
    from jaxmerge.compiles import release_compiled
    from jaxmerge.progress import bar
    from jaxmerge.tasks import load_task
    from .budgets import resolve
    from .world import get_world

    budget = resolve(budget_name, WORLD)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    if resume_from and os.path.exists(resume_from) and not os.path.exists(results):
        import shutil
        shutil.copyfile(resume_from, results)  # OUT is a scratch folder; the committed file stays as it is
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
                                   "run_seconds": r.get("seconds"), "out_dir": os.path.join(out, "runs", spec.key),
                                   "world": os.path.basename(world.root), "pool_identity": {"sha256": r["identity"]["pool"]["sha256"]}})
            if render_to:
                publish(out, render_to)
            release_compiled()  # stay under the kernel's memory-mapping limit (jaxmerge.compiles)
            b.update(1)


def paper_name(target: str) -> str:
    """The paper's task for a world target (``tracking_shuffled_objects_three_objects`` is a subtask of
    the paper's ``tracking_shuffled_objects``)."""
    from jaxmerge.tasks.registry import PAPER
    from .world_smollm2 import TARGETS
    return target if target in PAPER["tasks"] else TARGETS[target].split("/")[0]


def beside_paper(rows: list[dict]) -> str:
    """Per target: zero-shot and target-task LoRA here (SmolLM2-135M, mean over seeds) and in the paper
    (Llama-3.1-8B-Instruct, the authors' released per-task numbers), and Ours (w/o, w/ target LoRA)."""
    import numpy as np
    from jaxmerge.tasks.registry import PAPER
    main = [r for r in rows if r["spec"]["k"] is None and not r["spec"]["random_pool"] and not r["spec"]["selection"]]
    mean = lambda xs: f"{np.mean(xs):.3f}" if xs else "–"
    lines = ["| Target | zero-shot here | zero-shot paper | target LoRA here | target LoRA paper | Ours here w/o / w/ |",
             "|---|---|---|---|---|---|"]
    for t in sorted({r["spec"]["task"] for r in main}):
        sel = [r for r in main if r["spec"]["task"] == t]
        p = PAPER["tasks"][paper_name(t)]
        ours = [mean([r["test_accuracy"] for r in sel if r["spec"]["method"] == "ours" and r["spec"]["with_target_lora"] == tl])
                for tl in (False, True)]
        name = t if paper_name(t) == t else f"{t} (paper: {paper_name(t)})"
        lines.append(f"| {name} | {mean([r['zero_shot_accuracy'] for r in sel])} | {sum(p['zero_shot'].values()) / len(p['zero_shot']):.3f} | "
                     f"{mean([r['target_lora_accuracy'] for r in sel])} | {p['target_lora']:.3f} | {' / '.join(ours)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.study_smollm2", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) one part of the study")
    r.add_argument("--part", choices=("table2", "seeds", "fig3"), required=True)
    r.add_argument("--tasks", nargs="+", help="default: the world's six targets")
    r.add_argument("--budget", default="cpu")
    r.add_argument("--out", default="runs/smollm2-bigbench")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--resume-from", default=COMMITTED, help="finished runs to start a new OUT from (default: %(default)s)")
    r.add_argument("--render-to", default=os.path.dirname(COMMITTED),
                   help="render the results there after every run ('' for never; default: %(default)s)")
    d = sub.add_parser("render", help="table2.md and the figures from OUT/results.jsonl")
    d.add_argument("--out", default="runs/smollm2-bigbench")
    d.add_argument("--to", default="experiments/results/smollm2-bigbench")
    a = p.parse_args(argv)
    from jaxmerge.errors import cli_errors
    with cli_errors("python -m experiments.study_smollm2"):
        if a.cmd == "render":
            for path in publish(a.out, a.to):
                print(f"wrote {path}")
            return 0
        if a.quiet:
            from jaxmerge.progress import quiet_libraries
            quiet_libraries()
        from .budgets import resolve
        from .world import world_kind
        tasks = a.tasks or list(world_kind(WORLD).targets)
        run(part(a.part, tasks, resolve(a.budget, WORLD).k), a.out, a.budget, progress=not a.quiet,
            resume_from=a.resume_from, render_to=a.render_to or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
