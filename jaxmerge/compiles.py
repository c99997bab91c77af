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
