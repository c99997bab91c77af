"""Tasks as data: where a task's examples come from and how a row becomes ``{prompt, answer, choices}``.

A ``Task`` names a source and the fields to read; ``load_task`` turns it into a ``TaskData`` with the
paper's fixed protocol: 100 examples drawn once (seeded) from the source's training split, 80 for
training and 20 for validation, and the test split (or, where the source publishes no labelled test
split, a disjoint carve-out of the remaining training rows).

Sources (``Task.source``):

    "hub:<dataset id>"       a Hugging Face dataset (``config`` names the subset); cached or fetched
    "json:<path>"            local .json/.jsonl/.csv file(s) or a folder holding train/validation/test files
    "bigbench:<task.json>"   a BIG-bench ``task.json`` (``examples`` with ``input`` and ``target`` or
                             ``target_scores``)

Every example is normalised to ``{"prompt": str, "answer": str, "choices": list[str] | None}``; for
multiple-choice tasks ``answer`` is one of ``choices`` (the continuation generation should produce and
log-likelihood ranking should prefer).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Mapping, Sequence
from ..errors import UserError

PROTOCOLS = ("generate", "loglik")
SPLITS = ("train", "validation", "test")


class TaskError(UserError, ValueError):
    """A task that cannot be loaded faithfully (missing dataset, field or split); the message says why."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One target task, as data.

    name:           registry / report name
    source:         see the module docstring
    config:         hub dataset subset (``load_dataset(id, config)``)
    prompt:         ``str.format`` template over the row; dotted fields are written ``{a[b]}``;
                    ``{choices_list}`` expands to the choices, one per line
    answer:         dotted path of the gold field (str, int label, or list whose first item is gold)
    labels:         names of integer labels; "features" reads them from the dataset's ClassLabel
    choices:        dotted path of the candidate answers (a list field), or a tuple of literal keys
                    ("A", "B", …); ``None`` with ``labels`` set means the label names are the choices
    choice_texts:   the option texts behind literal keys: a dotted path of a list field, or a tuple of
                    paths (one field per option); listed by ``{choices_list}`` as "K. text"
    answer_pattern: regex whose first group extracts the gold answer from the answer field
    golds:          dotted path of a list of every accepted answer (exact match against any of them;
                    the first is the training answer); default: the gold answer alone
    shuffle_choices: shuffle option texts per example (seeded) when the source lists the gold one first
    system:         optional system message for the chat template
    max_new_tokens: generation budget (the paper uses 30 for short answers)
    metric:         "exact_match" (after ``normalize``) — the only one implemented
    protocol:       "generate" (greedy + exact match) or "loglik" (summed log-likelihood ranking)
    splits:         the source's (train, validation, test) split names; None = carve from train
    n_train, n_validation, max_test, seed: the fixed sampling protocol
    offline_note:   why the task has no source readable without the hub (shown when the hub is not reachable)
    """
    name: str
    source: str
    config: str | None = None
    prompt: str = "{prompt}"
    answer: str = "answer"
    labels: tuple[str, ...] | str | None = None
    choices: str | tuple[str, ...] | None = None
    choice_texts: str | tuple[str, ...] | None = None
    answer_pattern: str | None = None
    golds: str | None = None
    shuffle_choices: bool = False
    system: str | None = None
    max_new_tokens: int = 30
    metric: str = "exact_match"
    protocol: str = "generate"
    splits: tuple[str | None, str | None, str | None] = ("train", None, "test")
    n_train: int = 80
    n_validation: int = 20
    max_test: int | None = 1000
    seed: int = 0
    offline_note: str | None = None

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise TaskError(f"task {self.name}: protocol {self.protocol!r}, expected one of {PROTOCOLS}")
        if self.metric != "exact_match":
            raise TaskError(f"task {self.name}: metric {self.metric!r}; only 'exact_match' is implemented")
        for f in ("labels", "choices", "choice_texts", "splits"):  # JSON gives lists; keep hashable
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Task":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TaskError(f"task spec has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Loaded examples: ``train`` (80), ``validation`` (20), ``test`` — lists of
    ``{"prompt": str, "answer": str, "choices": list[str] | None, "golds": list[str]}``."""
    task: Task
    train: list[dict]
    validation: list[dict]
    test: list[dict]

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise KeyError(f"split {name!r}: expected one of {SPLITS}")
        return getattr(self, name)


# --- answers -------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """The paper's exact-match normalisation: lower-case, strip surrounding spaces and periods."""
    return text.lower().strip().strip(".").strip()


# --- rows → examples -------------------------------------------------------------------------------
def _get(row: Mapping, path: str):
    """Dotted path into nested dicts/lists: ``"choices.text"``, ``"targets.0"``."""
    cur: Any = row
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            cur = cur[int(part)]
        else:
            raise KeyError(path)
    return cur


def _get_many(row, paths) -> list:
    if isinstance(paths, str):
        return list(_get(row, paths))
    return [_get(row, p) for p in paths]


def make_example(task: Task, row: Mapping, labels: Sequence[str] | None, index: int) -> dict:
    """One source row → ``{"prompt", "answer", "choices", "golds"}`` (raises KeyError on a missing field).

    Order: gold field → label name (int with ``labels``) → choice (int index into ``choices``) →
    ``answer_pattern`` extraction → the key of its text (when ``choice_texts`` are listed by key).
    The template may use ``{choices_list}``: one line per choice, "K. text" with keys, else "- choice".
    """
    gold = _get(row, task.answer)
    if isinstance(gold, (list, tuple)):
        gold = gold[0] if gold else ""
    if isinstance(gold, bool):
        gold = str(gold).lower()
    if isinstance(gold, int) and labels is not None:
        if not 0 <= gold < len(labels):
            raise KeyError(f"label {gold} outside the {len(labels)} label names (unlabelled row?)")
        gold = labels[gold]
    texts = None
    if isinstance(task.choice_texts, str):
        texts = [str(t) for t in _get(row, task.choice_texts)]
    elif task.choice_texts is not None:
        texts = [str(_get(row, p)) for p in task.choice_texts]
    if isinstance(task.choices, str):
        listed = _get(row, task.choices)  # None: this row is not multiple choice
        choices = None if listed is None else [str(c) for c in listed]
    elif task.choices is not None:  # literal keys, cut to the number of texts ("ABCDEFGHIJ" for ≤ 10 options)
        choices = list(task.choices)[:len(texts)] if texts is not None else list(task.choices)
    else:
        choices = list(labels) if labels is not None else None
    if isinstance(gold, int) and choices is not None:
        if not 0 <= gold < len(choices):
            raise KeyError(f"answer index {gold} outside {len(choices)} choices")
        gold = choices[gold]
    gold = str(gold)
    if task.answer_pattern:
        m = re.search(task.answer_pattern, gold, flags=re.S)
        if not m:
            raise KeyError(f"answer_pattern {task.answer_pattern!r} does not match {gold[:60]!r}")
        gold = m.group(1).strip()
    fields = dict(row)
    if choices is not None:
        shuffle = random.Random(f"{task.seed}:{index}").shuffle
        if texts is not None:
            if len(texts) != len(choices):
                raise KeyError(f"{len(choices)} choices but {len(texts)} choice texts")
            if task.shuffle_choices:
                shuffle(texts)
            if gold not in choices and gold in texts:
                gold = choices[texts.index(gold)]
            fields["choices_list"] = "\n".join(f"{k}. {t}" for k, t in zip(choices, texts))
        else:
            if task.shuffle_choices:
                shuffle(choices)
            fields["choices_list"] = "\n".join(f"- {c}" for c in choices)
        if gold not in choices:
            raise KeyError(f"gold answer {gold!r} is not among the choices {choices}")
    golds = [gold]
    if task.golds:
        golds = [str(g) for g in _get(row, task.golds)]
        if gold not in golds:
            raise KeyError(f"gold answer {gold!r} is not among the accepted answers {golds}")
        if choices is not None and not set(golds) <= set(choices):
            raise KeyError(f"accepted answers {golds} are not all among the choices {choices}")
    try:
        prompt = task.prompt.format(**fields)
    except (KeyError, IndexError, AttributeError) as e:
        raise KeyError(f"prompt template field {e}") from None
    return {"prompt": prompt, "answer": gold, "choices": choices, "golds": golds}
