"""Atomic results: the one helper every writer of a result file or folder goes through.

A file is written to a temporary name in the same folder, flushed, fsynced and ``os.replace``d onto
its final name; a folder is built under a stable partial name beside the final one and renamed into
place when complete. An interrupted writer (SIGKILL included) therefore never leaves a half result
under the final name, and a rerun finds the partial folder and may complete it.

    with atomic_file("out/result.json") as f: f.write(b"...")
    write_json("out/result.json", obj); write_jsonl("out/rows.jsonl", rows); write_text(path, s)
    tmp = partial_dir("out/merged")   # out/.partial-merged, created; resumable across runs
    ...write into tmp...
    publish(tmp, "out/merged")        # rename into place (replacing nothing that exists)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """A file object whose content appears under ``path`` only when the block ends without error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_default(x):
    import numpy as np
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "__array__"):  # jax arrays
        return np.asarray(x).tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (NumPy / JAX scalars and arrays converted), via a JSON round trip."""
    return json.loads(json.dumps(obj, default=json_default))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> str:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent, default=json_default)
    return os.fspath(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> str:
    with atomic_file(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=json_default) + "\n")
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str) -> str:
    with atomic_file(path, "w") as f:
        f.write(text)
    return os.fspath(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON at ``path``, or ``default`` when there is no such file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def partial_dir(final: str | os.PathLike) -> str:
    """The (created) folder in which ``final`` is built: ``.partial-<name>`` beside it, kept across runs."""
    final = os.path.abspath(os.fspath(final))
    tmp = os.path.join(os.path.dirname(final), f".partial-{os.path.basename(final)}")
    os.makedirs(tmp, exist_ok=True)
    return tmp


def publish(tmp: str | os.PathLike, final: str | os.PathLike, replace: bool = False) -> str:
    """Rename the completed folder ``tmp`` to ``final``. An existing ``final`` is an error unless
    ``replace`` (then it is moved aside first and removed after the rename)."""
    tmp, final = os.fspath(tmp), os.fspath(final)
    old = None
    if os.path.lexists(final):
        if not replace:
            raise FileExistsError(f"{final} exists; not replacing it")
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
