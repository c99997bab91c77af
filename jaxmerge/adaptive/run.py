"""``run_method``: one method of the design space on one task, end to end, resumable.

    result = run_method("ours", base, pool, task_data, k=30, seed=0, out_dir="runs/ours")

Steps: (1) the target-task LoRA when the method needs one (in slot 0, or as the reference of a
similarity selection) — given, or trained here with the target-lora recipe and saved in PEFT format;
(2) selection of k recycled LoRAs (cached in ``selection.json``), optionally redrawn at random
(std-matched, target kept), the target inserted at slot 0; (3) tuning — gradient (coefficients),
joint (coefficients + the LoRAs' A/B + π-tuning's fresh LoRA), gradient-free (nevergrad), a static
merge, or none; (4) test accuracy of the best state under the task's protocol. Writes
``coefficients.npz`` and ``result.json`` atomically. A run is identified by everything that determines
it (``jaxmerge.adaptive.identity``, recorded in ``result.json``): a finished run with the same identity is
returned with ``reused: True``, a different one under the same ``out_dir`` is refused naming what
differs (``RunMismatch``); one that was killed resumes from its orbax checkpoints (``train/ckpt``, ``target_lora/train/ckpt``)
or its nevergrad history (``lorahub.json``).

Trainable state per tuning (N merged adapters, L layers, M module types of the pool):
    gradient / gradient_free  {"w": coefficient_shape(granularity, N, L, M)}
    joint                     {"w": …, "a": {module: [L, R, in]}, "b": {module: [L, out, R]}}
    lora (target-lora)        {"a": {module: [L, 64, in]}, "b": {module: [L, out, 64]}}
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..atomic import to_jsonable, write_jsonl
from ..errors import UserError
from ..lora import Dense, fold_adapters
from ..merge.coefficients import factored_adapters, module_coefficients
from ..stacks import ModuleStack, Pool, bucketed
from ..tasks import concat_batches, encode, predictions
from . import checkpoint as ckpt, objectives
from .identity import differences, file_fingerprint, pool_identity, run_identity
from .lorahub import search
from .methods import METHODS, method as make_method
from .selection import SIMILARITIES
from .space import LoraSpec, Method
from .target_lora import as_pool, init_lora, load_target, lora_adapters, save_peft
from .train import UpdateRule, choose_application, eval_loss, fit, micro_batches, place_batch



def run_method(name_or_method: str | Method, base, pool: Pool | None, task_data, *, k: int | None = None,
               seed: int = 0, out_dir: str, steps: int | None = None, target_lora: Any = None,
               with_target_lora: bool | None = None, random_pool: bool | None = None,
               target_lora_steps: int | None = None, max_len: int | None = None, eval_batch_size: int = 32,
               mesh=None, progress: bool = True, **overrides) -> dict:
    """Run a method; returns (and writes to ``out_dir/result.json``) the result dict.

    base: ``jaxmerge.Base`` (config, params, tokenizer). pool: the recycled LoRAs (None for zero-shot
    and target-lora). task_data: ``jaxmerge.tasks.TaskData``. k, steps, with_target_lora,
    random_pool and ``overrides`` (any ``Method`` / ``Tuning`` field, e.g. ``granularity="layer"``,
    ``lr=1e-2``) adjust the named method. target_lora: a PEFT folder, a one-adapter ``Pool``, or
    None (trained here when needed, ``target_lora_steps`` overriding the recipe's 400).
    """
    m = make_method(name_or_method, k=k, steps=steps, with_target_lora=with_target_lora,
                    random_pool=random_pool, **overrides)
    os.makedirs(out_dir, exist_ok=True)
    task = task_data.task
    identity = run_identity(m.to_dict(), seed=seed, base=base, pool=pool, task_data=task_data,
                            settings={"max_len": max_len, "target_lora": _target_identity(target_lora, target_lora_steps)})
    done = ckpt.load_json(os.path.join(out_dir, "result.json"))
    if done is not None:
        _same_run(out_dir, done.get("identity"), identity)
        return {**done, "reused": True}
    _same_run(out_dir, ckpt.load_json(os.path.join(out_dir, "identity.json")), identity, partial=True)
    ckpt.save_json(os.path.join(out_dir, "identity.json"), identity)

    t0 = time.time()
    config, params, tok = base.config, base.params, base.tokenizer
    keys = dict(zip(("select", "init", "train", "reinit", "target", "fresh"), jax.random.split(jax.random.key(seed), 6)))
    enc = lambda ex: encode(ex, tok, max_len, system=task.system)
    train_b, val_b = enc(task_data.train), enc(task_data.validation)
    result = {"method": m.name, "task": task.name, "k": m.selection.k, "seed": seed,
              "with_target_lora": m.with_target_lora, "random_pool": m.random_pool, "selection": m.selection.kind,
              "granularity": m.granularity, "activation": m.activation, "tuning": m.tuning.kind}
    frozen = {"params": params}
    arrays: dict[str, Any] = {}

    if m.tuning.kind == "lora":  # the target-task LoRA itself
        lora, spec, fr = _train_lora(m, base, train_b, val_b, keys["target"], os.path.join(out_dir, "lora"), mesh, progress)
        adapters, history = lora_adapters(lora, spec.scale), fr.history
        result.update(best_val_loss=fr.best_val_loss, best_step=fr.best_step, steps=m.tuning.steps,
                      adapter_path=os.path.join(out_dir, "lora", "adapter"))
        arrays = ckpt.flatten({"a": lora["a"], "b": lora["b"]})
    elif m.tuning.kind == "none" and m.static is None:  # zero-shot
        adapters, history = None, []
        result.update(best_val_loss=_loss(params, None, val_b, config), steps=0)
    else:
        if pool is None:
            raise ValueError(f"method {m.name!r} needs a pool of LoRAs")
        merged, info = _merged_pool(m, base, pool, task_data, train_b, val_b, keys, out_dir, target_lora,
                                    target_lora_steps, mesh, progress)
        result.update(info)
        adapters, history, res, arrays = _tune(m, merged, frozen, config, train_b, val_b, keys, out_dir, mesh, progress)
        result.update(res)
        arrays.update(indices=np.asarray(info["indices"]))
    # the test set runs through the merged model itself: every ΔW folded into W once, not applied per token
    rows = predictions(fold_adapters(params, adapters) if adapters else params, config, tok, task_data.test, task.protocol,
                       batch_size=eval_batch_size, max_new_tokens=task.max_new_tokens, system=task.system)
    write_jsonl(os.path.join(out_dir, "predictions.jsonl"), rows)  # exactly what was scored, per test example
    acc = float(np.mean([r["correct"] for r in rows]))
    coef_path = ckpt.save_npz(os.path.join(out_dir, "coefficients.npz"), arrays) if arrays else None
    result.update(test_accuracy=float(acc), coefficients_path=coef_path, history=history,
                  seconds=round(time.time() - t0, 2), identity=identity)
    result = to_jsonable(result)
    ckpt.save_json(os.path.join(out_dir, "result.json"), result)
    return result


# --- pieces ---------------------------------------------------------------------------------------
def _merged_pool(m: Method, base, pool: Pool, task_data, train_b, val_b, keys, out_dir, target_lora, target_steps,
                 mesh, progress) -> tuple[Pool, dict]:
    """Select k recycled LoRAs (+ target in slot 0, + random redraw); the pool to merge and a report."""
    from ..pool.derive import random_reinit, with_target
    from .selection import select

    kind = m.selection.kind
    target = None
    if m.with_target_lora or kind in SIMILARITIES:
        target = _target_pool(base, train_b, val_b, target_lora, target_steps, keys["target"],
                              os.path.join(out_dir, "target_lora"), mesh, progress)
    k = m.selection.k if m.selection.k is not None else pool.num_adapters
    path = os.path.join(out_dir, "selection.json")
    cached = ckpt.load_json(path)
    if cached is not None:
        idx = np.asarray(cached["indices"], np.int64)
    else:
        scores = _evaluation_scores(base, pool, task_data, train_b, progress) if kind == "evaluation" else None
        idx = select(pool, kind, k, key=keys["select"], target_index=target, eval_scores=scores)
        ckpt.save_json(path, {"kind": kind, "k": k, "indices": idx.tolist(),
                              "names": [pool.names[i] for i in idx],
                              "scores": None if scores is None else np.asarray(scores).tolist()})
    merged = pool.subset(idx)
    if m.random_pool:
        merged = random_reinit(merged, keys["reinit"])
    if m.with_target_lora:
        merged = with_target(merged, target)
    return merged, {"indices": [int(i) for i in idx], "selected": [pool.names[i] for i in idx],
                    "num_merged": merged.num_adapters}


def _evaluation_scores(base, pool: Pool, task_data, train_b, progress) -> np.ndarray:
    """Each pool LoRA alone on the target's training examples — accuracy (generation; the paper) or minus the
    answer loss (multiple choice) — computed once per (base, pool, task) in the user cache and shared by
    every seed, method and k that selects by evaluation."""
    from ..atomic import read_json, write_json
    from ..cache import build_lock, cache_root
    from .identity import reference_key
    from .multi_eval import pool_losses, score_pool
    task = task_data.task
    ident = run_identity({"evaluation_scores": task.protocol}, seed=0, base=base, pool=pool, task_data=task_data)
    path = os.path.join(cache_root(), "references", f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', task.name)}-evaluation-scores-"
                        f"{reference_key(ident)}.json")
    with build_lock(path):
        cached = read_json(path)
        if cached is None:
            if task.protocol == "generate":
                scores = score_pool(base.params, base.config, pool, task_data.train, base.tokenizer,
                                    max_new_tokens=task.max_new_tokens, system=task.system, progress=progress)
            else:
                scores = -pool_losses(base.params, base.config, pool, train_b, progress=progress)
            cached = {"scores": np.asarray(scores, np.float64).tolist(), "names": list(pool.names), "identity": ident}
            write_json(path, cached)
    return np.asarray(cached["scores"], np.float32)


def _target_pool(base, train_b, val_b, target_lora, steps, key, out_dir, mesh, progress) -> Pool:
    """The target-task LoRA as a one-adapter pool: given (Pool or PEFT folder) or trained here on the
    run's own encoded batches."""
    if isinstance(target_lora, Pool):
        return target_lora
    if target_lora is None:
        peft_dir = os.path.join(out_dir, "adapter")
        if not os.path.exists(os.path.join(peft_dir, "adapter_config.json")):
            _train_lora(make_method("target-lora", steps=steps), base, train_b, val_b, key, out_dir, mesh, progress)
        target_lora = peft_dir
    return load_target(os.fspath(target_lora), base.config)  # the pool loader: full PEFT semantics


def _train_lora(m: Method, base, train_b, val_b, key, out_dir, mesh, progress):
    """Train a fresh LoRA (the target-lora recipe) and save it in PEFT format under ``out_dir/adapter``."""
    spec: LoraSpec = m.lora
    lora = init_lora(base.config, spec, jax.random.fold_in(key, 1))
    fr = fit(objectives.Lora(base.config, spec.scale), lora, {"params": base.params}, train_b, val_b, m.tuning, key=key,
             out_dir=os.path.join(out_dir, "train"), mesh=mesh, progress=progress, desc="target-lora")
    save_peft(fr.best, spec, base.config, os.path.join(out_dir, "adapter"), base_model=getattr(base, "path", None))
    return fr.best, spec, fr


def _tune(m: Method, merged: Pool, frozen, config, train_b, val_b, keys, out_dir, mesh, progress):
    """Tune (or statically merge) ``merged``; (adapters of the best state, history, result fields, arrays)."""
    if m.static is not None:
        from ..merge import merge_pool, registry
        st, n = m.static, merged.num_adapters
        w = registry.resolve_weights(st.kind, n, merged.num_layers, None if st.weight is None else [st.weight] * n)
        deltas = merge_pool(merged, st.kind, weights=w if registry.takes_weights(st.kind) else None,
                            params=st.params, key=keys["init"])
        w = jnp.asarray(w[:, 0])
        adapters = {mod: Dense(d) for mod, d in deltas.items()}
        val = _loss(frozen["params"], adapters, val_b, config)
        return adapters, [], {"best_val_loss": val, "steps": 0}, {"weights": w}

    gran, act = m.granularity, m.activation
    if m.tuning.kind == "joint" and m.fresh_lora is not None:
        from ..pool.derive import concat
        fresh = init_lora(config, m.fresh_lora, keys["fresh"], modules=tuple(merged.modules))
        merged = concat(merged, as_pool(fresh, m.fresh_lora.scale, name="fresh"))
    merged = bucketed(merged)  # a few row-count classes: the runs of a sweep share compiled programs
    n, L, M = merged.num_adapters, merged.num_layers, len(merged.modules)
    w0 = m.init(m.coefficient_shape(n, L, M), keys["init"])
    stacks = merged.modules
    if m.tuning.kind == "joint":
        objective = objectives.Joint(config, gran, act)
        trainable = {"w": w0, "a": {mod: s.a for mod, s in stacks.items()}, "b": {mod: s.b for mod, s in stacks.items()}}
        fz = {**frozen, "scale": {mod: s.scale for mod, s in stacks.items()},
              "rows": {mod: _row_mask(s) for mod, s in stacks.items()},
              "owner": {mod: jnp.asarray(s.owner, jnp.int32) for mod, s in stacks.items()}}
        lora_keys = ("a", "b")
    else:
        tokens = m.tuning.batch_size * train_b["tokens"].shape[1]
        choice = choose_application(merged, config, tokens, m.application)
        objective = objectives.Coefficients(config, gran, act, tuple(sorted(choice.items())))
        trainable, fz, lora_keys = {"w": w0}, {**frozen, "stacks": stacks}, ()

    res: dict[str, Any] = {}
    if m.tuning.kind == "gradient_free":
        both = concat_batches(train_b, val_b)
        rule = UpdateRule.of(m.tuning)
        all_b = place_batch(micro_batches(both, EVAL_MICRO))
        ev = lambda w: float(eval_loss({"w": jnp.asarray(w, jnp.float32)}, fz, all_b, objective=objective, rule=rule))
        sr = search(ev, np.asarray(w0), m.tuning, seed=int(jax.random.randint(keys["train"], (), 0, 2**31 - 1)),
                    history_path=os.path.join(out_dir, "lorahub.json"), progress=progress, desc=m.name)
        best = {"w": jnp.asarray(sr.best)}
        res.update(search_best_loss=sr.best_loss, search_init_loss=sr.init_loss, steps=m.tuning.budget,
                   best_val_loss=_loss(fz["params"], objective.adapters(best, fz), val_b, config))
        history = [(i, l) for i, l in enumerate(sr.losses)]
    else:
        fr = fit(objective, trainable, fz, train_b, val_b, m.tuning, key=keys["train"],
                 out_dir=os.path.join(out_dir, "train"), mesh=mesh, lora_keys=lora_keys, progress=progress, desc=m.name)
        best, history = jax.tree.map(jnp.asarray, fr.best), fr.history
        res.update(best_val_loss=fr.best_val_loss, best_step=fr.best_step, steps=m.tuning.steps,
                   resumed_from=fr.resumed_from)
        if m.tuning.kind != "joint":
            res["application"] = choice
    # evaluation uses the factored form (exact, and cheap for generation's few tokens)
    if m.tuning.kind == "joint":
        adapters = objective.adapters(best, fz)
    else:
        adapters = factored_adapters(stacks, best["w"], gran, act)
    coefs = module_coefficients(merged, best["w"], gran, act)
    arrays = {"w": best["w"], **{f"coef/{mod}": c for mod, c in coefs.items()}}
    if m.tuning.kind == "joint":
        arrays.update(ckpt.flatten({"a": _unpadded(best["a"], stacks), "b": _unpadded(best["b"], stacks, axis=2)}))
    res["merged_names"] = list(merged.names)
    return adapters, history, res, arrays


def _unpadded(factors: dict, stacks: dict, axis: int = 1) -> dict:
    """Joint-trained factors without the bucket's padding rows (what the run's adapters really have)."""
    return {m: jax.lax.slice_in_dim(f, 0, int(sum(stacks[m].ranks)), axis=axis) for m, f in factors.items()}


def _row_mask(s: ModuleStack) -> jax.Array:
    """``[L, R]`` 1 on rows of (adapter, layer) pairs that exist: joint tuning keeps absent ones at 0."""
    own = jnp.asarray(s.owner, jnp.int32)
    return (s.present.T[:, jnp.maximum(own, 0)] & (own >= 0)[None, :]).astype(s.a.dtype)


EVAL_MICRO = 8  # rows per micro-batch when a whole split is evaluated at once (LoraHub's loss, _loss)


def _loss(params, adapters, batch, config) -> float:
    """Mean answer loss of one encoded split under ``adapters`` (None: the base): one compiled program per
    (config, split shape, adapter structure), shared by every run of the process."""
    return float(eval_loss(adapters, params, place_batch(micro_batches(batch, EVAL_MICRO)),
                           objective=objectives.Adapters(config)))


class RunMismatch(UserError):
    """``out_dir`` already holds (part of) a run that differs from the one asked for."""


def _same_run(out_dir: str, stored, identity: dict, partial: bool = False) -> None:
    if stored is None and not partial:
        raise RunMismatch(f"{out_dir} holds a result.json without a run identity (an older jaxmerge); "
                          "use another --out or delete it")
    diff = [] if stored is None else differences(stored, identity)
    if diff:
        what = "checkpoints of a different run" if partial else "a different finished run"
        raise RunMismatch(f"{out_dir} holds {what}: " + "; ".join(diff[:6]) + ("; …" if len(diff) > 6 else "")
                          + " — use another --out, or delete the folder to run again")


def _target_identity(target_lora, steps) -> dict:
    """What fixes the target-task LoRA of a run: a given Pool or PEFT folder (by content), or the recipe."""
    if target_lora is None:
        return {"trained_here": True, "steps": steps}
    if isinstance(target_lora, Pool):
        return {"pool": pool_identity(target_lora)}
    path = os.fspath(target_lora)
    files = sorted(f for f in os.listdir(path) if f.endswith((".json", ".safetensors")))
    return {"adapter_dir": os.path.abspath(path), "files": {f: file_fingerprint(os.path.join(path, f)) for f in files}}


__all__ = ["run_method", "METHODS"]
