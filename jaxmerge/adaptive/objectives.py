"""What a training run minimises, as hashable data: the static half of every jitted step and evaluation.

An objective is a frozen dataclass holding only static configuration (the model config, granularity,
activation, the factored/dense choice per module, a LoRA's scale); calling it is the loss
``(trainable, frozen, batch) -> (Σ answer-token NLL, answer-token count)``. Everything that varies from
run to run — the pool's factors and row → adapter map, the coefficients, the learning rate — is data in
``trainable`` / ``frozen``, so ``jaxmerge.adaptive.train``'s module-level jitted step compiles once per
(objective, shapes) and every run of a sweep with the same shapes reuses it. Objectives compare by value:
two runs that build equal objectives share compiled programs.

    trainable / frozen per objective (N adapters, L layers, R bucketed rank rows):
    Coefficients   {"w": coefficient_shape}            {"params", "stacks": {module: ModuleStack}}
    Joint          {"w", "a": {m: [L,R,in]}, "b": {m: [L,out,R]}}
                                                        {"params", "scale": {m: [N]}, "rows": {m: [L,R]},
                                                         "owner": {m: [R]}}
    Lora           {"a": {m: [L,r,in]}, "b": {m: [L,out,r]}}   {"params"}
    Adapters       the forward's adapters themselves   the base params (a plain evaluation)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ..config import ModelConfig
from ..lora import Dense, Factored
from ..merge.coefficients import factored_adapters
from ..stacks import ModuleStack
from ..tasks.encode import answer_logprobs


def answer_loss_sums(params, config: ModelConfig, batch, adapters=None, remat: bool = False):
    """(Σ cross-entropy over answer tokens, number of answer tokens) of a batch — the sums behind
    ``jaxmerge.tasks.answer_loss``, so that micro-batches add up to the effective batch's token mean.
    ``loss_mask`` follows ``jaxmerge.tasks.encode``'s next-token convention; the LM head runs at the
    answer positions only (``batch["answer_index"]``), never over ``[batch, tokens, vocab]``."""
    lp, mask = answer_logprobs(params, config, batch, adapters, remat)
    return -jnp.sum(lp * mask), jnp.sum(mask)


def apply_choice(adapters: dict, choice: dict) -> dict:
    """Factored adapters → the chosen form per module (``Dense`` materialises Σ m·B·A)."""
    return {m: Dense(f.dense()) if choice.get(m) == "dense" else f for m, f in adapters.items()}


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """Learned merge coefficients over frozen pool stacks; ``application``: ((module, "factored" |
    "dense"), …) — how each module's merged delta reaches the forward while training."""
    config: ModelConfig
    granularity: str
    activation: str
    application: tuple[tuple[str, str], ...] = ()
    remat: bool = False  # rematerialise each layer in the backward pass (memory plans at 8B)

    def adapters(self, trainable, frozen) -> dict:
        f = factored_adapters(frozen["stacks"], trainable["w"], self.granularity, self.activation)
        return apply_choice(f, dict(self.application))

    def __call__(self, trainable, frozen, batch):
        return answer_loss_sums(frozen["params"], self.config, batch, self.adapters(trainable, frozen), self.remat)


@dataclasses.dataclass(frozen=True)
class Joint:
    """Coefficients and the merged LoRAs' own factors trained together (π-tuning); absent (adapter,
    layer) rows are held at zero by ``frozen["rows"]``."""
    config: ModelConfig
    granularity: str
    activation: str

    def adapters(self, trainable, frozen) -> dict:
        stacks = {}
        for m, owner in frozen["owner"].items():
            scale = frozen["scale"][m]
            L = trainable["a"][m].shape[0]
            stacks[m] = ModuleStack(trainable["a"][m] * frozen["rows"][m][:, :, None], trainable["b"][m], scale,
                                    jnp.ones((scale.shape[0], L), bool), owner)
        return factored_adapters(stacks, trainable["w"], self.granularity, self.activation)

    def __call__(self, trainable, frozen, batch):
        return answer_loss_sums(frozen["params"], self.config, batch, self.adapters(trainable, frozen))


@dataclasses.dataclass(frozen=True)
class Lora:
    """A fresh LoRA (the target-task LoRA): s·B·A on the modules it has."""
    config: ModelConfig
    scale: float

    def adapters(self, trainable, frozen=None) -> dict[str, Factored]:
        return {m: Factored(a, trainable["b"][m], jnp.full(a.shape[:2], self.scale, a.dtype))
                for m, a in trainable["a"].items()}

    def __call__(self, trainable, frozen, batch):
        return answer_loss_sums(frozen["params"], self.config, batch, self.adapters(trainable))


@dataclasses.dataclass(frozen=True)
class Adapters:
    """A plain evaluation: ``trainable`` are the forward's adapters (or None: the base), ``frozen`` the
    base params."""
    config: ModelConfig

    def __call__(self, adapters: Any, params, batch):
        return answer_loss_sums(params, self.config, batch, adapters)
