"""The adaptive-merging design space as data (paper §3, Table 1; REFERENCE §1).

Four axes — selection × granularity × activation × tuning — plus the initialisation of the raw
coefficients, k, whether the target-task LoRA sits in slot 0 and whether the recycled LoRAs are
redrawn at random. A ``Method`` is one point of that space with a name; ``jaxmerge.adaptive.methods``
names the paper's. Everything here is a small frozen dataclass, so a variant is
``dataclasses.replace(method, ...)`` and a method is hashable, printable and JSON-able
(``to_dict``).

Granularity and activation are plain strings, validated against
``jaxmerge.merge.coefficients.GRANULARITIES`` / ``ACTIVATIONS`` (the functions that give them meaning
live there: ``coefficient_shape``, ``activate``, ``factored_adapters``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ..merge.coefficients import ACTIVATIONS, GRANULARITIES, coefficient_shape

SELECTIONS = ("random", "evaluation", "cosine", "clamp", "abs", "quasi_fim")
TUNINGS = ("gradient", "gradient_free", "joint", "none", "lora")
INITS = ("zero", "one_over_k", "uniform")
APPLICATIONS = ("auto", "factored", "dense")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which k of the N recycled LoRAs enter the merge. ``k=None`` means all N."""
    kind: str = "random"
    k: int | None = 30

    def __post_init__(self):
        if self.kind not in SELECTIONS:
            raise ValueError(f"selection {self.kind!r}: expected one of {SELECTIONS}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"selection k={self.k}: must be ≥ 1 (or None for the whole pool)")


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How the trainable state is optimised.

    kind: ``gradient`` (coefficients by optax), ``joint`` (coefficients and the selected LoRAs' A/B
    together, plus an optional fresh LoRA), ``gradient_free`` (nevergrad over the coefficients),
    ``none`` (static merges, zero-shot), ``lora`` (train one fresh LoRA: the target-task LoRA).
    Gradient kinds: AdamW (weight decay 0), cosine schedule with ``warmup`` fraction, effective batch
    ``batch_size`` (accumulated over micro-batches of ``micro_batch``), validation loss every
    ``eval_every`` steps, the lowest-validation-loss state kept. ``lora_lr`` is the learning rate of
    A/B under joint tuning (default: ``lr``). ``l1`` adds l1·mean|w| to the loss; ``bounds`` clips raw
    coefficients (LoraHub's box). ``budget`` is the number of loss evaluations of gradient-free tuning.
    """
    kind: str = "gradient"
    lr: float = 5e-2
    steps: int = 100
    warmup: float = 0.1
    batch_size: int = 8
    micro_batch: int | None = None
    eval_every: int = 10
    lora_lr: float | None = None
    l1: float = 0.0
    bounds: tuple[float, float] | None = None
    budget: int = 100
    optimizer: str = "NGOpt"

    def __post_init__(self):
        if self.kind not in TUNINGS:
            raise ValueError(f"tuning {self.kind!r}: expected one of {TUNINGS}")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch={self.micro_batch} must divide batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True)
class Init:
    """Initial raw coefficients: ``zero``; ``one_over_k`` (1/k everywhere); ``uniform`` (U(0, 2/k),
    mean 1/k, drawn from the run's key)."""
    kind: str = "zero"

    def __post_init__(self):
        if self.kind not in INITS:
            raise ValueError(f"init {self.kind!r}: expected one of {INITS}")

    def __call__(self, shape: tuple[int, ...], key: jax.Array, dtype=jnp.float32) -> jax.Array:
        k = shape[0]
        if self.kind == "zero":
            return jnp.zeros(shape, dtype)
        if self.kind == "one_over_k":
            return jnp.full(shape, 1.0 / k, dtype)
        return jax.random.uniform(key, shape, dtype, 0.0, 2.0 / k)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A fresh LoRA: rank, alpha, targets, and A's init (``kaiming`` = PEFT's kaiming-uniform,
    U(±1/√in); ``normal`` = N(0, std)); B starts at 0, so a fresh LoRA changes nothing at step 0."""
    rank: int = 64
    alpha: float = 16.0
    modules: tuple[str, ...] | None = None  # None: every projection (target LoRA) / the pool's (π-tuning)
    a_init: str = "kaiming"
    std: float = 0.01

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class StaticMerge:
    """A non-adaptive merge of the selected LoRAs, read from the registry (``jaxmerge.merge.registry``):
    ``kind`` a registered method, ``params`` its frozen parameters (None: the method's recipe defaults,
    e.g. TIES density 0.8), ``weight`` every adapter's weight (None: the method's rule — 1/k for
    ``average`` and ``tsv``, 1 for ``ties``). ``StaticMerge.of("ties", weight=1.0, density=0.6)`` names
    parameters directly."""
    kind: str = "average"
    params: Any = None
    weight: float | None = None

    def __post_init__(self):
        from ..merge import registry
        method = registry.get(self.kind)
        if self.params is None:
            object.__setattr__(self, "params", registry.make_params(self.kind))
        elif not isinstance(self.params, method.params):
            raise registry.MergeMethodError(f"static merge {self.kind!r}: params of type "
                                            f"{type(self.params).__name__}, expected {method.params.__name__}")
        if self.weight is not None and not registry.takes_weights(self.kind):
            raise registry.MergeMethodError(f"static merge {self.kind!r} takes no weight (it weighs every LoRA 1/k)")

    @classmethod
    def of(cls, kind: str, weight: float | None = None, **params) -> "StaticMerge":
        from ..merge import registry
        return cls(kind, registry.make_params(kind, **params), weight)


@dataclasses.dataclass(frozen=True)
class Method:
    """A named point of the design space.

    ``application`` picks how merged adapters reach the forward in gradient training: ``factored``
    (x·Aᵀ·diag(c·s)·Bᵀ), ``dense`` (ΔW folded into W) or ``auto`` (cheaper by FLOP count for the
    shapes at hand; ``jaxmerge.adaptive.train.application_cost``).
    """
    name: str
    selection: Selection = Selection()
    granularity: str = "module"
    activation: str = "leaky_relu"
    tuning: Tuning = Tuning()
    init: Init = Init()
    with_target_lora: bool = False
    random_pool: bool = False
    fresh_lora: LoraSpec | None = None      # π-tuning's extra LoRA (appended as the last adapter)
    static: StaticMerge | None = None        # a registered static merge (average, ties, tsv, …)
    lora: LoraSpec | None = None             # target-lora: the LoRA to train
    application: str = "auto"

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r}: expected one of {GRANULARITIES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r}: expected one of {ACTIVATIONS}")
        if self.application not in APPLICATIONS:
            raise ValueError(f"application {self.application!r}: expected one of {APPLICATIONS}")
        if self.tuning.kind == "lora" and self.lora is None:
            raise ValueError(f"method {self.name!r}: tuning 'lora' needs a LoraSpec in `lora`")

    def coefficient_shape(self, num_adapters: int, num_layers: int, num_modules: int) -> tuple[int, ...]:
        """Shape of the raw trainable coefficients for a merge of ``num_adapters`` adapters."""
        return coefficient_shape(self.granularity, num_adapters, num_layers, num_modules)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
