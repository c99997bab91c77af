"""Counting XLA compilations (JAX's monitoring events), so that "compiled once per shape class" is a
measured fact: sweeps report it per run, tests assert it.

    with count_compiles() as c:
        ...
    c.total, c.by_function      # backend compilations inside the block: {jitted function name: count}

One process-wide listener is registered on first use (``jax.monitoring`` has no public way to remove
one); counters are read as differences, so nested and consecutive blocks both work.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from typing import Iterator

_COUNTS: collections.Counter = collections.Counter()
_SECONDS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
_INSTALLED = False


def _listener(event: str, duration: float, **kwargs) -> None:
    from jax._src import dispatch
    if event == dispatch.BACKEND_COMPILE_EVENT:
        name = kwargs.get("fun_name", "?")
        with _LOCK:
            _COUNTS[name] += 1
            _SECONDS[name] += duration


def install() -> None:
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        import jax.monitoring
        jax.monitoring.register_event_duration_secs_listener(_listener)
        _INSTALLED = True


@dataclasses.dataclass
class Compiles:
    by_function: dict = dataclasses.field(default_factory=dict)   # name → compilations in the block
    seconds: float = 0.0                                           # their backend compile time

    @property
    def total(self) -> int:
        return sum(self.by_function.values())


@contextlib.contextmanager
def count_compiles() -> Iterator[Compiles]:
    """The XLA backend compilations that happen while the block runs (filled in when it ends)."""
    install()
    with _LOCK:
        before, before_s = collections.Counter(_COUNTS), sum(_SECONDS.values())
    out = Compiles()
    try:
        yield out
    finally:
        with _LOCK:
            diff = _COUNTS - before
            out.by_function = dict(diff)
            out.seconds = round(sum(_SECONDS.values()) - before_s, 3)


# --- the process's memory mappings ----------------------------------------------------------------
# XLA:CPU maps each compiled kernel's code and data separately: one compiled training step of a small
# model holds ~200 mappings until its executable is dropped. Linux refuses mmap beyond
# vm.max_map_count (65530 by default), and LLVM then fails ("LLVM compilation error: Cannot allocate
# memory") and the process dies. A process that compiles many distinct programs (a sweep over k and
# pools, a test worker) frees them before it gets there (BUILD_NOTES, "Session 14").
def mapping_count() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit), or None where /proc does not tell."""
    try:
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return used, int(f.read())
    except (OSError, ValueError):
        return None


def release_compiled(fraction: float = 0.5) -> bool:
    """Drop JAX's compiled programs (``jax.clear_caches``) when this process holds more than ``fraction``
    of the allowed memory mappings; later calls compile again. True when it released them."""
    counts = mapping_count()
    if counts is None or counts[0] < fraction * counts[1]:
        return False
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
    return True
