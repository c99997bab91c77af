"""Progress bars with a rate, for every long loop (one helper; ``enabled=False`` prints nothing).

The first step of a jitted loop includes compilation, which can take longer than many later steps;
a rate or ETA that counts it is wrong by orders of magnitude (a "3 h" first tick). ``bar`` therefore
shows no ETA until the first step is done and measures rate and ETA from then on.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


class _Bar(tqdm):
    _warm: tuple[float, float] | None = None  # (time, n) when the first (compiling) update arrived

    def update(self, n=1):
        out = super().update(n)
        if self._warm is None and n and not self.disable:
            self._warm = (time.time(), self.n)
        return out

    @property
    def format_dict(self):
        d = super().format_dict
        if self._warm is None or self.n <= self._warm[1]:
            d["bar_format"] = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, first step (compiling)]" \
                if d.get("total") else "{desc}: {n_fmt} [{elapsed}, first step (compiling)]"
        else:
            t, n0 = self._warm
            d["rate"] = (self.n - n0) / max(time.time() - t, 1e-9)
        return d


def bar(total: int | None = None, desc: str = "", unit: str = "step", enabled: bool = True,
        initial: int = 0, leave: bool = False) -> tqdm:
    """A progress bar on stderr; rate and ETA exclude the first (compiling) step."""
    return _Bar(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=leave,
                dynamic_ncols=True, file=sys.stderr)


def track(it: Iterable[T], total: int | None = None, desc: str = "", unit: str = "step",
          enabled: bool = True) -> Iterator[T]:
    """Iterate ``it`` with a ``bar``."""
    if total is None and hasattr(it, "__len__"):
        total = len(it)  # type: ignore[arg-type]
    with bar(total, desc, unit, enabled) as b:
        for x in it:
            yield x
            b.update(1)


def quiet_libraries() -> None:
    """--quiet: the progress bars and info logs of huggingface_hub, datasets and transformers off."""
    import logging
    import os
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    for name in ("datasets", "transformers", "huggingface_hub", "absl", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
