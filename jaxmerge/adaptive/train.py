"""Gradient training of a trainable pytree against a frozen base, resumable (paper App. C; REFERENCE §1).

``fit(objective, trainable, frozen, train, val, tuning, ...)``: optax AdamW (weight decay 0) with a
cosine schedule and ``tuning.warmup`` linear warmup, effective batch ``tuning.batch_size``
(gradients accumulated over micro-batches by a ``lax.scan``; the loss is the mean over every answer
token of the effective batch, not a mean of micro-batch means), the validation loss at step 0 and
every ``tuning.eval_every`` steps, the state with the lowest validation loss kept. The step
(``train_step``) and the evaluation (``eval_loss``) are module-level jitted functions whose only static
arguments are the hashable ``objective`` and ``UpdateRule``; learning rates are data (injected
hyperparameters, one per optimiser partition), so every run with equal configuration and shapes reuses
one compiled program. The trainable + optimizer state is donated; the frozen pytree (base params, pool
stacks) is an argument that is never written, so it is bit-identical afterwards. With ``out_dir`` every evaluation is
followed by an orbax checkpoint; a restarted run resumes from the latest one and, the batches being
a pure function of (seed, step), ends with exactly the state of an uninterrupted run.

``objective(trainable, frozen, batch) -> (sum of token losses, token count)``
(``jaxmerge.adaptive.objectives``). Merged adapters reach the forward factored or dense, whichever costs fewer
FLOPs per step for the shapes at hand (``application_cost``).

Shapes: n examples, T tokens; batches on device are ``[micro-batches, micro, T]``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..config import LlamaConfig
from ..tasks.encode import shared_prefix
from . import checkpoint as ckpt
from .space import Tuning

Batch = Mapping[str, Any]  # {"tokens": [n, T] int32, "attention_mask": [n, T], "loss_mask": [n, T]}


# --- factored or dense ---------------------------------------------------------------------------
def application_cost(pool, config: LlamaConfig, tokens_per_step: int, train_factors: bool = False) -> dict:
    """FLOPs per training step of the merged LoRA terms, per module: ``{module: {"factored", "dense"}}``.

    With N tokens, R concatenated rank rows and a (out, in) projection, per layer:
    factored = forward 2NR(in+out) + backward 2NR(in+out) (+ 2NR(in+out) for dA, dB when the factors
    train); dense = build ΔW 2·out·in·R + the weight gradient dyᵀx 2N·out·in that the factored path
    never forms + its contraction with the factors 2·out·in·R (twice when the factors train).
    """
    out = {}
    for m, s in pool.modules.items():
        o, i = config.module_shape(m)
        L, R, N = s.a.shape[0], s.a.shape[1], tokens_per_step
        fac = (6 if train_factors else 4) * N * R * (i + o)
        den = (6 if train_factors else 4) * o * i * R + 2 * N * o * i
        out[m] = {"factored": L * fac, "dense": L * den}
    return out


def choose_application(pool, config: LlamaConfig, tokens_per_step: int, application: str = "auto",
                       train_factors: bool = False) -> dict[str, str]:
    """``{module: "factored" | "dense"}``: the given application, or per module the cheaper one."""
    if application != "auto":
        return {m: application for m in pool.modules}
    cost = application_cost(pool, config, tokens_per_step, train_factors)
    return {m: min(c, key=c.get) for m, c in cost.items()}


# --- optimiser, batches --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """The static half of an update: which top-level trainable keys are LoRA factors (their own learning
    rate), the L1 penalty l1·mean|w| on the coefficients, the box coefficients are clipped to."""
    lora_keys: tuple[str, ...] = ()
    l1: float = 0.0
    bounds: tuple[float, float] | None = None

    @classmethod
    def of(cls, tuning: Tuning, lora_keys: tuple[str, ...] = ()) -> "UpdateRule":
        return cls(tuple(lora_keys), float(tuning.l1), None if tuning.bounds is None else tuple(tuning.bounds))

    def penalty(self, trainable):
        return self.l1 * jnp.mean(jnp.abs(trainable["w"])) if self.l1 else jnp.float32(0.0)

    def project(self, trainable):
        if self.bounds is None:
            return trainable
        return {**trainable, "w": jnp.clip(trainable["w"], *self.bounds)}


GROUPS = ("coef", "lora")  # optimiser partitions; the learning rates of a step are data, in this order


def optimizer(rule: UpdateRule) -> optax.GradientTransformation:
    """AdamW (weight decay 0) per partition — coefficients and LoRA factors — with the learning rate an
    injected hyperparameter, set every step from data (``learning_rates``): one compiled step serves every
    learning rate and schedule."""
    def adamw():
        return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)

    return optax.partition({g: adamw() for g in GROUPS},
                           lambda tree: {k: GROUPS[k in rule.lora_keys] for k in tree})


def learning_rates(tuning: Tuning) -> np.ndarray:
    """``[steps, 2]`` the (coefficient, LoRA) learning rate of every step: linear warmup over
    ``tuning.warmup`` of the steps, then cosine decay to 0 (``optax.warmup_cosine_decay_schedule``)."""
    def sched(lr):
        f = optax.warmup_cosine_decay_schedule(0.0, lr, int(tuning.warmup * tuning.steps), max(tuning.steps, 1), 0.0)
        return np.asarray([float(f(i)) for i in range(tuning.steps)], np.float32)

    coef = sched(tuning.lr)
    lora = coef if tuning.lora_lr is None else sched(tuning.lora_lr)
    return np.stack([coef, lora], 1) if tuning.steps else np.zeros((0, 2), np.float32)


def _with_lr(opt_state, lrs: jax.Array):
    """The optimiser state with this step's learning rates (``lrs [2]``, ``GROUPS`` order)."""
    inner = {}
    for i, g in enumerate(GROUPS):
        masked = opt_state.inner_states[g]
        hp = {**masked.inner_state.hyperparams, "learning_rate": lrs[i]}
        inner[g] = masked._replace(inner_state=masked.inner_state._replace(hyperparams=hp))
    return opt_state._replace(inner_states=inner)


def batch_indices(key: jax.Array, step: int, n: int, batch_size: int) -> np.ndarray:
    """Example indices of step ``step``: consecutive slices of per-epoch permutations (a pure
    function of key and step, so a resumed run draws exactly the batches it would have)."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = pos // n
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(e)), n))
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def _micro(batch: Batch, idx: np.ndarray, micro: int) -> dict:
    """Gather rows ``idx`` and split them into ``[batch/micro, micro, T]`` micro-batches; a shared
    ``prefix [P]`` goes to every micro-batch (``[batch/micro, P]``)."""
    out = {k: np.asarray(v)[idx].reshape(len(idx) // micro, micro, -1) for k, v in batch.items() if k != "prefix"}
    if "prefix" in batch:
        out["prefix"] = np.broadcast_to(np.asarray(batch["prefix"]), (len(idx) // micro, len(batch["prefix"])))
    return out


def micro_batches(batch: Batch, micro: int) -> dict:
    """All rows of ``batch`` (``[n, T]`` arrays) as ``[n/m, m, T]`` micro-batches, ``m`` the largest
    divisor of n that is at most ``micro`` (so no row is dropped or repeated), their shared prefix split
    off (``shared_prefix``)."""
    n = len(np.asarray(batch["tokens"]))
    m = max(d for d in range(1, min(micro, n) + 1) if n % d == 0)
    return _micro(shared_prefix(batch), np.arange(n), m)


def place_batch(batch: dict, mesh=None) -> dict:
    """Host arrays ``[n/m, m, T]`` (``micro_batches``) on the device, or on ``mesh`` with the
    micro-batch axis over ``data`` where it divides (else replicated)."""
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    from jax.sharding import NamedSharding, PartitionSpec as P
    out = {}
    for k, v in batch.items():
        ax = "data" if k != "prefix" and v.shape[1] % mesh.shape["data"] == 0 else None
        out[k] = jax.device_put(v, NamedSharding(mesh, P(None, ax)))
    return out


def place_state(tree: Any, mesh) -> Any:
    """The trainable state on ``mesh``: leaves already laid out on that mesh (e.g. LoRA factors
    sharded like the base) keep their sharding, the rest — coefficients ``[k, L, M]``, optimizer
    moments, counters — are replicated on every device. ``mesh=None``: committed to the default device,
    as the step's outputs are (an uncommitted first state would compile the step a second time)."""
    if mesh is None:
        return jax.device_put(tree, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    from jax.sharding import NamedSharding, PartitionSpec as P
    replicated = NamedSharding(mesh, P())

    def place(x):
        s = getattr(x, "sharding", None)
        return x if isinstance(s, NamedSharding) and s.mesh == mesh else jax.device_put(x, replicated)

    return jax.tree.map(place, tree)


# --- the step ------------------------------------------------------------------------------------
def _accumulated(loss_fn: Callable, trainable, frozen, batch):
    """Token-mean loss and gradient over the micro-batches ``batch [micro-batches, micro, T]``."""
    grad_fn = jax.value_and_grad(lambda tr, mb: loss_fn(tr, frozen, mb), has_aux=True)

    def body(carry, mb):
        (s, c), g = grad_fn(trainable, mb)
        return (carry[0] + s, carry[1] + c, jax.tree.map(jnp.add, carry[2], g)), None

    zero = jax.tree.map(jnp.zeros_like, trainable)
    (s, c, g), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0), zero), batch)
    c = jnp.maximum(c, 1.0)
    return s / c, jax.tree.map(lambda x: x / c, g)


@functools.partial(jax.jit, static_argnames=("objective", "rule"), donate_argnums=(0,))
def train_step(state, frozen, batch, lrs, *, objective: Callable, rule: UpdateRule):
    """One update: ``state = {"trainable", "opt"}`` (donated), ``frozen`` never written, ``batch`` leaves
    ``[micro-batches, micro, T]``, ``lrs [2]`` this step's learning rates. Compiled once per (objective,
    rule, shapes): the objective and rule are hashable static configuration, everything else is data."""
    trainable = state["trainable"]
    loss, grads = _accumulated(objective, trainable, frozen, batch)
    if rule.l1:
        p, pg = jax.value_and_grad(rule.penalty)(trainable)
        loss, grads = loss + p, jax.tree.map(jnp.add, grads, pg)
    updates, opt_state = optimizer(rule).update(grads, _with_lr(state["opt"], lrs), trainable)
    trainable = rule.project(optax.apply_updates(trainable, updates))
    return {"trainable": trainable, "opt": opt_state}, loss


@functools.partial(jax.jit, static_argnames=("objective", "rule"))
def eval_loss(trainable, frozen, batch, *, objective: Callable, rule: UpdateRule | None = None):
    """Mean token loss over micro-batches ``[micro-batches, micro, T]`` (+ the rule's L1 penalty)."""
    def body(carry, mb):
        s, c = objective(trainable, frozen, mb)
        return (carry[0] + s, carry[1] + c), None
    (s, c), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), batch)
    loss = s / jnp.maximum(c, 1.0)
    return loss + rule.penalty(trainable) if rule is not None and rule.l1 else loss


@dataclasses.dataclass(frozen=True)
class FitResult:
    best: Any                  # trainable pytree with the lowest validation loss (host arrays)
    final: Any                 # trainable after the last step
    best_val_loss: float
    best_step: int
    steps: int
    history: list              # [(step, val_loss)]
    resumed_from: int | None   # step restored from a checkpoint, if any
    state_shardings: Any = None  # where the trained state (trainable, optimiser) lived after the last step


def fit(objective: Callable, trainable: Any, frozen: Any, train: Batch, val: Batch, tuning: Tuning, *,
        key: jax.Array, out_dir: str | None = None, mesh=None, lora_keys: tuple[str, ...] = (),
        progress: bool = True, desc: str = "train") -> FitResult:
    """Train ``trainable`` for ``tuning.steps`` steps; see the module docstring.

    ``objective``: a hashable loss (``jaxmerge.adaptive.objectives``) — the static half of the compiled
    step, which every run with an equal objective and equal shapes shares. ``train`` / ``val``: encoded
    examples (``[n, T]`` arrays). ``key``: the run's RNG key (batches). ``out_dir``: checkpoint folder
    (resumes from it). ``tuning.l1`` adds l1·mean|w| to the training loss and ``tuning.bounds`` clips the
    coefficients after each update; ``lora_keys`` train at ``tuning.lora_lr``. The validation loss that
    selects the best state is the plain answer loss (no penalty).
    """
    steps, bs = tuning.steps, tuning.batch_size
    micro = tuning.micro_batch or bs
    n_train = len(np.asarray(train["tokens"]))
    train = shared_prefix(train)  # every step's rows share it: run once per micro-batch, not once per row
    rule = UpdateRule.of(tuning, lora_keys)
    opt, lrs = optimizer(rule), jnp.asarray(learning_rates(tuning))
    step_fn = functools.partial(train_step, objective=objective, rule=rule)
    eval_fn = functools.partial(eval_loss, objective=objective)  # validation: the plain loss
    val_b = place_batch(micro_batches(val, micro), mesh)

    trainable = place_state(jax.tree.map(lambda x: jnp.array(x, copy=True), trainable), mesh)  # donated by the step
    n_hist = steps // max(tuning.eval_every, 1) + 2
    state = {"trainable": trainable, "opt": opt.init(trainable), "step": jnp.int32(0),
             "key": jax.random.key_data(key), "best": trainable, "best_val": jnp.float32(np.inf),
             "best_step": jnp.int32(0), "history": jnp.full((n_hist, 2), np.nan, jnp.float32)}
    mngr = ckpt.manager(os.path.join(out_dir, "ckpt")) if out_dir else None
    resumed = None
    if mngr is not None:
        restored = ckpt.restore_latest(mngr, state)
        if restored is not None:
            state, resumed = restored, int(restored["step"])
    key = jax.random.wrap_key_data(jnp.asarray(state["key"]))
    hist = np.asarray(state["history"]).copy()
    best, best_val, best_step = state["best"], float(state["best_val"]), int(state["best_step"])
    run = place_state({"trainable": state["trainable"], "opt": state["opt"]}, mesh)
    start = int(state["step"])

    def evaluate(s):
        nonlocal best, best_val, best_step
        v = float(eval_fn(run["trainable"], frozen, val_b))
        row = int(np.sum(~np.isnan(hist[:, 0])))
        hist[row] = (s, v)
        if v < best_val:
            # a host copy that owns its memory: np.asarray of a CPU jax array may alias the device
            # buffer, which the next (donating) step overwrites
            best, best_val, best_step = jax.tree.map(lambda x: np.asarray(x).copy(), run["trainable"]), v, s
        return v

    def checkpoint(s):
        if mngr is not None:
            ckpt.save(mngr, s, {"trainable": run["trainable"], "opt": run["opt"], "step": jnp.int32(s),
                                "key": jax.random.key_data(key), "best": best, "best_val": jnp.float32(best_val),
                                "best_step": jnp.int32(best_step), "history": jnp.asarray(hist)})

    if start == 0 and np.isnan(hist[0, 0]):
        evaluate(0)
        checkpoint(0)
    bar = _bar(progress, steps, start, desc)
    loss = float("nan")
    for s in range(start, steps):
        idx = batch_indices(key, s, n_train, bs)
        run, loss = step_fn(run, frozen, place_batch(_micro(train, idx, micro), mesh), lrs[s])
        done = s + 1
        if done % tuning.eval_every == 0 or done == steps:
            v = evaluate(done)
            checkpoint(done)
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss):.4f}", val=f"{v:.4f}", best=f"{best_val:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    history = [(int(a), float(b)) for a, b in hist if not np.isnan(a)]
    return FitResult(best=jax.tree.map(np.asarray, best), final=jax.tree.map(np.asarray, run["trainable"]),
                     best_val_loss=best_val, best_step=best_step, steps=steps, history=history,
                     resumed_from=resumed, state_shardings=jax.tree.map(lambda x: x.sharding, run))


def _bar(progress: bool, total: int, initial: int, desc: str):
    if not progress:
        return None
    from ..progress import bar
    return bar(total, desc, "step", initial=initial)
