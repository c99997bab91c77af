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

When every adapter sees many tokens (the target's 100 examples), the factored path's FLOPs grow with
the padded rank at every token, while folding one adapter into W costs out·in·R once: ``application=
"dense"`` scores the adapters one at a time on the folded weights (``fold_adapter``; rank rows padded to
the pool's largest per module, so one compiled program serves every adapter), and ``"auto"`` (the
default) takes whichever path ``scoring_application`` counts fewer multiply-adds for. The folded path
runs the tokens every row starts with (``split_prefix``) once per adapter and shares their KV cache, and
fills its chunks of rows evenly (``_even_chunk``).

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
from ..lora import Factored, fold_adapters
from ..model import extend, prefix_caches
from ..progress import track
from ..stacks import Pool
from ..tasks.encode import answer_logprobs, encode, logprobs_at, pad_id, split_prefix, token_logprobs
from ..tasks.spec import normalize


# --- gathering one adapter per row ------------------------------------------------------------------
def _round_rank(r: int) -> int:
    return 1 << max(0, int(r - 1).bit_length())


def gather_plan(pool: Pool, indices: Sequence[int], rank: Mapping[str, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Host-side index plan of a batch: per module ``rows [B, R]`` (int32 stack rows), ``valid [B, R]``
    (1 on the adapter's real rows) and ``idx [B]``. R: the batch's largest rank rounded up to a power of
    two, or ``rank[m]`` for every module given there (a fixed shape; modules the batch does not target
    then have all-zero ``valid``); other modules no adapter of the batch targets are left out."""
    idx = np.asarray(indices, np.int64)
    plan = {}
    for m, st in pool.modules.items():
        ranks = np.asarray(st.ranks)[idx]
        if (rank is None or m not in rank) and ranks.max(initial=0) == 0:
            continue
        R = int(rank[m]) if rank is not None and m in rank else _round_rank(int(ranks.max()))
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


# --- or one adapter at a time, folded into the base's weights ----------------------------------------
def fold_adapter(params: Mapping, stacks: Mapping[str, tuple], plan: Mapping[str, Mapping]) -> dict:
    """``params`` with W + s·B·A of the one adapter in ``plan`` (B = 1) in every planned module; pure, jittable."""
    return fold_adapters(params, {m: Factored(f.a[0], f.b[0], f.m[0]) for m, f in gather_batched(stacks, plan).items()})


def _pool_ranks(pool: Pool) -> dict[str, int]:
    """Every module's largest rank in the pool, rounded up: one fold shape for all adapters (one compile)."""
    return {m: _round_rank(max(1, int(np.max(s.ranks)))) for m, s in pool.modules.items()}


def scoring_application(pool: Pool, indices, tokens_per_adapter: int, adapters_per_batch: int) -> str:
    """``"dense"`` (fold each adapter into W, then the base forward) when its multiply-adds are fewer than
    the grouped factored path's (every token through rank-padded factors), else ``"grouped"``."""
    ranks = _pool_ranks(pool)
    grouped = dense = 0
    for part, padded in _batches(pool, indices, adapters_per_batch):
        for m, st in pool.modules.items():
            L, _, d = st.a.shape
            o = st.b.shape[1]
            r = np.asarray(st.ranks)[padded]
            if r.max(initial=0):
                grouped += len(padded) * tokens_per_adapter * L * _round_rank(int(r.max())) * (o + d)
            dense += len(part) * L * o * d * (ranks[m] + 1)
    return "dense" if dense < grouped else "grouped"


def _applications(pool, indices, tokens, adapters_per_batch, application):
    if application == "auto":
        return scoring_application(pool, indices, tokens, adapters_per_batch)
    if application not in ("grouped", "dense"):
        raise ValueError(f"application {application!r}: expected 'auto', 'grouped' or 'dense'")
    return application


def _batches(pool: Pool, indices: Sequence[int] | None, adapters_per_batch: int):
    """Adapter batches (each padded to full size by repeating its last entry), in order of total rank."""
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    total = sum(np.asarray(s.ranks)[idx] for s in pool.modules.values())
    order = idx[np.argsort(total, kind="stable")]
    for lo in range(0, len(order), adapters_per_batch):
        part = order[lo:lo + adapters_per_batch]
        yield part, np.concatenate([part, np.repeat(part[-1:], adapters_per_batch - len(part))])


def _even_chunk(n: int, most: int) -> int:
    """Rows a chunk so that ``n`` rows fill chunks of at most ``most`` evenly (100 rows, ≤ 32: 4 × 25, not
    4 × 32 with 28 rows of padding)."""
    chunks = -(-n // max(1, min(most, n)))
    return -(-n // chunks)


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


@functools.partial(jax.jit, static_argnames=("config",))
def _dense_nll_sum(params, stacks, plan, rows, config, prefix=None):
    """Summed answer-token NLL of the one adapter in ``plan``, folded into W; ``rows`` ``[chunks, E_c, T]``,
    after the shared ``prefix [P]`` when given (``split_prefix``: run once, its cache copied to each chunk)."""
    folded = fold_adapter(params, stacks, plan)
    if prefix is not None:
        (e, t), p = rows["tokens"].shape[1:], prefix.shape[0]
        caches = prefix_caches(folded, prefix, e, p + t, config)  # once per adapter, shared by every chunk
        positions = p + jnp.broadcast_to(jnp.arange(t), (e, t))

    def chunk(acc, xs):
        if prefix is None:
            lp, w = answer_logprobs(folded, config, xs)
        else:
            valid = jnp.concatenate([jnp.ones((e, p), bool), xs["attention_mask"].astype(bool)], axis=1)
            h, _ = extend(folded, xs["tokens"], positions, caches, valid, p, config)
            lp, w = logprobs_at(folded, h, xs["tokens"], xs["answer_index"], xs["loss_mask"])
        return acc - (lp * w).sum(), None

    return jax.lax.scan(chunk, jnp.zeros((), jnp.float32), rows)[0]


def pool_losses(params: Mapping, config: LlamaConfig, pool: Pool, batch: Mapping[str, np.ndarray], *,
                indices: Sequence[int] | None = None, adapters_per_batch: int = 8, examples_per_step: int = 4,
                application: str = "auto", progress: bool = True) -> np.ndarray:
    """Mean answer-token loss ``[n]`` (float64) of each adapter in ``indices`` (default: all) applied
    alone (Σ s_i B_i A_i) on ``batch`` (``tokens``, ``attention_mask``, ``loss_mask`` ``[E, T]``, the
    next-token convention of ``jaxmerge.tasks.encode``; with its ``answer_index`` the LM head runs at the answer
    positions only). Lower is better. ``application``: ``grouped`` (``adapters_per_batch`` adapters ×
    ``examples_per_step`` examples a forward), ``dense`` (one adapter folded into W, the same number of
    rows a forward) or ``auto`` (the one with fewer multiply-adds, ``scoring_application``)."""
    count = float(np.asarray(batch["loss_mask"]).sum())
    if count == 0:
        raise ValueError("batch has no answer tokens (loss_mask is all zero)")
    stacks = _stack_arrays(pool)
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    n_ex = batch["tokens"].shape[0]
    how = _applications(pool, idx, int(np.asarray(batch["attention_mask"]).sum()), adapters_per_batch, application)
    out = {}
    if how == "dense":
        prefix, rows = split_prefix(batch) if "answer_index" in batch else (np.zeros(0, np.int32), batch)
        ex, ranks = _pad_examples(rows, _even_chunk(n_ex, adapters_per_batch * examples_per_step)), _pool_ranks(pool)
        prefix = jnp.asarray(prefix) if len(prefix) else None
        for i in track(idx.tolist(), desc="score pool (loss, folded)", unit="adapter", enabled=progress):
            out[i] = float(_dense_nll_sum(params, stacks, gather_plan(pool, [i], ranks), ex, config, prefix)) / count
        return np.array([out[int(i)] for i in idx])
    ex = _pad_examples(batch, min(examples_per_step, n_ex))
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
_fold_jit = jax.jit(fold_adapter)


def pool_answers(params: Mapping, config: LlamaConfig, tokenizer, pool: Pool, examples: Sequence[Mapping], *,
                 indices: Sequence[int] | None = None, adapters_per_batch: int = 8, examples_per_step: int = 16,
                 max_new_tokens: int = 30, system: str | None = None, application: str = "auto",
                 progress: bool = True) -> list[list[str]]:
    """Greedy answers ``[n][E]`` (decoded, cut at the first end token, special tokens removed) of each
    adapter alone on ``examples``' prompts (chat template, left-padded); ``application`` as in
    ``pool_losses`` (each prompt and generated token counted once per adapter)."""
    enc = encode(examples, tokenizer, None, with_answer=False, system=system)
    ends, pad = _end_ids(config, tokenizer), pad_id(tokenizer)
    stacks = _stack_arrays(pool)
    idx = np.arange(pool.num_adapters) if indices is None else np.asarray(indices, np.int64)
    tokens = int(enc["attention_mask"].sum()) + len(examples) * max_new_tokens
    out = {}
    if _applications(pool, idx, tokens, adapters_per_batch, application) == "dense":
        e_c = _even_chunk(len(examples), adapters_per_batch * examples_per_step)
        prefix, rows = split_prefix(enc, left=True)
        ex, ranks = _pad_examples(dict(rows, loss_mask=np.zeros_like(rows["tokens"])), e_c), _pool_ranks(pool)
        for i in track(idx.tolist(), desc="score pool (generate, folded)", unit="adapter", enabled=progress):
            folded = _fold_jit(params, stacks, gather_plan(pool, [i], ranks))
            gen = np.concatenate([np.asarray(generate(folded, tok, config, max_new_tokens=max_new_tokens, attention_mask=am,
                                                      eos_token_id=ends, pad_token_id=pad, prefix=prefix))
                                  for tok, am in zip(ex["tokens"], ex["attention_mask"])])[:len(examples)]
            out[i] = [_decode(tokenizer, g, ends) for g in gen]
        return [out[int(i)] for i in idx]
    e_c = min(examples_per_step, len(examples))
    ex = _pad_examples(dict(enc, loss_mask=np.zeros_like(enc["tokens"])), e_c)
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
