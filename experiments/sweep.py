"""Resumable sweeps behind the paper's Table 2 and Figures 2–4, on the embedded world or real pools.

    python -m experiments.sweep run --grid table2 --seeds 0 1 2 --out runs/sweep
    python -m experiments.sweep run --grid fig3 --out runs/sweep
    python -m experiments.sweep render --out runs/sweep      # table2.md, fig2.png, fig3.png, fig4.png

A grid is a list of run specs (method, task, with/without target LoRA, seed, k, selection, random
pool). Each finished run appends one line to ``OUT/results.jsonl`` (written with flush + fsync);
a restarted sweep skips the specs already there and resumes a half-finished run from its own
checkpoints (``experiments.adaptive`` semantics). The zero-shot and target-LoRA references are
computed once per (task, seed) and shared by every method.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time

TABLE2_METHODS = ("ours", "adamerging", "pi-tuning", "lorahub", "average", "average-all", "ties", "tsv")
FIG3_KS = (5, 10, 20, 30)


@dataclasses.dataclass(frozen=True)
class Spec:
    method: str
    task: str
    with_target_lora: bool
    seed: int
    k: int | None = None           # None: the method's recipe ("average-all": the whole pool)
    selection: str | None = None
    random_pool: bool = False

    @property
    def key(self) -> str:
        parts = [self.task, self.method, "with" if self.with_target_lora else "without", f"seed{self.seed}"]
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.selection:
            parts.append(self.selection)
        if self.random_pool:
            parts.append("random-pool")
        return "-".join(parts)


def grid(name: str, tasks, seeds, methods=None) -> list[Spec]:
    """The specs of a named grid: ``table2`` (Table 2 / Fig. 2 / Fig. 4) or ``fig3``."""
    out = []
    for task in tasks:
        for seed in seeds:
            for tl in (False, True):
                if name == "table2":
                    for m in methods or TABLE2_METHODS:
                        out.append(Spec(m, task, tl, seed))
                elif name == "fig3":
                    for k in FIG3_KS:
                        out.append(Spec("ours", task, tl, seed, k=k, selection="evaluation"))
                        out.append(Spec("ours", task, tl, seed, k=k, selection="random"))
                        out.append(Spec("ours", task, tl, seed, k=k, selection="random", random_pool=True))
                else:
                    raise ValueError(f"unknown grid {name!r}: table2 | fig3")
    return out


def done_keys(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    keys = set()
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    keys.add(json.loads(line)["spec"]["key"])
                except (ValueError, KeyError):
                    pass  # a line cut by a kill: that run is simply done again
    return keys


def append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_sweep(specs: list[Spec], out: str, *, base=None, pool_sources=None, world_size="default",
              target_lora_steps=None, steps=None, progress=True) -> None:
    """Run every spec not yet in ``OUT/results.jsonl``; inputs are loaded once per task."""
    import jaxmerge
    from jaxmerge.adaptive.methods import effective_k
    from jaxmerge.adaptive.run import run_method
    from jaxmerge.distributed import maybe_initialize
    from jaxmerge.tasks import load_task
    from jaxmerge.atomic import write_json
    from jaxmerge.compiles import count_compiles, release_compiled
    from jaxmerge.progress import bar as progress_bar

    maybe_initialize()
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    todo = [s for s in specs if s.key not in done_keys(results)]
    world = None
    if base is None or pool_sources is None or any(s.task == "default" for s in todo):
        from experiments.world import build_world
        world = build_world(size=world_size, progress=progress)
    b = jaxmerge.load_base(base or world.base_dir, dtype="float32" if base is None else "bfloat16")
    pool, report = jaxmerge.load_pool(pool_sources or world.pool_dirs, b.config, progress=progress)
    print(report.summary())
    bar = progress_bar(len(specs), "sweep", "run", enabled=progress, initial=len(specs) - len(todo))
    tasks, by_function, compile_s = {}, collections.Counter(), 0.0
    for spec in todo:
        if spec.task not in tasks:
            tasks = {spec.task: load_task(spec.task, world=world)}  # one task in memory at a time
        td = tasks[spec.task]
        ref = os.path.join(out, "reference", spec.task, f"seed{spec.seed}")
        common = dict(seed=spec.seed, progress=False)
        t0 = time.time()
        with count_compiles() as cc:  # every XLA compilation of this run (its references included)
            zero = run_method("zero-shot", b, None, td, out_dir=os.path.join(ref, "zero-shot"), **common)
            target = run_method("target-lora", b, None, td, out_dir=os.path.join(ref, "target-lora"),
                                steps=target_lora_steps, **common)
            name = "average" if spec.method == "average-all" else spec.method
            k = pool.num_adapters if spec.method == "average-all" else spec.k
            r = run_method(name, b, pool, td, k=effective_k(name, k, pool.num_adapters), seed=spec.seed,
                           out_dir=os.path.join(out, "runs", spec.key), steps=steps,
                           with_target_lora=spec.with_target_lora, random_pool=spec.random_pool or None,
                           selection_kind=spec.selection, target_lora=target["adapter_path"], progress=False)
        append_jsonl(results, {"spec": {**dataclasses.asdict(spec), "key": spec.key}, "test_accuracy": r["test_accuracy"],
                               "zero_shot_accuracy": zero["test_accuracy"], "target_lora_accuracy": target["test_accuracy"],
                               "best_val_loss": r.get("best_val_loss"), "k": r.get("k"),
                               "coefficients_path": r.get("coefficients_path"), "merged_names": r.get("merged_names"),
                               "selected": r.get("selected"), "seconds": round(time.time() - t0, 1),
                               "compiles": cc.total, "compile_seconds": cc.seconds})
        by_function.update(cc.by_function)
        compile_s += cc.seconds
        release_compiled()  # a long sweep compiles hundreds of shapes: stay under the kernel's mapping limit
        bar.update(1)
    bar.close()
    if todo:
        summary = {"runs": len(todo), "compiles": sum(by_function.values()), "compile_seconds": round(compile_s, 1),
                   "by_function": dict(by_function.most_common())}
        write_json(os.path.join(out, "compiles.json"), summary)
        print(f"sweep: {len(todo)} runs, {summary['compiles']} XLA compilations ({summary['compile_seconds']} s); "
              f"most: {', '.join(f'{k} ×{v}' for k, v in by_function.most_common(4))}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a grid")
    r.add_argument("--grid", choices=("table2", "fig3"), required=True)
    r.add_argument("--tasks", nargs="+", help="default: the world's target tasks")
    r.add_argument("--methods", nargs="+", help="table2 only (default: its eight, " + ", ".join(TABLE2_METHODS)
                   + "); any named method or registered static merge (jaxmerge.adaptive.methods.method_names())")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--base")
    r.add_argument("--pool", nargs="+")
    r.add_argument("--world", default="default", choices=("default", "small"))
    r.add_argument("--steps", type=int, help="override the tuning steps of every method")
    r.add_argument("--target-lora-steps", type=int)
    r.add_argument("--out", default="runs/sweep")
    r.add_argument("--quiet", action="store_true")
    d = sub.add_parser("render", help="table and figures from OUT/results.jsonl")
    d.add_argument("--out", default="runs/sweep")
    d.add_argument("--to", help="folder for table2.md and the PNGs (default OUT)")
    d.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: every seed in the results)")
    a = p.parse_args(argv)
    if a.cmd == "render":
        from experiments.render import render
        for path in render(a.out, a.to or a.out, a.seeds):
            print(f"wrote {path}")
        return 0
    if a.methods:
        from jaxmerge.adaptive.methods import method_names
        unknown = [m for m in a.methods if m not in TABLE2_METHODS and m not in method_names()]
        if unknown:
            p.error(f"--methods {' '.join(unknown)}: expected any of {', '.join(dict.fromkeys(TABLE2_METHODS + method_names()))}")
    if a.quiet:
        from jaxmerge.progress import quiet_libraries
        quiet_libraries()
    tasks = a.tasks
    if tasks is None:
        from experiments.world import build_world
        tasks = build_world(size=a.world, progress=not a.quiet).target_tasks
    specs = grid(a.grid, tasks, a.seeds, a.methods)
    run_sweep(specs, a.out, base=a.base, pool_sources=a.pool, world_size=a.world, steps=a.steps,
              target_lora_steps=a.target_lora_steps, progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
