"""What identifies a run: everything that determines its numbers, recorded in ``result.json``.

    ident = run_identity(method, seed=0, base=base, pool=pool, task_data=data, settings={...})
    problem = differences(stored, ident)   # [] when the stored run is this run

Parts: ``base`` (content of config.json and a fingerprint of every weight file: its safetensors header,
its size and 64 evenly spaced 4 KiB samples of its data — cheap at 16 GB, and it changes when the weights
are retrained), ``dtype``, ``pool`` (sha256 over the stacked factors, scales and layer masks: the arrays the
run merges), ``task`` (the task spec and a sha256 of its three splits; the spec's source location is not
compared, its data is), ``method`` (the design-space point,
budget included), ``seed``, ``settings`` (anything else that changes numbers: max_len, the target-LoRA
recipe, …) and the ``jaxmerge`` version. Paths and adapter names are recorded for the reader but not
compared: a cache moved elsewhere with the same content is the same run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np

SAMPLES, SAMPLE_BYTES = 64, 4096
INFORMATIVE = {"path", "names", "adapter_dir", "source"}  # where things were: recorded, never compared


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: str) -> str:
    """sha256 of a file's first 8 + header bytes, its size and ``SAMPLES`` spread-out data samples."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        head = f.read(8)
        h.update(head)
        if len(head) == 8:
            h.update(f.read(min(int.from_bytes(head, "little"), 100 << 20)))
        for i in range(SAMPLES):
            f.seek(i * max(size - SAMPLE_BYTES, 0) // max(SAMPLES - 1, 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def base_identity(base) -> dict:
    """The base checkpoint: config.json content and the weight files' fingerprints (path informative)."""
    path = os.fspath(base.path)
    with open(os.path.join(path, "config.json"), "rb") as f:
        config = hashlib.sha256(f.read()).hexdigest()
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    weights = _sha({os.path.basename(p): file_fingerprint(p) for p in files})
    leaf = next(iter(_leaves(base.params)))
    return {"path": os.path.abspath(path), "config_sha256": config, "weights_fingerprint": weights,
            "dtype": str(np.dtype(leaf.dtype))}


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def pool_identity(pool) -> dict | None:
    """sha256 over the pool's stacks (module order fixed), plus its adapter names (informative)."""
    if pool is None:
        return None
    import jax
    h = hashlib.sha256()
    for m in sorted(pool.modules):
        s = pool.modules[m]
        h.update(m.encode())
        h.update(json.dumps([int(r) for r in s.ranks]).encode())
        for arr in (s.a, s.b, s.scale, s.present):
            a = np.ascontiguousarray(jax.device_get(arr))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.reshape(-1).view(np.uint8))
    return {"names": list(pool.names), "sha256": h.hexdigest()}


def task_identity(task_data) -> dict:
    """The task spec and a sha256 of its train / validation / test examples."""
    return {"spec": task_data.task.to_json(),
            "splits_sha256": _sha([task_data.train, task_data.validation, task_data.test])}


def run_identity(method: Mapping[str, Any], *, seed: int, base, pool, task_data,
                 settings: Mapping[str, Any] | None = None) -> dict:
    from .. import __version__
    return {"method": dict(method), "seed": int(seed), "base": base_identity(base), "pool": pool_identity(pool),
            "task": task_identity(task_data), "settings": dict(settings or {}), "jaxmerge": __version__}


def reference_key(ident: Mapping[str, Any]) -> str:
    """A short stable key of an identity's compared parts (for caches of shared references)."""
    return _sha(_compared(ident))[:16]


def _compared(x):
    if isinstance(x, Mapping):
        return {k: _compared(v) for k, v in x.items() if k not in INFORMATIVE}
    return x


def differences(stored: Mapping[str, Any] | None, current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Human-readable ``"what: stored → current"`` lines for every compared field that differs."""
    if stored is None:
        return [f"{prefix or 'identity'}: not recorded (a run of an older jaxmerge)"]
    out = []
    for k in sorted(set(stored) | set(current)):
        if k in INFORMATIVE:
            continue
        a, b = stored.get(k), current.get(k)
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, name)
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{name}: {_short(a)} → {_short(b)}")
    return out


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:28] + "…" + s[-28:]
