"""Render a sweep's ``results.jsonl`` as the analogues of the paper's Table 2 and Figures 2–4.

Accuracies are averaged over seeds per task, then over tasks. Figure 2 shows the mean change in
accuracy (percentage points) against zero-shot and against the target-task LoRA — points, not the
paper's relative %, because a tiny world's zero-shot accuracy can be 0. Figure 4 shows, per slot of
the evaluation-selected pool (slot 1 = best evaluation score; with the target LoRA, slot 1 = the
target LoRA), the share of the learned coefficients: per (module, layer) min–max normalised to
[0, 1], divided by their sum, averaged over modules and layers (paper §5, Q3).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

LABELS = {"ours": "Ours", "adamerging": "AdaMerging", "pi-tuning": "π-Tuning", "lorahub": "LoraHub",
          "average": "Simple avg.", "average-all": "Simple avg. (all)", "ties": "TIES", "tsv": "TSV"}


def read(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def _mean_over_tasks(rows, field="test_accuracy") -> float:
    by_task = collections.defaultdict(list)
    for r in rows:
        by_task[r["spec"]["task"]].append(r[field])
    return float(np.mean([np.mean(v) for v in by_task.values()])) if by_task else float("nan")


def _cell(rows, field="test_accuracy") -> str:
    """Mean over tasks (each task averaged over its seeds); with several seeds, ± the sample standard
    deviation over seeds of the per-seed task means (render complete seeds only: ``--seeds``)."""
    mean = _mean_over_tasks(rows, field)
    if np.isnan(mean):
        return "–"
    seeds = sorted({r["spec"]["seed"] for r in rows})
    if len(seeds) < 2:
        return f"{mean:.3f}"
    per_seed = [_mean_over_tasks([r for r in rows if r["spec"]["seed"] == s], field) for s in seeds]
    return f"{mean:.3f} ± {np.std(per_seed, ddof=1):.3f}"


def table2(rows: list[dict]) -> str:
    main = [r for r in rows if r["spec"]["k"] is None and not r["spec"]["random_pool"] and not r["spec"]["selection"]]
    tasks = sorted({r["spec"]["task"] for r in main})
    seeds = sorted({r["spec"]["seed"] for r in main})
    spread = " (± the sample standard deviation over seeds of the mean over tasks)" if len(seeds) > 1 else ""
    lines = [f"Average test accuracy over {len(tasks)} tasks ({', '.join(tasks)}), seeds {seeds}{spread}.", "",
             "| Method | w/o target LoRA | w/ target LoRA |", "|---|---|---|"]
    for m in LABELS:
        sel = [r for r in main if r["spec"]["method"] == m]
        if not sel:
            continue
        cells = [_cell([r for r in sel if r["spec"]["with_target_lora"] == tl]) for tl in (False, True)]
        k = sel[0].get("k")
        lines.append(f"| {LABELS[m]} ({k}) | " + " | ".join(cells) + " |")
    if main:
        lines.append(f"| Prompting (zero-shot) | {_cell(main, 'zero_shot_accuracy')} | |")
        lines.append(f"| Target-task LoRA | {_cell(main, 'target_lora_accuracy')} | |")
    lines += ["", "Per task (w/o / w/ target LoRA):", "",
              "| Method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in LABELS:
        sel = [r for r in main if r["spec"]["method"] == m]
        if not sel:
            continue
        cells = []
        for t in tasks:
            v = [np.mean([r["test_accuracy"] for r in sel if r["spec"]["task"] == t and r["spec"]["with_target_lora"] == tl] or [np.nan])
                 for tl in (False, True)]
            cells.append(" / ".join("–" if np.isnan(x) else f"{x:.2f}" for x in v))
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    for name, field in (("Zero-shot", "zero_shot_accuracy"), ("Target LoRA", "target_lora_accuracy")):
        cells = [f"{np.mean([r[field] for r in main if r['spec']['task'] == t]):.2f}" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fig2(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = [r for r in rows if r["spec"]["k"] is None and not r["spec"]["random_pool"] and not r["spec"]["selection"]]
    methods = [m for m in LABELS if any(r["spec"]["method"] == m for r in main)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, (ref, title) in zip(axes, (("zero_shot_accuracy", "a) vs zero-shot"), ("target_lora_accuracy", "b) vs target-task LoRA"))):
        x = np.arange(len(methods))
        for j, tl in enumerate((False, True)):
            vals = []
            for m in methods:
                sel = [r for r in main if r["spec"]["method"] == m and r["spec"]["with_target_lora"] == tl]
                vals.append(100 * np.mean([r["test_accuracy"] - r[ref] for r in sel]) if sel else np.nan)
            ax.bar(x + (j - 0.5) * 0.38, vals, 0.38, label="w/ target LoRA" if tl else "w/o target LoRA")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, [LABELS[m] for m in methods], rotation=30, ha="right")
        ax.set_ylabel("mean Δ accuracy (points)")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def fig3_rows(rows: list[dict]) -> list[dict]:
    """Ours' runs at an explicit k, plus — on the tasks that have those — Table 2's Ours runs as the point
    at their own k with Ours' own selection (the same run: the study does not repeat it)."""
    from jaxmerge.adaptive.methods import method
    ours = [r for r in rows if r["spec"]["method"] == "ours"]
    sel = [r for r in ours if r["spec"]["k"] is not None]
    tasks, kind = {r["spec"]["task"] for r in sel}, method("ours").selection.kind
    for r in ours:
        s = r["spec"]
        if s["k"] is None and not s["selection"] and not s["random_pool"] and s["task"] in tasks and r.get("k"):
            sel.append({**r, "spec": {**s, "k": r["k"], "selection": kind}})
    return sel


def fig3(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sel = fig3_rows(rows)
    if not sel:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for (selection, rnd), label, color in ((("evaluation", False), "evaluation", "C0"), (("random", False), "random", "C1"),
                                           (("random", True), "random re-init", "C2")):
        for tl, style in ((False, ":"), (True, "-")):
            if rnd and not tl:
                continue  # re-initialised pools are run with the target-task LoRA only (as in the paper)
            pts = sorted({r["spec"]["k"] for r in sel})
            ys = [_mean_over_tasks([r for r in sel if r["spec"]["k"] == k and r["spec"]["selection"] == selection
                                    and r["spec"]["random_pool"] == rnd and r["spec"]["with_target_lora"] == tl])
                  for k in pts]
            ax.plot(pts, ys, style, color=color, marker="o", label=f"{label}, {'w/' if tl else 'w/o'} target")
    ax.axhline(_mean_over_tasks(sel, "target_lora_accuracy"), color="gray", label="target-task LoRA")
    ax.set_xlabel("k (LoRAs merged)")
    ax.set_ylabel("mean test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def coefficient_shares(path: str) -> np.ndarray:
    """``[N]`` share of each merged adapter in the learned coefficients (see module docstring)."""
    z = np.load(path)
    shares = []
    for key in z.files:
        if not key.startswith("coef/"):
            continue
        c = z[key]  # [N, L]
        lo, hi = c.min(axis=0, keepdims=True), c.max(axis=0, keepdims=True)
        norm = (c - lo) / np.where(hi > lo, hi - lo, 1.0)
        tot = norm.sum(axis=0, keepdims=True)
        shares.append(np.where(tot > 0, norm / np.where(tot > 0, tot, 1.0), 1.0 / c.shape[0]).mean(axis=1))
    return np.mean(shares, axis=0)


def fig4(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sel = [r for r in rows if r["spec"]["method"] == "ours" and r["spec"]["k"] is None and r.get("coefficients_path")
           and os.path.exists(r["coefficients_path"])]
    if not sel:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, tl in zip(axes, (False, True)):
        s = [100 * coefficient_shares(r["coefficients_path"]) for r in sel if r["spec"]["with_target_lora"] == tl]
        if not s:
            continue
        n = min(len(x) for x in s)
        ax.boxplot(np.stack([x[:n] for x in s]), positions=np.arange(1, n + 1))
        ax.set_xlabel("slot (1 = " + ("target-task LoRA" if tl else "best evaluation score") + ")")
        ax.set_title(("b) w/" if tl else "a) w/o") + " target-task LoRA")
    axes[0].set_ylabel("% of coefficients")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _save(fig, path: str) -> None:
    from jaxmerge.atomic import atomic_file
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=120)


def check_one_pool(rows: list[dict]) -> None:
    """Rows that record their pool's identity must all share it: a table never mixes pools."""
    pools = {r["pool_identity"]["sha256"] for r in rows if r.get("pool_identity")}
    if len(pools) > 1:
        from jaxmerge.errors import UserError
        worlds = sorted({r.get("world", "?") for r in rows})
        raise UserError(f"results.jsonl mixes runs on {len(pools)} differently built pools (worlds {', '.join(worlds)}); "
                        "render the runs of one build")


def render(out: str, to: str, seeds=None) -> list[str]:
    """Write table2.md and fig2–4.png from ``OUT/results.jsonl`` (only ``seeds`` when given)."""
    from jaxmerge.atomic import write_text
    rows = read(os.path.join(out, "results.jsonl"))
    check_one_pool(rows)
    if seeds is not None:
        rows = [r for r in rows if r["spec"]["seed"] in set(seeds)]
    os.makedirs(to, exist_ok=True)
    written = [write_text(os.path.join(to, "table2.md"), table2(rows))]
    for name, fn in (("fig2.png", fig2), ("fig3.png", fig3), ("fig4.png", fig4)):
        if fn(rows, os.path.join(to, name)) is not False:
            written.append(os.path.join(to, name))
    return written
