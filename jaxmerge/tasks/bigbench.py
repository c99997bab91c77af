"""BIG-bench ``task.json`` files: their examples as rows rendered the way BIG-bench renders them, and
the catalogue of the JSON tasks inside the ``bigbench`` sdist on PyPI (read without installing it).

Rendering (BIG-bench's ``json_task`` semantics, zero-shot): the prompt is ``task_prefix +
example_input_prefix + input (+ the choices, each after choice_prefix, when append_choices_to_input)
+ example_output_prefix``, with BIG-bench's defaults ("", "\\nQ: ", "\\nA: ", "\\n  choice: ", true);
surrounding white space is stripped, since the prompt becomes a chat message. Listed choices are in a
seeded shuffle of their sorted order (BIG-bench permutes them too). A ``target_scores`` example is
multiple choice: its choices are the scored strings, its golds those with the highest score; a
``target`` example (a string or a list of accepted strings) is answered by generation. Duplicated
prompts are dropped (the first kept), so a carved-out test row never repeats a training prompt.

A task folder whose ``task.json`` has no examples is the union of its subtasks (each rendered with
its own prefixes). Registry names of subtasks join the path with "_": ``unit_conversion/si_conversion``
is ``unit_conversion_si_conversion`` (the paper's spelling).

    rows = read_rows(source)          # "pypi:bigbench==1.0.0:bigbench-1.0.0/…/task.json" or a local path
    SDIST.member("sports_understanding")   # the registry source of a task
"""

from __future__ import annotations

import json
import os
import random
from typing import Sequence

from ..registry_source import RegistryError, is_source, member_path, members, parse_source
from .spec import TaskError

SDIST_NAME, SDIST_VERSION = "bigbench", "1.0.0"
TASKS_ROOT = f"{SDIST_NAME}-{SDIST_VERSION}/bigbench/benchmark_tasks"
DEFAULTS = {"task_prefix": "", "example_input_prefix": "\nQ: ", "example_output_prefix": "\nA: ",
            "choice_prefix": "\n  choice: ", "append_choices_to_input": True}


def source_of(path: str) -> str:
    """The registry source of the BIG-bench task at ``path`` ("sports_understanding",
    "unit_conversion/si_conversion") inside the sdist."""
    return f"pypi:{SDIST_NAME}=={SDIST_VERSION}:{TASKS_ROOT}/{path}/task.json"


def catalogue(progress: bool = True) -> dict[str, str]:
    """Every JSON task of the sdist: ``{name: task path}`` (``name`` = the path with "_" for "/"),
    subtask parents included. Reads the archive's member list (fetching the archive if needed)."""
    out = {}
    for m in members(SDIST_NAME, SDIST_VERSION, "sdist", progress):
        if m.startswith(TASKS_ROOT + "/") and m.endswith("/task.json"):
            path = m[len(TASKS_ROOT) + 1:-len("/task.json")]
            out[path.replace("/", "_")] = path
    return out


def render(task: dict, ex: dict, seed: str) -> dict:
    """One example → ``{"input", "target", "targets", "choices"}`` (see the module docstring)."""
    get = lambda k: task.get(k, DEFAULTS[k])
    text = str(ex["input"])
    choices = golds = None
    scores = ex.get("target_scores")
    if scores:
        choices = [str(c) for c in scores]
        best = max(scores.values())
        golds = [str(c) for c, v in scores.items() if v == best]
        if len(golds) == len(choices):
            raise ValueError("no choice scores higher than another")
        if get("append_choices_to_input"):
            listed = sorted(choices)
            random.Random(seed).shuffle(listed)
            text += get("choice_prefix") + get("choice_prefix").join(listed)
    else:
        t = ex.get("target")
        golds = [str(x) for x in t] if isinstance(t, list) else [str(t)] if t is not None else []
        if not golds or not golds[0].strip():
            raise ValueError("no target")
    prompt = (str(get("task_prefix")) + str(get("example_input_prefix")) + text + str(get("example_output_prefix"))).strip()
    return {"input": prompt, "target": golds[0], "targets": golds, "choices": choices}


def _load_json(where: str) -> dict:
    path = member_path(where) if is_source(where) else where
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TaskError(f"{where}: not a readable BIG-bench task.json ({type(e).__name__}: {e})") from None


def _subtasks(where: str) -> list[str]:
    """The subtask task.json sources below a parent task.json (sorted)."""
    if is_source(where):
        src = parse_source(where)
        folder = src.member[:-len("task.json")]
        found = sorted(m for m in members(src.name, src.version, src.kind)
                       if m.startswith(folder) and m.endswith("/task.json") and m.count("/") == folder.count("/") + 1)
        return [f"pypi:{src.name}=={src.version}:{m}" for m in found]
    folder = os.path.dirname(os.path.abspath(where))
    return sorted(os.path.join(folder, d, "task.json") for d in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, d, "task.json")))


def read_rows(where: str, seed: int = 0) -> list[dict]:
    """The rendered rows of a BIG-bench task.json (a local path or a registry source)."""
    try:
        d = _load_json(where)
    except RegistryError as e:
        raise TaskError(str(e)) from None
    if not isinstance(d, dict):
        raise TaskError(f"{where}: not a BIG-bench task.json (no object)")
    examples = d.get("examples")
    if not examples:
        subs = _subtasks(where)
        if not subs:
            raise TaskError(f"{where}: a BIG-bench task.json with no examples and no subtasks")
        return _dedupe([r for s in subs for r in read_rows(s, seed)])
    if not isinstance(examples, list):
        raise TaskError(f"{where}: 'examples' is not a list")
    rows, bad = [], []
    for i, ex in enumerate(examples):
        try:
            rows.append(render(d, ex, f"{seed}:{d.get('name', '')}:{i}"))
        except (KeyError, ValueError, TypeError) as e:
            bad.append(f"example {i}: {type(e).__name__}: {e}")
    if len(bad) > 0.05 * len(examples):
        raise TaskError(f"{where}: {len(bad)} of {len(examples)} examples unreadable (first: {bad[0]})")
    return _dedupe(rows)


def _dedupe(rows: Sequence[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["input"] not in seen:
            seen.add(r["input"])
            out.append(r)
    return out


def is_multiple_choice(where: str) -> bool:
    """Whether a task.json's (first subtask's) examples are ``target_scores`` ones."""
    d = _load_json(where)
    ex = d.get("examples") or []
    if not ex:
        subs = _subtasks(where)
        return bool(subs) and is_multiple_choice(subs[0])
    return "target_scores" in ex[0]
