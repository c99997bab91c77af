"""The one registry of static merges: name → ``MergeMethod`` (function + frozen dataclass of parameters).

Every consumer reads it — ``jaxmerge merge`` builds its ``--method`` choices and flags from it,
``merge_pool`` / the streaming export dispatch through it, ``jaxmerge.adaptive.space.StaticMerge``
validates against it — so there is no list of method names anywhere else and no fallthrough: an
unknown name or a parameter the method does not take is a ``MergeMethodError`` naming the valid ones.

A method is one module under ``jaxmerge/merge/methods/`` that calls ``register(MergeMethod(...))``
(discovered on first use), with its oracle test. Its ``merge`` function has one signature::

    merge(stack, weights [N, L] float32, params, *, key, layers [L] int32, noise) -> ΔW [L, out, in]

``key`` is folded by module already (methods that draw masks fold in layer and adapter); ``layers``
are the layers' indices in the whole model (a streamed window passes its own); ``noise`` is the
uniform source of random trims (``jaxmerge.merge.sparse.uniform_noise``; tests inject another).
Methods whose merge is exactly low-rank in the factors also give ``factored(stack, weights, params)``
(a ``Factored``), which ``--format peft`` exports without an SVD.

Parameters are a frozen dataclass per method; each field declared with ``param(default, help, ...)``
carries its CLI help and its check, and a field without a default must be given (no recipe default).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import numpy as np

from ..errors import UserError

# How a method's per-adapter weights default: "uniform" = 1/N and none accepted (simple average),
# "one" = 1 each (task arithmetic, TIES), "one_over_n" = 1/N unless given (TSV's recipe).
WEIGHT_RULES = ("uniform", "one", "one_over_n")


class MergeMethodError(UserError, ValueError):
    """An unknown merge method or parameter, or a parameter value out of range."""


@dataclasses.dataclass(frozen=True)
class MergeMethod:
    name: str
    merge: Callable
    params: type
    weights: str
    summary: str
    oracle: str
    factored: Callable | None = None
    random: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHT_RULES:
            raise ValueError(f"{self.name}: weights rule {self.weights!r}: expected one of {WEIGHT_RULES}")
        if not (dataclasses.is_dataclass(self.params) and self.params.__dataclass_params__.frozen):
            raise TypeError(f"{self.name}: params must be a frozen dataclass")


_METHODS: dict[str, MergeMethod] = {}
_loaded = False


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def _load() -> dict[str, MergeMethod]:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import methods
        for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda i: i.name):
            importlib.import_module(f"{methods.__name__}.{info.name}")
    return _METHODS


def names() -> tuple[str, ...]:
    """Every registered method, alphabetically."""
    return tuple(sorted(_load()))


def get(name: str) -> MergeMethod:
    methods = _load()
    try:
        return methods[name]
    except KeyError:
        raise MergeMethodError(f"unknown merge method {name!r}: expected one of {', '.join(names())}") from None


# ---------------------------------------------------------------------------------- parameters
def param(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None,
          low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    """A parameter field: default (omit for a required one), CLI help, and its check (choices or a
    closed/open interval)."""
    meta = dict(help=help, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open)
    return dataclasses.field(default=default, metadata=meta)


def check(params) -> None:
    """Validate every field of a params dataclass against its ``param`` metadata (call in ``__post_init__``)."""
    for f in dataclasses.fields(params):
        v, m = getattr(params, f.name), f.metadata
        where = f"merge parameter {f.name}"
        if m.get("choices") is not None and v not in m["choices"]:
            raise MergeMethodError(f"{where}={v!r}: expected one of {', '.join(map(str, m['choices']))}")
        lo, hi = m.get("low"), m.get("high")
        if lo is not None and (v < lo or (m["low_open"] and v == lo)):
            raise MergeMethodError(f"{where}={v}: must be {'>' if m['low_open'] else '≥'} {lo}")
        if hi is not None and (v > hi or (m["high_open"] and v == hi)):
            raise MergeMethodError(f"{where}={v}: must be {'<' if m['high_open'] else '≤'} {hi}")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a method that takes none."""


def param_names(name: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(get(name).params))


def make_params(name: str, **given):
    """The method's parameters: its recipe defaults with ``given`` (None values ignored) applied.
    A parameter the method does not take, or a required one missing, is a ``MergeMethodError``."""
    method = get(name)
    given = {k: v for k, v in given.items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(method.params)}
    stray = sorted(set(given) - set(fields))
    if stray:
        takes = ", ".join(fields) or "no parameters"
        raise MergeMethodError(f"merge method {name!r} does not take {', '.join(stray)} (it takes {takes})")
    missing = [n for n, f in fields.items() if n not in given and f.default is dataclasses.MISSING]
    if missing:
        raise MergeMethodError(f"merge method {name!r} needs {', '.join(missing)} (it has no recipe default)")
    return method.params(**given)


def all_params() -> dict[str, dataclasses.Field]:
    """Every parameter of every method by name (one CLI flag each); a name shared by two methods must
    mean the same (type, choices)."""
    out: dict[str, dataclasses.Field] = {}
    for m in _load().values():
        for f in dataclasses.fields(m.params):
            prev = out.setdefault(f.name, f)
            if (prev.type, prev.metadata.get("choices")) != (f.type, f.metadata.get("choices")):
                raise TypeError(f"merge parameter {f.name!r} is declared differently by two methods")
    return out


def takes_weights(name: str) -> bool:
    return get(name).weights != "uniform"


def resolve_weights(name: str, n: int, num_layers: int, weights=None) -> np.ndarray:
    """Per-adapter weights ``[N, L]`` float32 for method ``name``: ``weights`` (``[N]`` or ``[N, L]``)
    or the method's default rule."""
    rule = get(name).weights
    if weights is None:
        w = np.full((n,), 1.0 if rule == "one" else 1.0 / max(n, 1), np.float32)
    elif rule == "uniform":
        raise MergeMethodError(f"merge method {name!r} takes no weights (it weighs every adapter 1/N; use 'linear')")
    else:
        w = np.asarray(weights, np.float32)
    if w.ndim == 1:
        w = np.broadcast_to(w[:, None], (w.shape[0], num_layers))
    if w.shape != (n, num_layers):
        raise MergeMethodError(f"{len(w)} weights for {n} adapters (expected [N] or [N, L] = [{n}, {num_layers}])")
    return np.ascontiguousarray(w, np.float32)
