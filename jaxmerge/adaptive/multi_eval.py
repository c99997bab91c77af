"""Score every pool LoRA on the target examples in batches where each row runs its own adapter.

Evaluation-based selection (paper §3) needs each pool LoRA's stand-alone quality on the target task.
Instead of one model (one call, one compilation per rank) per adapter, a batch of ``adapters_per_batch``
adapters is gathered from the rank-concatenated stacks into a batched ``Factored`` delta:

    a [G, L, R, in], b [G, L, out, R], m [G, L, R]     group j = adapter idx[j] applied alone (coef 1)

with R the batch's largest rank for that module rounded up to a power of two (bounds the number of
compiled shapes), adapter j's rows first and zero rows after them, ``m = s_j`` on real rows and 0 on
padding. Adapters are visited in order of total rank so that a batch pads little. Every adapter
batch is crossed with ``examples_per_step`` examples per forward: rows j·E + e = (adapter j, example e),
and the forward's grouped ``Factored`` application gives each group of E rows its adapter without
copying the factors per example.

Two scores, both equal to one-adapter-at-a-time evaluation (tests):
* ``pool_losses``: mean answer-token cross-entropy per adapter over all given rows (token mean, the
  training loss), from ``jaxmerge.tasks.encode(..., with_answer=True)`` batches;
* ``pool_accuracy``: greedy generation with ``jaxmerge.generate`` + exact match after
  ``jaxmerge.tasks.normalize`` (the paper's protocol).

Einsum-free; shapes: B adapter rows, E examples, T tokens, L layers, R (padded) rank rows.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..config import LlamaConfig
from ..generate import generate
from ..lora import Factored
from ..progress import track
from ..stacks import Pool
from ..tasks.encode import answer_logprobs, encode, pad_id, token_logprobs
from ..tasks.spec import normalize


# --- gathering one adapter per row ------------------------------------------------------------------
def _round_rank(r: int) -> int:
    return 1 << max(0, int(r - 1).bit_length())


def gather_plan(pool: Pool, indices: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """Host-side index plan of a batch: per module ``rows [B, R]`` (int32 stack rows), ``valid [B, R]``
    (1 on the adapter's real rows) and ``idx [B]``. Modules no adapter of the batch targets are left out."""
    idx = np.asarray(indices, np.int64)
    plan = {}
    for m, st in pool.modules.items():
        ranks = np.asarray(st.ranks)[idx]
        if ranks.max(initial=0) == 0:
            continue
        R = _round_rank(int(ranks.max()))
        col = np.arange(R)[None, :]
        rows = np.clip(st.offsets[idx][:, None] + np.minimum(col, np.maximum(ranks[:, None] - 1, 0)),
                       0, st.a.shape[1] - 1)
        plan[m] = dict(rows=rows.astype(np.int32), valid=(col < ranks[:, None]).astype(np.float32),
                       idx=idx.astype(np.int32))
    return plan


def gather_batched(stacks: Mapping[str, tuple], plan: Mapping[str, Mapping]) -> dict[str, Factored]:
    """Batched factored adapters (row j = adapter ``plan[m]["idx"][j]`` alone) from
    ``stacks = {m: (a [L, R_all, in], b [L, out, R_all], scale [N])}``; pure, jittable."""
    out = {}
    for m, p in plan.items():
        a_all, b_all, scale = stacks[m]
        rows, valid = jnp.asarray(p["rows"]), jnp.asarray(p["valid"])
        B, R = rows.shape
        L = a_all.shape[0]
        a = jnp.take(a_all, rows.reshape(-1), axis=1).reshape(L, B, R, -1).transpose(1, 0, 2, 3)
        b = jnp.take(b_all, rows.reshape(-1), axis=2).reshape(L, -1, B, R).transpose(2, 0, 1, 3)
        a = a * valid[:, None, :, None].astype(a.dtype)
        b = b * valid[:, None, None, :].astype(b.dtype)
        mult = (scale[jnp.asarray(p["idx"])][:, None] * valid)[:, None, :]
        out[m] = Factored(a, b, jnp.broadcast_to(mult, (B, L, R)))
    return out


def _stack_arrays(pool: Pool) -> dict[str, tuple]:
    return {m: (s.a, s.b, s.scale) for m, s in pool.modules.items()}


def _batches(pool: Pool, indices: Sequence[int] | None, adapters_per_batch: int):
    """Adapter batches (each padded to full size by repeating its last entry), in order of total rank."""
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    total = sum(np.asarray(s.ranks)[idx] for s in pool.modules.values())
    order = idx[np.argsort(total, kind="stable")]
    for lo in range(0, len(order), adapters_per_batch):
        part = order[lo:lo + adapters_per_batch]
        yield part, np.concatenate([part, np.repeat(part[-1:], adapters_per_batch - len(part))])


def _pad_examples(batch: Mapping[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Pad rows to a multiple (copies of row 0 with an all-zero loss mask) and reshape to
    ``[chunks, multiple, T]`` (``answer_index`` ``[chunks, multiple, A]`` when the batch has it)."""
    n = batch["tokens"].shape[0]
    pad = -n % multiple
    out = {}
    for k in ("tokens", "attention_mask", "loss_mask", "answer_index"):
        if k not in batch:
            continue
        v = np.asarray(batch[k])
        if pad:
            fill = np.zeros_like(v[:1]) if k == "loss_mask" else v[:1]
            v = np.concatenate([v, np.repeat(fill, pad, axis=0)])
        out[k] = v.reshape(-1, multiple, v.shape[-1])
    return out


# --- loss score --------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("config", "n_adapters"))
def _batch_nll_sums(params, stacks, plan, rows, config, n_adapters):
    """Summed answer-token NLL per adapter row ``[B]``; ``rows`` (tokens etc.) ``[chunks, E_c, T]``. With
    ``answer_index`` the LM head runs at the answer positions only (``answer_logprobs``)."""
    adapters = gather_batched(stacks, plan)  # group j = adapter j; rows j·E + e after the tile below
    e_c = rows["tokens"].shape[1]

    def chunk(acc, xs):
        lp, w = answer_logprobs(params, config, {k: jnp.tile(x, (n_adapters, 1)) for k, x in xs.items()}, adapters)
        return acc + (-(lp * w).sum(1)).reshape(n_adapters, e_c).sum(1), None

    acc, _ = jax.lax.scan(chunk, jnp.zeros((n_adapters,), jnp.float32), rows)
    return acc


def pool_losses(params: Mapping, config: LlamaConfig, pool: Pool, batch: Mapping[str, np.ndarray], *,
                indices: Sequence[int] | None = None, adapters_per_batch: int = 8, examples_per_step: int = 4,
                progress: bool = True) -> np.ndarray:
    """Mean answer-token loss ``[n]`` (float64) of each adapter in ``indices`` (default: all) applied
    alone (Σ s_i B_i A_i) on ``batch`` (``tokens``, ``attention_mask``, ``loss_mask`` ``[E, T]``, the
    next-token convention of ``jaxmerge.tasks.encode``; with its ``answer_index`` the LM head runs at the answer
    positions only). Lower is better."""
    count = float(np.asarray(batch["loss_mask"]).sum())
    if count == 0:
        raise ValueError("batch has no answer tokens (loss_mask is all zero)")
    ex = _pad_examples(batch, min(examples_per_step, batch["tokens"].shape[0]))
    stacks = _stack_arrays(pool)
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    out = {}
    batches = list(_batches(pool, idx, adapters_per_batch))
    for real, padded in track(batches, desc="score pool (loss)", unit="batch", enabled=progress):
        sums = _batch_nll_sums(params, stacks, gather_plan(pool, padded), ex, config, len(padded))
        out.update(zip(real.tolist(), np.asarray(sums, np.float64)[:len(real)] / count))
    return np.array([out[int(i)] for i in idx])


# --- accuracy score ----------------------------------------------------------------------------------
def _end_ids(config: LlamaConfig, tokenizer) -> tuple[int, ...]:
    ids = tuple(config.eos_token_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids += (int(tokenizer.eos_token_id),)
    return ids


def _decode(tokenizer, row: np.ndarray, ends: tuple[int, ...]) -> str:
    stop = [j for j, t in enumerate(row) if int(t) in ends]
    ids = row[:stop[0]] if stop else row
    return tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)


_gather_jit = jax.jit(gather_batched)


def pool_answers(params: Mapping, config: LlamaConfig, tokenizer, pool: Pool, examples: Sequence[Mapping], *,
                 indices: Sequence[int] | None = None, adapters_per_batch: int = 8, examples_per_step: int = 16,
                 max_new_tokens: int = 30, system: str | None = None, progress: bool = True) -> list[list[str]]:
    """Greedy answers ``[n][E]`` (decoded, cut at the first end token, special tokens removed) of each
    adapter alone on ``examples``' prompts (chat template, left-padded)."""
    enc = encode(examples, tokenizer, None, with_answer=False, system=system)
    e_c = min(examples_per_step, len(examples))
    ex = _pad_examples(dict(enc, loss_mask=np.zeros_like(enc["tokens"])), e_c)
    ends, pad = _end_ids(config, tokenizer), pad_id(tokenizer)
    stacks = _stack_arrays(pool)
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    out = {}
    batches = list(_batches(pool, idx, adapters_per_batch))
    for real, padded in track(batches, desc="score pool (generate)", unit="batch", enabled=progress):
        adapters = _gather_jit(stacks, gather_plan(pool, padded))
        rows = []
        for tok, am in zip(ex["tokens"], ex["attention_mask"]):
            gen = generate(params, np.tile(tok, (len(padded), 1)), config, max_new_tokens=max_new_tokens,
                           attention_mask=np.tile(am, (len(padded), 1)), adapters=adapters, eos_token_id=ends,
                           pad_token_id=pad)
            rows.append(np.asarray(gen).reshape(len(padded), e_c, -1))
        gen = np.concatenate(rows, axis=1)[:, :len(examples)]
        for j, i in enumerate(real.tolist()):
            out[i] = [_decode(tokenizer, g, ends) for g in gen[j]]
    return [out[int(i)] for i in idx]


def pool_correct(params: Mapping, config: LlamaConfig, tokenizer, pool: Pool, examples: Sequence[Mapping],
                 **kw) -> np.ndarray:
    """``[n, E]`` float32 0/1 exact match (after ``normalize``) of each adapter alone (``pool_answers``)."""
    gold = [normalize(e["answer"]) for e in examples]
    answers = pool_answers(params, config, tokenizer, pool, examples, **kw)
    return np.array([[normalize(a) == g for a, g in zip(row, gold)] for row in answers], np.float32)


def pool_accuracy(params: Mapping, config: LlamaConfig, tokenizer, pool: Pool, examples: Sequence[Mapping],
                  **kw) -> np.ndarray:
    """Exact-match accuracy ``[n]`` of each adapter alone (see ``pool_correct`` for the options)."""
    return pool_correct(params, config, tokenizer, pool, examples, **kw).mean(axis=1)


def score_pool(params: Mapping, config: LlamaConfig, pool: Pool, examples: Sequence[Mapping], tokenizer, *,
               score: str = "accuracy", max_len: int | None = None, **kw) -> np.ndarray:
    """Evaluation-selection scores ``[N]``, higher is better: accuracy, or minus the answer loss
    (``score="loss"``); feed them to ``selection.select(pool, "evaluation", k, eval_scores=...)``."""
    if score == "accuracy":
        return pool_accuracy(params, config, tokenizer, pool, examples, **kw)
    if score == "loss":
        return -pool_losses(params, config, pool, encode(examples, tokenizer, max_len), **kw)
    raise ValueError(f"score {score!r}: expected 'accuracy' or 'loss'")


# --- the one-adapter-at-a-time reference (tests, speed comparison) -----------------------------------
def single_adapter(pool: Pool, i: int) -> dict[str, Factored]:
    """Adapter i alone, unbatched: Σ 1·s_i·B_i·A_i per module it targets."""
    sub = pool.subset([i])
    return sub.factored({m: jnp.ones((1, pool.num_layers), jnp.float32) for m in sub.modules})


@functools.partial(jax.jit, static_argnames=("config",))
def _nll_sum(params, adapters, tokens, attention_mask, loss_mask, config):
    return -(token_logprobs(params, config, tokens, attention_mask, adapters) * loss_mask.astype(jnp.float32)).sum()


def pool_losses_one_at_a_time(params: Mapping, config: LlamaConfig, pool: Pool, batch: Mapping[str, np.ndarray], *,
                              indices: Sequence[int] | None = None) -> np.ndarray:
    """``pool_losses`` computed one model per adapter (all examples in one batch each)."""
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    count = float(np.asarray(batch["loss_mask"]).sum())
    return np.array([float(_nll_sum(params, single_adapter(pool, int(i)), batch["tokens"], batch["attention_mask"],
                                    batch["loss_mask"], config)) / count for i in idx])


# --- measurement: python -m jaxmerge.adaptive.multi_eval -----------------------------------------------
def _measure(n_adapters: int = 44, n_examples: int = 80, seq: int = 32, seed: int = 0) -> dict:
    """Loss scoring and greedy generation (8 new tokens) over a random pool, batched (8 adapters a batch) vs
    one adapter at a time, cold (with compilation) and warm.
    Shapes of the embedded default world: hidden 64, 4 layers, 4 heads / 2 kv, ffn 128, its pool's
    rank cycle (16, 8, 64, 32, 4) on all seven projections."""
    import time

    from ..config import MODULES, RopeConfig
    from ..shapes import AdapterShape, random_pool
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope=RopeConfig(500000.0))
    rng = np.random.default_rng(seed)
    from ..params import abstract_params
    params = jax.tree_util.tree_map_with_path(
        lambda p, l: jnp.ones(l.shape, jnp.float32) if "norm" in jax.tree_util.keystr(p)
        else jnp.asarray(rng.normal(0, 0.05, l.shape), jnp.float32), abstract_params(config, jnp.float32))
    shapes = [AdapterShape((16, 8, 64, 32, 4)[i % 5], 16.0, MODULES) for i in range(n_adapters)]
    pool = random_pool(config, shapes, jax.random.key(seed))
    tokens = rng.integers(3, 256, (n_examples, seq)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, seq // 2:-1] = 1
    batch = dict(tokens=tokens, attention_mask=np.ones_like(tokens), loss_mask=loss_mask)
    prompts = np.concatenate([np.ones((n_examples, 1), np.int32), tokens[:, :seq // 2]], axis=1)
    ones = np.ones_like(prompts)

    def generate_one_at_a_time():
        return [np.asarray(generate(params, prompts, config, max_new_tokens=8, attention_mask=ones,
                                    adapters=single_adapter(pool, i), eos_token_id=2, pad_token_id=0))
                for i in range(n_adapters)]

    def generate_batched():
        stacks, out = _stack_arrays(pool), []
        for real, padded in _batches(pool, None, 8):
            ad = _gather_jit(stacks, gather_plan(pool, padded))
            g = generate(params, np.tile(prompts, (8, 1)), config, max_new_tokens=8, attention_mask=np.tile(ones, (8, 1)),
                         adapters=ad, eos_token_id=2, pad_token_id=0)
            out += list(zip(real.tolist(), np.asarray(g).reshape(8, n_examples, -1)))
        return [g for _, g in sorted(out, key=lambda t: t[0])]

    out = {}
    runs = (("loss_batched", lambda: pool_losses(params, config, pool, batch, progress=False)),
            ("loss_one_at_a_time", lambda: pool_losses_one_at_a_time(params, config, pool, batch)),
            ("generate_batched", generate_batched), ("generate_one_at_a_time", generate_one_at_a_time))
    res = {}
    for name, fn in runs:
        for phase in ("cold", "warm"):
            t = time.perf_counter()
            res[name] = fn()
            out[f"{name}_{phase}_s"] = round(time.perf_counter() - t, 3)
    out["loss_max_abs_diff"] = float(np.max(np.abs(res["loss_batched"] - res["loss_one_at_a_time"])))
    out["generations_equal"] = all(np.array_equal(a, b) for a, b in zip(res["generate_batched"],
                                                                         res["generate_one_at_a_time"]))
    for kind in ("loss", "generate"):
        for phase in ("cold", "warm"):
            out[f"{kind}_speedup_{phase}"] = round(out[f"{kind}_one_at_a_time_{phase}_s"] / out[f"{kind}_batched_{phase}_s"], 2)
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(_measure(), indent=1))
