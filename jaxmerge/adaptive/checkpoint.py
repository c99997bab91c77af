"""Resumable training state with orbax-checkpoint, and atomic result files.

A training checkpoint is one pytree of arrays::

    {"trainable": ..., "opt": optax state, "step": int32 [], "key": uint32 key data,
     "best": best-so-far trainable, "best_val": float32 [], "history": float32 [E, 2] (step, val loss;
     NaN rows not reached yet)}

saved synchronously by an ``ocp.CheckpointManager`` under ``<out_dir>/ckpt/<step>``. orbax writes
each step into a temporary folder and renames it when complete, so a process killed (SIGKILL) in the
middle of a save leaves only a temporary folder that the next run ignores (and removes) and the
latest *complete* step is restored. Restoring needs a template (``like``) of the same structure:
the freshly initialised state, so shapes and dtypes are checked on the way in.

Coefficients and results are written atomically (``jaxmerge.atomic``): ``save_npz`` / ``save_json``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from ..atomic import json_default, atomic_file, read_json


def manager(directory: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous manager keeping the ``max_to_keep`` latest steps (best-so-far lives inside)."""
    directory = os.path.abspath(os.fspath(directory))
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
                                        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, options=opts)


def save(mngr: ocp.CheckpointManager, step: int, state: Mapping[str, Any]) -> None:
    """Write ``state`` as step ``step`` (overwrites nothing: a step already there is kept)."""
    if step in mngr.all_steps():
        return
    mngr.save(step, args=ocp.args.StandardSave(dict(state)), force=True)
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, like: Mapping[str, Any]) -> dict | None:
    """The latest complete state, shaped like ``like``; None when there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(like))
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


# --- result files (through jaxmerge.atomic) ----------------------------------------------------------
def save_npz(path: str, arrays: Mapping[str, Any]) -> str:
    """Arrays to ``.npz`` atomically (values pulled to host; bf16 stored as float32)."""
    host = {}
    for k, v in arrays.items():
        a = np.asarray(jax.device_get(v))
        host[k] = a.astype(np.float32) if a.dtype.name == "bfloat16" else a
    with atomic_file(path) as f:
        np.savez(f, **host)
    return os.fspath(path)


def save_json(path: str, obj: Any) -> str:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
    return os.fspath(path)


load_json = read_json


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict of arrays → ``{"a/b/c": array}`` (for ``.npz`` files)."""
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix.rstrip("/")] = tree
    return out
