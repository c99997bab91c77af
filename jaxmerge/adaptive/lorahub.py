"""Gradient-free coefficient search (LoraHub; paper App. C; REFERENCE §1).

nevergrad's ``NGOpt`` over the raw coefficients, through its ask/tell interface: the parametrization
is an ``ng.p.Array`` in the box ``tuning.bounds`` (LoraHub: ±1.5) starting at ``init`` (LoraHub: 0)
whose ``random_state`` is seeded, so a run repeats exactly. ``budget`` loss evaluations; the
objective (in ``run.py``: mean answer loss on all 100 target examples + 0.05·mean|w|) is any
``w -> float``. The returned point is the best *evaluated* one, and the initial point is always
evaluated first, so the result is never worse than the start.

Resumable: every (candidate, loss) is appended to a JSON history written atomically; a restarted
search replays it — the seeded optimizer asks the same candidates again, is told the recorded losses
without evaluating the model, and continues from where it stopped.

Some of NGOpt's choices (Cobyla, …) run scipy in a background thread fed by ask/tell; ``search``
stops those threads when it returns (a thread left waiting for a tell blocks interpreter exit).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np

from .checkpoint import load_json, save_json
from .space import Tuning


@dataclasses.dataclass(frozen=True)
class SearchResult:
    best: np.ndarray        # raw coefficients with the lowest evaluated loss
    best_loss: float
    init_loss: float
    losses: list            # loss of every evaluation, in order (the first is the initial point)
    resumed_from: int       # evaluations replayed from the history file


def search(objective: Callable[[np.ndarray], float], init: np.ndarray, tuning: Tuning, *, seed: int,
           history_path: str | None = None, progress: bool = True, desc: str = "lorahub") -> SearchResult:
    """Minimise ``objective`` with ``tuning.optimizer`` (NGOpt) for ``tuning.budget`` evaluations."""
    import nevergrad as ng

    init = np.asarray(init, np.float64)
    lower, upper = tuning.bounds if tuning.bounds is not None else (None, None)
    param = ng.p.Array(init=init, lower=lower, upper=upper)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.registry[tuning.optimizer](parametrization=param, budget=tuning.budget)
    opt.suggest(init)  # the first ask is the initial point
    recorded = (load_json(history_path) or {}).get("evals", []) if history_path else []
    evals: list = []
    bar = None
    if progress:
        from ..progress import bar as make_bar
        bar = make_bar(tuning.budget, desc, "eval")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's COBYLA parameter notices
            for i in range(tuning.budget):
                cand = opt.ask()
                w = np.asarray(cand.value, np.float64)
                if i < len(recorded):
                    if not np.allclose(w, recorded[i]["w"], rtol=0, atol=1e-9):
                        raise RuntimeError(f"{history_path}: replayed candidate {i} differs from the recorded "
                                           "one (different seed, data or nevergrad version?); remove the file")
                    loss = float(recorded[i]["loss"])
                else:
                    loss = float(objective(w))
                    if not np.isfinite(loss):
                        loss = float(np.finfo(np.float32).max)
                opt.tell(cand, loss)
                evals.append({"w": w.tolist(), "loss": loss})
                if history_path and i >= len(recorded):
                    save_json(history_path, {"seed": seed, "budget": tuning.budget, "evals": evals})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{min(e['loss'] for e in evals):.4f}")
    finally:
        if bar is not None:
            bar.close()
        _stop_threads(opt)
    losses = [e["loss"] for e in evals]
    j = int(np.argmin(losses))
    return SearchResult(best=np.asarray(evals[j]["w"], np.float32), best_loss=losses[j], init_loss=losses[0],
                        losses=losses, resumed_from=min(len(recorded), tuning.budget))


def _stop_threads(opt, seen=None) -> None:
    """Stop the background threads of recast (scipy-backed) optimizers nested anywhere in ``opt``."""
    seen = seen if seen is not None else set()
    if id(opt) in seen:
        return
    seen.add(id(opt))
    thread = getattr(opt, "_messaging_thread", None)
    if thread is not None:
        thread.stop()
    for attr in ("optim", "_optim", "optims", "_optims"):
        sub = getattr(opt, attr, None)
        if sub is None:
            continue
        for o in (sub if isinstance(sub, (list, tuple)) else [sub]):
            if hasattr(o, "ask"):
                _stop_threads(o, seen)
