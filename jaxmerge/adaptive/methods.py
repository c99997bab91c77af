"""The paper's methods as named points of the design space (Table 1, Appendix C–D; REFERENCE §1).

    name          selection        tuning                        granularity  activation  init  lr / steps
    ours          evaluation, 30   gradient                      module       leaky ReLU  0     5e-2, 100
    adamerging    random, 30       gradient                      module       linear      1/k   5e-2, 100
    pi-tuning     quasi-FIM, 20    joint (+ fresh LoRA)          module       softmax     0     1e-4, 100
    lorahub       random, 30       gradient-free NGOpt, 100      model        linear      0     box ±1.5, L1 0.05
    lorahub-grad  random, 30       gradient                      model        linear      0     5e-2, 100, L1 0.05
    average       random, 30       none (1/k each)
    ties          random, 30       none (p = 0.2 → density 0.8, weight 1)
    tsv           random, 30       none (top-8 triplets, weight 1/k)
    target-lora   —                train a rank-64 α-16 LoRA on all seven projections, 3e-4, 400 steps
    zero-shot     —                the base model

π-tuning's paper runs two learning rates (1e-4 and 5e-5) and averages; the named point is 1e-4 and
``method("pi-tuning", tuning=...)`` gives the other. Its fresh LoRA has A ~ N(0, 0.01), B = 0, and
the rank/alpha of the target LoRA recipe (64/16), on the pool's module types. lorahub-grad's
learning rate is not given by the paper; it reuses 5e-2 from the other gradient methods.

Every other static merge of the registry (``jaxmerge.merge.registry``: ``dare_ties``, ``della``, …) is a
point too, by its registry name: random 30, its recipe parameters and weights (``method_names()``).

``method(name, **overrides)`` returns the named point with fields replaced; ``k`` and
``selection_kind`` are shorthands for the selection's fields, and overrides naming a
``Tuning`` field (``lr``, ``steps``, …) replace inside the tuning.
"""

from __future__ import annotations

import dataclasses

from .space import Init, LoraSpec, Method, Selection, StaticMerge, Tuning

METHODS: dict[str, Method] = {
    "ours": Method("ours", Selection("evaluation", 30), "module", "leaky_relu",
                   Tuning("gradient", lr=5e-2, steps=100), Init("zero")),
    "adamerging": Method("adamerging", Selection("random", 30), "module", "linear",
                         Tuning("gradient", lr=5e-2, steps=100), Init("one_over_k")),
    "pi-tuning": Method("pi-tuning", Selection("quasi_fim", 20), "module", "softmax",
                        Tuning("joint", lr=1e-4, steps=100), Init("zero"),
                        fresh_lora=LoraSpec(rank=64, alpha=16.0, a_init="normal", std=0.01)),
    "lorahub": Method("lorahub", Selection("random", 30), "model", "linear",
                      Tuning("gradient_free", l1=0.05, bounds=(-1.5, 1.5), budget=100, optimizer="NGOpt"),
                      Init("zero")),
    "lorahub-grad": Method("lorahub-grad", Selection("random", 30), "model", "linear",
                           Tuning("gradient", lr=5e-2, steps=100, l1=0.05, bounds=(-1.5, 1.5)), Init("zero")),
    "average": Method("average", Selection("random", 30), "model", "linear", Tuning("none"), Init("one_over_k"),
                      static=StaticMerge("average")),
    "ties": Method("ties", Selection("random", 30), "model", "linear", Tuning("none"), Init("one_over_k"),
                   static=StaticMerge.of("ties", weight=1.0, density=0.8, sign="total")),
    "tsv": Method("tsv", Selection("random", 30), "model", "linear", Tuning("none"), Init("one_over_k"),
                  static=StaticMerge.of("tsv", weight=None, tsv_k=8)),
    "target-lora": Method("target-lora", Selection("random", None), "model", "linear",
                          Tuning("lora", lr=3e-4, steps=400), Init("zero"),
                          lora=LoraSpec(rank=64, alpha=16.0, modules=None, a_init="kaiming")),
    "zero-shot": Method("zero-shot", Selection("random", None), "model", "linear", Tuning("none"), Init("zero")),
}

_TUNING_FIELDS = {f.name for f in dataclasses.fields(Tuning)}


def _static_point(name: str, params: dict) -> Method:
    """A registered static merge as a method: random 30 LoRAs, its parameters (recipe defaults unless
    given) and its weight rule."""
    return Method(name, Selection("random", 30), "model", "linear", Tuning("none"), Init("one_over_k"),
                  static=StaticMerge.of(name, **params))


def method_names() -> tuple[str, ...]:
    """The paper's named methods, then every other registered static merge."""
    from ..merge import registry
    return tuple(METHODS) + tuple(n for n in registry.names() if n not in METHODS)


def method(name: str | Method, **overrides) -> Method:
    """The named method (or a given ``Method``) with ``overrides`` applied (``dataclasses.replace``).

    Shorthands: ``k=``, ``selection_kind=`` (selection fields); any ``Tuning`` field (``lr``,
    ``steps``, ``budget``, …); a static merge's parameters (``density=``, ``tsv_k=``, …, checked by the
    registry); ``None`` values are ignored so CLI defaults can pass through.
    """
    from ..merge import registry
    overrides = {k: v for k, v in overrides.items() if v is not None}
    static_name = name.static.kind if isinstance(name, Method) and name.static else name
    merge_params = {}
    if static_name in registry.names():
        merge_params = {k: overrides.pop(k) for k in registry.all_params() if k in overrides}
    if isinstance(name, Method):
        m = name
    elif name in METHODS:
        m = METHODS[name]
    elif name in method_names():
        m = _static_point(name, merge_params)
        merge_params = {}
    else:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(method_names())}")
    if merge_params:
        given = {**dataclasses.asdict(m.static.params), **merge_params}
        overrides["static"] = StaticMerge.of(m.static.kind, m.static.weight, **given)
    sel = {}
    if "k" in overrides:
        sel["k"] = overrides.pop("k")
    if "selection_kind" in overrides:
        sel["kind"] = overrides.pop("selection_kind")
    if isinstance(overrides.get("selection"), str):
        sel["kind"] = overrides.pop("selection")
    if isinstance(overrides.get("init"), str):
        overrides["init"] = Init(overrides["init"])
    tun = {k: overrides.pop(k) for k in list(overrides) if k in _TUNING_FIELDS and k != "kind"}
    if sel:
        overrides["selection"] = dataclasses.replace(overrides.get("selection", m.selection), **sel)
    if tun:
        overrides["tuning"] = dataclasses.replace(overrides.get("tuning", m.tuning), **tun)
    return dataclasses.replace(m, **overrides) if overrides else m


def requested_k(name: str | Method, k: int | None) -> int | None:
    """``k``, or the method's own when None; None means the whole pool."""
    return k if k is not None else method(name).selection.k


def effective_k(name: str | Method, k: int | None, pool_size: int) -> int | None:
    """How many LoRAs a run of ``name`` merges: ``requested_k`` at most ``pool_size`` (None: all)."""
    k = requested_k(name, k)
    return None if k is None else min(k, pool_size)
