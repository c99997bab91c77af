"""Examples → token arrays through the tokenizer's chat template; the answer-only training loss.

A training row is the chat ``[system?, user = prompt, assistant = answer]`` rendered by
``tokenizer.apply_chat_template``; its answer tokens are everything after the rendering of the prompt
with the generation prompt (the answer text and the template's end-of-turn tokens, so the model learns
to stop). The prefix property is checked for every row.

Loss-mask convention (next-token targets): ``loss_mask[i, t] = 1`` iff ``tokens[i, t + 1]`` is an
answer token, i.e. the logits at position t are scored against the next token. The last column is 0.

Padding: right for training/scoring rows (``with_answer=True``), left for prompt-only rows fed to
generation. Lengths are rounded up to a multiple of 8 to bound the number of compiled shapes.

Answer-only LM head: training rows also carry ``answer_index [n, A]``, the positions t with
``loss_mask[i, t] = 1`` (A = the most answer tokens of a row, rounded up to a multiple of 8; the rest
point at the last column, whose mask is 0). ``answer_logprobs`` applies the LM head at those
positions only, so a loss never forms ``[n, T, V]`` logits — with a 49 k or 128 k vocabulary they
are most of a training step's memory. With a fixed ``max_len`` A is T itself, so that batches encoded
with the same ``max_len`` always stack; ``concat_batches`` pads both widths. A batch without
``answer_index`` takes the full-logits path. A batch with ``prefix [P]`` (``shared_prefix``: the chat
template's system turn and a task prefix, which every row of a split shares) holds the rows after it;
the loss runs the prefix once and every row against its cached keys and values.

Einsum-free; shapes: n rows, T tokens, V vocabulary.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..model import forward, hidden_states, lm_head, suffix_hidden_states

PAD_MULTIPLE = 8


def _messages(prompt: str, answer: str | None, system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_text(tokenizer, prompt: str, system: str | None = None) -> str:
    """The rendered prompt with the assistant's generation prompt (the context a model answers from)."""
    return tokenizer.apply_chat_template(_messages(prompt, None, system), tokenize=False, add_generation_prompt=True)


def chat_prefix(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of ``chat_text`` (special tokens come from the template, none are added)."""
    return _ids(tokenizer, chat_text(tokenizer, prompt, system))


def chat_ids(tokenizer, prompt: str, answer: str, system: str | None = None) -> tuple[list[int], int]:
    """(ids of the whole conversation, number of prompt tokens before the answer)."""
    prefix = chat_prefix(tokenizer, prompt, system)
    full = _ids(tokenizer, tokenizer.apply_chat_template(_messages(prompt, answer, system), tokenize=False))
    if full[:len(prefix)] != prefix:
        raise ValueError("the chat template renders the prompt differently with and without the answer; "
                         f"cannot locate the answer tokens (prompt {prompt[:40]!r})")
    return full, len(prefix)


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _round(n: int) -> int:
    return max(PAD_MULTIPLE, -(-n // PAD_MULTIPLE) * PAD_MULTIPLE)


def _truncate(ids: list[int], n_prompt: int, max_len: int, keep_first: bool) -> tuple[list[int], int]:
    """Drop prompt tokens from the left (keeping a leading BOS) so that the row fits ``max_len``."""
    excess = len(ids) - max_len
    if excess <= 0:
        return ids, n_prompt
    head = 1 if keep_first else 0
    if n_prompt - head - excess < 1:
        raise ValueError(f"a row of {len(ids)} tokens ({len(ids) - n_prompt} answer tokens) cannot fit "
                         f"max_len={max_len} by truncating its prompt")
    return ids[:head] + ids[head + excess:], n_prompt - excess


def _pack(rows: list[list[int]], spans: list[tuple[int, int]], max_len: int | None, pad: int,
          left: bool) -> dict[str, np.ndarray]:
    T = max_len if max_len is not None else _round(max(len(r) for r in rows))
    n = len(rows)
    tokens = np.full((n, T), pad, np.int32)
    attn = np.zeros((n, T), np.int32)
    loss = np.zeros((n, T), np.int32)
    for i, (r, (lo, hi)) in enumerate(zip(rows, spans)):
        off = T - len(r) if left else 0
        tokens[i, off:off + len(r)] = r
        attn[i, off:off + len(r)] = 1
        if hi > lo:  # positions whose next token is in [lo, hi)
            loss[i, off + lo - 1:off + hi - 1] = 1
    out = {"tokens": tokens, "attention_mask": attn, "loss_mask": loss}
    if loss.any():
        out["answer_index"] = answer_index(loss, T if max_len is not None else None)
    return out


def answer_index(loss_mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """``[n, A]`` int32: each row's loss positions, then the last column (mask 0 by convention);
    A = ``width`` or the most loss positions of a row rounded up to a multiple of 8."""
    n, T = loss_mask.shape
    A = width if width is not None else _round(int(loss_mask.sum(axis=1).max()))
    idx = np.full((n, A), T - 1, np.int32)
    for i, row in enumerate(loss_mask):
        pos = np.flatnonzero(row)
        idx[i, :len(pos)] = pos
    return idx


def encode(examples: Sequence[Mapping], tokenizer, max_len: int | None, *, with_answer: bool = True,
           system: str | None = None) -> dict[str, np.ndarray]:
    """Rows ``{"prompt", "answer"}`` → ``tokens``, ``attention_mask``, ``loss_mask``: int32 ``[n, T]``.

    ``with_answer``: whole conversations, right-padded, loss on the answer tokens (see module docstring);
    otherwise prompts with the generation prompt, left-padded, ``loss_mask`` all 0. ``max_len=None``
    pads to the longest row (rounded up to a multiple of 8); longer rows lose prompt tokens from the
    left (a warning counts them).
    """
    if not examples:
        raise ValueError("encode: no examples")
    bos = tokenizer.bos_token_id
    rows, spans, cut = [], [], 0
    for ex in examples:
        if with_answer:
            ids, n_prompt = chat_ids(tokenizer, ex["prompt"], ex["answer"], system)
        else:
            ids = chat_prefix(tokenizer, ex["prompt"], system)
            n_prompt = len(ids)
        if max_len is not None and len(ids) > max_len:
            ids, n_prompt = _truncate(ids, n_prompt, max_len, keep_first=bos is not None and ids[0] == bos)
            cut += 1
        rows.append(ids)
        spans.append((n_prompt, len(ids)) if with_answer else (0, 0))
    if cut:
        warnings.warn(f"encode: {cut} of {len(rows)} rows longer than max_len={max_len}; prompts truncated on the left")
    return _pack(rows, spans, max_len, pad_id(tokenizer), left=not with_answer)


def common_prefix(rows: Sequence[Sequence[int]], width: int | None = None) -> int:
    """The number of leading tokens every row shares, at most ``width`` (default: each row keeps ≥ 1 token)."""
    width = min(map(len, rows)) - 1 if width is None else width
    if width <= 0:
        return 0
    head = np.asarray([r[:width] for r in rows])
    return int(np.argmin(np.append((head == head[:1]).all(0), False)))


def split_prefix(batch: Mapping[str, np.ndarray], *, left: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(``prefix [P]``, the rows after it): P = the most leading tokens every row shares (the chat template's
    system turn, a task prefix), computed once per model instead of once per row. Every row keeps ≥ 1 token
    and every scored position stays in the suffix. ``left``: rows left-padded (generation prompts), else
    right-padded; the suffix rows are padded the same way to a multiple of 8, with ``loss_mask`` and
    ``answer_index`` (when the batch has them) re-derived at suffix positions (position t of a row ↔ t − P)."""
    tokens, attn = np.asarray(batch["tokens"]), np.asarray(batch["attention_mask"]).astype(bool)
    n, T = tokens.shape
    lens = attn.sum(1)
    first = T - lens if left else np.zeros(n, np.int64)
    width = int(lens.min()) - 1
    if "loss_mask" in batch and np.asarray(batch["loss_mask"]).any():
        loss = np.asarray(batch["loss_mask"])
        width = min(width, min(int(np.flatnonzero(r)[0]) - f for r, f in zip(loss, first) if r.any()))
    P = common_prefix([tokens[i, first[i]:first[i] + lens[i]] for i in range(n)], width)
    Ts = min(_round(int(lens.max()) - P), T - P)
    cols = np.arange(Ts)
    keep = (cols[None] >= Ts - (lens - P)[:, None]) if left else (cols[None] < (lens - P)[:, None])
    src = np.broadcast_to((T - Ts + cols) if left else np.minimum(P + cols, T - 1), (n, Ts))
    pad = tokens[~attn][0] if (~attn).any() else tokens[0, -1]
    out = {"tokens": np.where(keep, np.take_along_axis(tokens, src, 1), pad).astype(np.int32),
           "attention_mask": keep.astype(np.int32)}
    if "loss_mask" in batch:
        out["loss_mask"] = np.where(keep, np.take_along_axis(np.asarray(batch["loss_mask"]), src, 1), 0).astype(np.int32)
        if "answer_index" in batch:
            out["answer_index"] = answer_index(out["loss_mask"])
    return tokens[0, first[0]:first[0] + P].astype(np.int32), out


def shared_prefix(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A right-padded training batch with the leading tokens all its rows share (``split_prefix``) moved to
    ``batch["prefix"] [P]``: ``answer_logprobs`` then runs them once per batch instead of once per row. Any
    subset of the rows shares that prefix too. Unchanged (a copy) when the rows share nothing, the batch has
    no ``answer_index`` (the full-logits path) or already has a prefix."""
    if "prefix" in batch or "answer_index" not in batch:
        return dict(batch)
    prefix, rows = split_prefix(batch)
    return {**rows, "prefix": prefix} if len(prefix) else dict(batch)


def concat_batches(*batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of several encoded batches in one: tokens etc. right-padded to the longest T, answer
    indices padded with position 0 (never an answer position). Keys must agree."""
    T = max(np.asarray(b["tokens"]).shape[1] for b in batches)
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise ValueError(f"concat_batches: the batches have different keys {[sorted(b) for b in batches]}")
    out = {}
    for k in batches[0]:
        parts = [np.asarray(b[k]) for b in batches]
        width = T if k != "answer_index" else max(p.shape[1] for p in parts)
        out[k] = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts])
    return out


def encode_choices(examples: Sequence[Mapping], tokenizer, max_len: int | None = None, *,
                   system: str | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (example, choice) pair as one right-padded row, lm-evaluation-harness style: context =
    the rendered prompt with generation prompt, continuation = the choice text; the continuation's
    tokens are those of ``tok(context + choice)`` after ``len(tok(context))``. ``loss_mask`` marks them
    (next-token convention). Returns the batch and ``owner [rows]`` (example index of each row)."""
    bos = tokenizer.bos_token_id
    rows, spans, owner = [], [], []
    for i, ex in enumerate(examples):
        if not ex.get("choices"):
            raise ValueError(f"example {i} has no choices; the loglik protocol needs them")
        ctx = chat_text(tokenizer, ex["prompt"], system)
        n_ctx = len(_ids(tokenizer, ctx))
        for choice in ex["choices"]:
            whole = _ids(tokenizer, ctx + choice)
            if len(whole) <= n_ctx:
                raise ValueError(f"choice {choice!r} of example {i} adds no tokens")
            n_prompt = n_ctx
            if max_len is not None and len(whole) > max_len:
                whole, n_prompt = _truncate(whole, n_ctx, max_len, keep_first=bos is not None and whole[0] == bos)
            rows.append(whole)
            spans.append((n_prompt, len(whole)))
            owner.append(i)
    return _pack(rows, spans, max_len, pad_id(tokenizer), left=False), np.asarray(owner, np.int64)


def token_logprobs(params, config, tokens: jax.Array, attention_mask: jax.Array, adapters=None,
                   remat: bool = False) -> jax.Array:
    """``[n, T]`` float32: log p(tokens[:, t+1] | tokens[:, ≤t]) at position t; the last column is 0."""
    logits = forward(params, tokens, config, adapters=adapters, attention_mask=attention_mask, remat=remat)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.pad(picked, ((0, 0), (0, 1)))


def answer_logprobs(params, config, batch: Mapping[str, jax.Array], adapters=None,
                    remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(log-probabilities of the scored next tokens, their 0/1 weights): ``[n, A]`` at
    ``batch["answer_index"]`` with the LM head applied there only, else ``[n, T]`` from full logits."""
    tokens, mask = batch["tokens"], batch["loss_mask"].astype(jnp.float32)
    if "answer_index" not in batch:
        return token_logprobs(params, config, tokens, batch["attention_mask"], adapters, remat), mask
    if "prefix" in batch:
        h = suffix_hidden_states(params, batch["prefix"], tokens, config, adapters=adapters,
                                 attention_mask=batch["attention_mask"], remat=remat)
    else:
        h = hidden_states(params, tokens, config, adapters=adapters, attention_mask=batch["attention_mask"], remat=remat)
    return logprobs_at(params, h, tokens, batch["answer_index"], mask)


def logprobs_at(params, h: jax.Array, tokens: jax.Array, answer_index: jax.Array, loss_mask: jax.Array):
    """``answer_logprobs`` from the final hidden states ``h [n, T, D]`` of ``tokens [n, T]``: the LM head at
    ``answer_index [n, A]`` only → (log p of each next token ``[n, A]``, its ``loss_mask`` weight ``[n, A]``)."""
    idx = jnp.asarray(answer_index, jnp.int32)
    logits = lm_head(params, jnp.take_along_axis(h, idx[..., None], axis=1))                 # [n, A, V] float32
    nxt = jnp.take_along_axis(tokens, jnp.minimum(idx + 1, tokens.shape[1] - 1), axis=1).astype(jnp.int32)
    picked = jnp.take_along_axis(logits, nxt[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1), jnp.take_along_axis(loss_mask.astype(jnp.float32), idx, axis=1)


def answer_loss(params, config, batch: Mapping[str, jax.Array], adapters=None, remat: bool = False) -> jax.Array:
    """Mean cross-entropy over ``batch["loss_mask"]`` tokens (a scalar; pure and jittable with
    ``config`` static). ``batch`` is ``encode(..., with_answer=True)``'s output."""
    lp, w = answer_logprobs(params, config, batch, adapters, remat)
    return -jnp.sum(lp * w) / jnp.maximum(jnp.sum(w), 1.0)
