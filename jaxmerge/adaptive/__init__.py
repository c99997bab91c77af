"""Adaptive merging: the paper's design space as data, its methods as named points, and the engine
that runs them (selection → tuning → evaluation), resumable.

    from jaxmerge.adaptive import METHODS, method, run_method
    result = run_method("ours", base, pool, task_data, k=30, seed=0, out_dir="runs/ours")

Modules: ``space`` (axes as frozen dataclasses), ``methods`` (the named points), ``train`` (optax
training, factored vs dense application), ``lorahub`` (nevergrad), ``target_lora`` (fresh LoRAs, PEFT
files), ``checkpoint`` (orbax, atomic files), ``run`` (``run_method``); ``selection`` and
``multi_eval`` (LoRA selection, batched multi-LoRA evaluation).
"""

from .methods import METHODS, method
from .space import (ACTIVATIONS, GRANULARITIES, INITS, SELECTIONS, TUNINGS, Init, LoraSpec, Method, Selection,
                    StaticMerge, Tuning)


def __getattr__(name):  # the engine pulls in tasks/merge/pool; load it on first use
    if name == "run_method":
        from .run import run_method
        return run_method
    if name in ("fit", "FitResult"):
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module 'jaxmerge.adaptive' has no attribute {name!r}")


__all__ = ["ACTIVATIONS", "GRANULARITIES", "INITS", "METHODS", "SELECTIONS", "TUNINGS", "FitResult", "Init",
           "LoraSpec", "Method", "Selection", "StaticMerge", "Tuning", "fit", "method", "run_method"]
