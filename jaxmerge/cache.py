"""jaxmerge's user cache: one root for everything built or fetched once (worlds, shared references,
registry downloads, converted GGUF bases), and a lock for building an entry exactly once.

    root = cache_root()                      # $JAXMERGE_CACHE, else ~/.cache/jaxmerge
    with build_lock(os.path.join(root, "x")):  # another process building "x" is waited for
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


def cache_root() -> str:
    """``$JAXMERGE_CACHE``, else ``~/.cache/jaxmerge`` (absolute; not created)."""
    return os.path.abspath(os.environ.get("JAXMERGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmerge"))


@contextlib.contextmanager
def build_lock(entry: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``<parent>/.<name>.lock`` for as long as the block runs (blocking)."""
    entry = os.path.abspath(os.fspath(entry))
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    with open(os.path.join(os.path.dirname(entry), f".{os.path.basename(entry)}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
