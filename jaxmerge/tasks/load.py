"""``load_task``: a name, spec file, data file or BIG-bench ``task.json`` → ``TaskData``.

Resolution order for a string: a task of the given ``world`` (its ``tasks`` folders hold a
``task.json`` spec and JSONL splits), a name of ``REGISTRY`` (or an alias the authors' results use),
``bigbench:<task>[/<subtask>]`` (any JSON task of the BIG-bench sdist), then a path: a folder with
``task.json``; a BIG-bench ``task.json``; a .json/.jsonl/.csv file or a folder of split files whose
rows carry ``prompt``/``answer``/``choices``. A plain name that is none of these but a BIG-bench JSON
task of the sdist already in the cache resolves like ``bigbench:`` does.

Every tabular source is read through ``datasets.load_dataset`` (the hub loader, or its ``json`` /
``csv`` builders). Offline, a hub dataset is read from datasets' cache or from its snapshot in
huggingface_hub's cache; with neither, it fails with "dataset X is not cached".
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Sequence

import numpy as np

from .spec import Task, TaskData, TaskError, make_example

DATA_EXTS = (".jsonl", ".json", ".csv")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
MAX_BAD_FRACTION = 0.05  # rows that cannot be turned into examples: skipped up to this share, else an error


def load_task(name_or_path: "str | os.PathLike | Task", world: Any = None) -> TaskData:
    """Resolve and load a task; see the module docstring. ``world`` is an ``experiments.world.World``."""
    return load_examples(resolve_task(name_or_path, world))


def resolve_task(name_or_path: "str | os.PathLike | Task", world: Any = None) -> Task:
    from .registry import ALIASES, REGISTRY
    if isinstance(name_or_path, Task):
        return name_or_path
    name = os.fspath(name_or_path)
    if world is not None and name in getattr(world, "tasks", {}):
        return read_spec(os.path.join(world.tasks[name], "task.json"))
    if name in REGISTRY or name in ALIASES:
        return REGISTRY[ALIASES.get(name, name)]
    if name.startswith("bigbench:"):
        return bigbench_task(name.split(":", 1)[1])
    if os.path.isdir(name):
        spec = os.path.join(name, "task.json")
        if os.path.exists(spec) and not _is_bigbench(spec):
            return read_spec(spec)
        if os.path.exists(spec):
            return _bigbench_task(spec)
        files = _local_files(name)
        return Task(name=_stem(name), source="json:" + os.path.abspath(name),
                    splits=("train", "validation" if "validation" in files else None, "test" if "test" in files else None))
    if os.path.isfile(name):
        if name.endswith(".json") and _is_bigbench(name):
            return _bigbench_task(name)
        if name.endswith(".json") and _is_spec(name):
            return read_spec(name)
        if name.endswith(DATA_EXTS):
            return Task(name=_stem(name), source="json:" + os.path.abspath(name), splits=("train", None, None))
    cached = _cached_bigbench(name)
    if cached is not None:
        return cached
    hint = f" or one of the world's tasks {sorted(world.tasks)}" if world is not None else ""
    raise TaskError(f"task {name!r}: not a registry name (e.g. {', '.join(sorted(REGISTRY)[:4])}, …){hint}, "
                    "not bigbench:<task>[/<subtask>], and no such file or folder")


def _bigbench_task(path: str) -> Task:
    """A local BIG-bench task.json: multiple choice (``target_scores``) is scored by log-likelihood."""
    from .bigbench import is_multiple_choice
    return Task(name=_stem(os.path.dirname(os.path.abspath(path))), source="bigbench:" + os.path.abspath(path),
                prompt="{input}", answer="target", golds="targets", choices="choices", splits=("train", None, None),
                protocol="loglik" if is_multiple_choice(path) else "generate")


def bigbench_task(path: str, **fields) -> Task:
    """The sdist's BIG-bench task at ``path`` ("navigate", "logical_deduction/three_objects" or its
    "_"-joined name), named like the registry names its subtasks."""
    from .bigbench import catalogue, is_multiple_choice, source_of
    path = path.strip("/")
    known = catalogue()
    path = known.get(path, path)
    if path not in known.values():
        near = sorted(n for n in known if n.split("_")[0] == path.split("/")[0].split("_")[0])[:6]
        raise TaskError(f"bigbench:{path}: no such JSON task in the bigbench sdist"
                        + (f" (similar: {', '.join(near)})" if near else ""))
    src = source_of(path)
    return Task(name=path.replace("/", "_"), source="bigbench:" + src, prompt="{input}", answer="target",
                golds="targets", choices="choices", splits=("train", None, None),
                protocol="loglik" if is_multiple_choice(src) else "generate", **fields)


def _cached_bigbench(name: str) -> Task | None:
    """``bigbench_task(name)`` when the sdist's member list is already in the cache and names it."""
    from ..registry_source import archive_dir
    from .bigbench import SDIST_NAME, SDIST_VERSION, catalogue
    if not os.path.exists(os.path.join(archive_dir(SDIST_NAME, SDIST_VERSION, "sdist"), "members.json")):
        return None
    return bigbench_task(name) if name in catalogue(progress=False) else None


def read_spec(path: str) -> Task:
    """A ``task.json`` spec; a relative ``json:`` source is resolved against the spec's folder."""
    with open(path) as f:
        d = json.load(f)
    task = Task.from_json(d)
    kind, _, where = task.source.partition(":")
    if kind in ("json", "bigbench") and not os.path.isabs(where) and not where.startswith("pypi:"):
        task = Task.from_json({**d, "source": f"{kind}:" + os.path.join(os.path.dirname(os.path.abspath(path)), where)})
    return task


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


def _is_bigbench(path: str) -> bool:
    d = _read_json(path)
    return isinstance(d, dict) and isinstance(d.get("examples"), list)


def _is_spec(path: str) -> bool:
    d = _read_json(path)
    return isinstance(d, dict) and "source" in d and "name" in d


# --- sources ------------------------------------------------------------------------------------------
def _hub(task: Task):
    """A hub dataset: ``datasets.load_dataset`` (its own cache honoured); when that cannot reach the hub
    (``HF_HUB_OFFLINE=1``, no network), the dataset repo's snapshot in huggingface_hub's cache, read as a
    local dataset folder (the same files and README configs the hub loader would read)."""
    import datasets
    dataset_id = task.source.split(":", 1)[1]
    what = dataset_id + (f" ({task.config})" if task.config else "")
    note = f"; this task has no offline source: {task.offline_note}" if task.offline_note else ""
    try:
        return datasets.load_dataset(dataset_id, task.config)
    except Exception as e:  # ConnectionError when offline, DatasetNotFoundError, a gated dataset, ...
        unreachable = isinstance(e, (ConnectionError, FileNotFoundError)) or any(
            w in str(e).lower() for w in ("offline", "not find", "couldn't"))
        if not unreachable:
            raise TaskError(f"task {task.name}: loading dataset {what} failed: {type(e).__name__}: {e}") from e
        reason = f"{type(e).__name__}: {e}"
    folder = _hub_snapshot(dataset_id)
    if folder is None:
        from huggingface_hub import constants
        mode = " and HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE else ""
        raise TaskError(f"dataset {what} is not cached (neither by datasets nor in the Hugging Face cache "
                        f"{constants.HF_HUB_CACHE}){mode}; run with network once to download it "
                        f"(task {task.name}; {reason}){note}")
    try:
        return datasets.load_dataset(folder, task.config)
    except Exception as e:
        raise TaskError(f"task {task.name}: reading the cached snapshot of dataset {what} ({folder}) failed: "
                        f"{type(e).__name__}: {e}") from e


def _hub_snapshot(dataset_id: str) -> str | None:
    """The cached snapshot folder of a hub dataset repo (huggingface_hub's layout), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return snapshot_download(dataset_id, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _local_files(where: str) -> dict[str, str]:
    if os.path.isfile(where):
        return {"train": where}
    if not os.path.isdir(where):
        raise TaskError(f"{where}: no such file or folder")
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            for ext in DATA_EXTS:
                p = os.path.join(where, alias + ext)
                if os.path.exists(p) and split not in found:
                    found[split] = p
    if "train" not in found:
        raise TaskError(f"{where}: no train.jsonl / train.json / train.csv")
    return found


def _local(task: Task):
    import datasets
    files = _local_files(task.source.split(":", 1)[1])
    exts = {os.path.splitext(p)[1] for p in files.values()}
    if len(exts) != 1:
        raise TaskError(f"task {task.name}: mixed file types {sorted(exts)}")
    builder = "csv" if exts == {".csv"} else "json"
    try:
        return datasets.load_dataset(builder, data_files=files)
    except Exception as e:
        raise TaskError(f"task {task.name}: reading {files} with datasets failed: {type(e).__name__}: {e}") from e


def _bigbench(task: Task) -> dict[str, list]:
    """BIG-bench task.json rows (``jaxmerge.tasks.bigbench``; read with the json module, since
    ``target_scores`` keys vary per example, which an Arrow table cannot hold)."""
    from .bigbench import read_rows
    return {"train": read_rows(task.source.split(":", 1)[1], seed=task.seed)}


def _read_source(task: Task):
    kind = task.source.split(":", 1)[0]
    if kind == "hub":
        return _hub(task)
    if kind == "json":
        return _local(task)
    if kind == "bigbench":
        return _bigbench(task)
    if kind == "unknown":
        raise TaskError(f"task {task.name} cannot be loaded: {task.offline_note or 'no public source is recorded'}")
    raise TaskError(f"task {task.name}: source {task.source!r}; expected hub:/json:/bigbench:")


def _label_names(task: Task, table) -> Sequence[str] | None:
    if task.labels is not None and task.labels != "features":
        return tuple(task.labels)
    feats = getattr(table, "features", None)
    top = task.answer.split(".")[0]
    names = getattr(feats.get(top), "names", None) if feats is not None else None
    if task.labels == "features" and names is None:
        raise TaskError(f"task {task.name}: labels='features' but field {top!r} is not a ClassLabel")
    return names


# --- the fixed sampling protocol ---------------------------------------------------------------------
def _take(task: Task, table, labels, order, count: int, start: int = 0) -> tuple[list[dict], int]:
    """The first ``count`` rows (in ``order`` from ``start``) that make valid examples; returns them
    and the position after the last row consumed. Raises when too many rows are invalid."""
    out, bad, pos = [], [], start
    while len(out) < count and pos < len(order):
        i = int(order[pos])
        pos += 1
        try:
            out.append(make_example(task, table[i], labels, i))
        except KeyError as e:
            bad.append(str(e))
    if bad and len(bad) > MAX_BAD_FRACTION * (len(out) + len(bad)):
        raise TaskError(f"task {task.name}: {len(bad)} of {len(out) + len(bad)} rows could not be read "
                        f"(first: {bad[0]}); check the task's fields")
    if bad:
        warnings.warn(f"task {task.name}: skipped {len(bad)} unreadable rows (first: {bad[0]})")
    return out, pos


def load_examples(task: Task) -> TaskData:
    """Apply the protocol: seeded 80/20 from the training split, the test split (≤ ``max_test``)."""
    tables = _read_source(task)
    names = {s: s for s in tables}
    train_name, val_name, test_name = task.splits
    if train_name not in names:
        raise TaskError(f"task {task.name}: no split {train_name!r} in {sorted(names)}")
    rng = np.random.default_rng(task.seed)
    train_table = tables[train_name]
    labels = _label_names(task, train_table)
    order = rng.permutation(len(train_table))
    train, pos = _take(task, train_table, labels, order, task.n_train)
    if val_name is not None:
        if val_name not in names:
            raise TaskError(f"task {task.name}: no split {val_name!r} in {sorted(names)}")
        val_table = tables[val_name]
        validation, _ = _take(task, val_table, labels, np.random.default_rng(task.seed).permutation(len(val_table)),
                              task.n_validation)
    else:
        validation, pos = _take(task, train_table, labels, order, task.n_validation, pos)
    if len(train) < task.n_train or len(validation) < task.n_validation:
        raise TaskError(f"task {task.name}: only {len(train)} train / {len(validation)} validation examples "
                        f"available, the protocol needs {task.n_train} / {task.n_validation}")
    cap = task.max_test if task.max_test is not None else 1 << 62
    if test_name is not None and test_name in names:
        test_table = tables[test_name]
        n = len(test_table)
        test_order = np.sort(rng.permutation(n)[:cap]) if n > cap else np.arange(n)
        test, _ = _take(task, test_table, labels, test_order, len(test_order))
    elif test_name is not None:
        raise TaskError(f"task {task.name}: no split {test_name!r} in {sorted(names)}")
    else:  # carve a disjoint test set from the rest of the training rows
        test, _ = _take(task, train_table, labels, order, min(cap, len(order) - pos), pos)
    if not test:
        raise TaskError(f"task {task.name}: no test examples")
    return TaskData(task, train, validation, test)
