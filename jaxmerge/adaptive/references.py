"""The references of a comparison — zero-shot and the target-task LoRA — computed once per (base, task,
seed, recipe) in the user cache and shared by every method, every ``--out`` and every sweep.

    r = reference("target-lora", base, task_data, seed=0)                  # computed, or read back
    r = reference("target-lora", base, task_data, seed=0, compute=False)   # None unless cached

An entry lives in ``<cache>/references/<task>-<kind>-seed<S>-<key>`` where the key hashes the run identity
(``jaxmerge.adaptive.identity``: base content, dtype, task data, the reference's method point with its
budget, seed, settings, jaxmerge version). A process computing an entry holds its lock, so two methods
started together train the target LoRA once; a killed computation resumes from its checkpoints.
"""

from __future__ import annotations

import os
import re

from ..atomic import read_json
from ..cache import build_lock, cache_root
from .identity import reference_key, run_identity
from .methods import method

KINDS = ("zero-shot", "target-lora")


def reference_dir(kind: str, base, task_data, *, seed: int, steps: int | None = None, max_len: int | None = None,
                  root: str | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"reference {kind!r}: expected one of {KINDS}")
    ident = run_identity(method(kind, steps=steps).to_dict(), seed=seed, base=base, pool=None, task_data=task_data,
                         settings={"max_len": max_len})
    task = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_data.task.name)
    return os.path.join(root or os.path.join(cache_root(), "references"), f"{task}-{kind}-seed{seed}-{reference_key(ident)}")


def reference(kind: str, base, task_data, *, seed: int, steps: int | None = None, max_len: int | None = None,
              root: str | None = None, compute: bool = True, progress: bool = True) -> dict | None:
    """The reference's ``result.json`` dict (with ``out_dir``); None when not cached and ``compute=False``."""
    d = reference_dir(kind, base, task_data, seed=seed, steps=steps, max_len=max_len, root=root)
    done = read_json(os.path.join(d, "result.json"))
    if done is not None:
        return {**done, "out_dir": d, "reused": True}
    if compute:
        from .run import run_method
        with build_lock(d):
            done = run_method(kind, base, None, task_data, seed=seed, out_dir=d, steps=steps, max_len=max_len,
                              progress=progress)
    return None if done is None else {**done, "out_dir": d}
