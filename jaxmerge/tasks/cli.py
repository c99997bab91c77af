"""``jaxmerge tasks list``: every registry task, its protocol, where its data comes from, whether it is
available offline now, and the paper's Llama-3.1-8B numbers for it."""

from __future__ import annotations

import json
import os
import sys


def availability(task) -> str:
    """Whether the task's examples can be read now without any network ("yes …"), and if not, how."""
    from ..registry_source import archive_dir
    from .bigbench import SDIST_NAME, SDIST_VERSION
    kind, _, where = task.source.partition(":")
    if kind == "bigbench":
        folder = archive_dir(SDIST_NAME, SDIST_VERSION, "sdist")
        if os.path.exists(os.path.join(folder, "archive.json")):
            return "yes (bigbench sdist in the cache)"
        # bigbench==1.0.0 left PyPI (seen 2026-12-06): a fetch is tried, but a copy put in the folder is what works
        return f"no: needs the bigbench=={SDIST_VERSION} sdist, no longer on PyPI: put a copy in {folder}"
    if kind == "hub":
        from .load import _hub_snapshot
        if _hub_snapshot(where) is not None:  # the snapshot load_task reads offline
            return "yes (hub dataset in the cache)"
        return "no: " + task.offline_note if task.offline_note else "after a download from the hub"
    return "no: " + (task.offline_note or "no public source")


def rows() -> list[dict]:
    from .registry import PAPER, REGISTRY
    out = []
    for name in sorted(REGISTRY):
        t, p = REGISTRY[name], PAPER["tasks"][name]
        zero = next(iter(p["zero_shot"].values()), None) if p["zero_shot"] else None
        out.append({"task": name, "protocol": t.protocol, "source": t.source + (f" ({t.config})" if t.config else ""),
                    "offline": availability(t), "in_paper_62": p["in_paper_62"],
                    "paper_zero_shot": zero, "paper_target_lora": p["target_lora"]})
    return out


def run(args) -> int:
    from .bigbench import TASKS_ROOT
    table = rows()
    if args.offline:
        table = [r for r in table if r["offline"].startswith("yes")]
    if args.json:
        json.dump(table, sys.stdout, indent=1)
        print()
        return 0
    fmt = lambda x: "  -  " if x is None else f"{x:.3f}"
    print(f"{'task':<40}{'protocol':<10}{'62':<4}{'zero-shot':>10}{'LoRA':>7}  offline now / source")
    for r in table:
        where = r["source"].replace(f"bigbench:pypi:bigbench==1.0.0:{TASKS_ROOT}/", "bigbench sdist: ")
        print(f"{r['task']:<40}{r['protocol']:<10}{'*' if r['in_paper_62'] else '':<4}{fmt(r['paper_zero_shot']):>10}"
              f"{fmt(r['paper_target_lora']):>7}  {r['offline']}  [{where.removesuffix('/task.json')}]")
    n62 = sum(r["in_paper_62"] for r in table)
    print(f"\n{len(table)} tasks ({n62} of the paper's 62, marked *); zero-shot and LoRA: the authors' Llama-3.1-8B-Instruct "
          "accuracies. BIG-bench tasks beyond these: --task bigbench:<task>[/<subtask>].")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tasks", help="the task registry (the paper's 62 tasks and more)")
    sub = p.add_subparsers(dest="tasks_command", required=True)
    ls = sub.add_parser("list", help="each task, its protocol, and whether it is available offline now")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--offline", action="store_true", help="only the tasks available offline now")
    ls.set_defaults(func=run)
