"""The two evaluation protocols, per example (0/1 vectors, prediction rows) and as accuracies.

* generation (the paper's): chat template, greedy decoding with ``jaxmerge.generate`` (KV cache; the
  tokens every prompt starts with run once per batch),
  the continuation cut at the first end token, decoded without special tokens, exact match after
  ``normalize`` (lower-case, strip spaces and '.') against any of the example's accepted answers.
* log-likelihood (lm-evaluation-harness's ``acc``): the summed log-probability of each choice's
  continuation tokens given the rendered prompt; correct iff the argmax (first on ties) is a gold
  choice. The shared prompt is encoded once per example (``jaxmerge.tasks.choices``);
  ``shared_prompt=False`` scores one full row per choice instead (the reference it is tested against).

``predictions`` returns one row per example with exactly what was scored — the rendered prompt (chat
template applied), for multiple choice each choice as appended to it and its score, the prediction,
the golds and whether it was correct — so that the evaluation can be checked with another tool.
``adapters`` (the forward's LoRA deltas, see ``jaxmerge.lora``) apply to every row. Batches are padded
to ``batch_size`` rows and to one shared length so that each call compiles once.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import numpy as np

from ..generate import generate
from .choices import shared_prompt_scores
from ..lora import grouped
from .encode import chat_text, encode, encode_choices, pad_id, split_prefix, token_logprobs
from .spec import PROTOCOLS, normalize


def _batches(n: int, batch_size: int):
    for lo in range(0, n, batch_size):
        yield lo, min(lo + batch_size, n)


def _pad_rows(arr: np.ndarray, rows: int) -> np.ndarray:
    """Pad a batch to ``rows`` rows by repeating its first row (results of pad rows are dropped)."""
    if arr.shape[0] == rows:
        return arr
    return np.concatenate([arr, np.repeat(arr[:1], rows - arr.shape[0], axis=0)])


def _end_ids(config, tokenizer) -> tuple[int, ...]:
    ids = tuple(config.eos_token_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = ids + (int(tokenizer.eos_token_id),)
    return ids


def golds(ex: Mapping) -> list[str]:
    """The accepted answers of an example (``golds``, else its ``answer``)."""
    return list(ex.get("golds") or [ex["answer"]])


def matches(prediction: str, ex: Mapping) -> bool:
    """Exact match after ``normalize`` against any accepted answer."""
    return normalize(prediction) in {normalize(g) for g in golds(ex)}


def generate_answers(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                     batch_size: int = 32, max_new_tokens: int = 30, system: str | None = None) -> list[str]:
    """Greedy answers (decoded text, special tokens removed) for ``examples``' prompts."""
    enc = encode(examples, tokenizer, None, with_answer=False, system=system)
    # the tokens every prompt starts with (system turn, task prefix) run once per batch, not once per row
    prefix, enc = split_prefix(enc, left=True) if not grouped(adapters) else (None, enc)
    ends = _end_ids(config, tokenizer)
    out: list[str] = []
    for lo, hi in _batches(len(examples), batch_size):
        toks = _pad_rows(enc["tokens"][lo:hi], batch_size)
        mask = _pad_rows(enc["attention_mask"][lo:hi], batch_size)
        gen = np.asarray(generate(params, toks, config, max_new_tokens=max_new_tokens, attention_mask=mask,
                                  adapters=adapters, eos_token_id=ends, pad_token_id=pad_id(tokenizer), prefix=prefix))
        for row in gen[:hi - lo]:
            stop = [j for j, t in enumerate(row) if int(t) in ends]
            ids = row[:stop[0]] if stop else row
            out.append(tokenizer.decode([int(t) for t in ids], skip_special_tokens=True))
    return out


def generate_correct(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                     batch_size: int = 32, max_new_tokens: int = 30, system: str | None = None) -> np.ndarray:
    """``[n]`` float32 0/1: the normalised greedy answer equals a normalised accepted answer."""
    preds = generate_answers(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, system=system)
    return np.asarray([matches(p, ex) for p, ex in zip(preds, examples)], np.float32)


def evaluate_generate(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                      batch_size: int = 32, max_new_tokens: int = 30, system: str | None = None) -> float:
    """Exact-match accuracy of greedy generation (the paper's protocol)."""
    return float(np.mean(generate_correct(params, config, tokenizer, examples, adapters=adapters,
                                          batch_size=batch_size, max_new_tokens=max_new_tokens, system=system)))


@functools.partial(jax.jit, static_argnames=("config",))
def _summed_logprobs(params, tokens, attention_mask, loss_mask, adapters, config):
    return (token_logprobs(params, config, tokens, attention_mask, adapters) * loss_mask).sum(axis=1)


def per_choice_scores(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                      batch_size: int = 32, system: str | None = None) -> list[np.ndarray]:
    """``loglik_scores`` with one full (prompt + choice) row per choice: the plain reference."""
    enc, owner = encode_choices(examples, tokenizer, None, system=system)
    sums = []
    for lo, hi in _batches(len(owner), batch_size):
        part = {k: _pad_rows(enc[k][lo:hi], batch_size) for k in ("tokens", "attention_mask", "loss_mask")}
        s = _summed_logprobs(params, part["tokens"], part["attention_mask"], part["loss_mask"].astype(np.float32),
                             adapters, config)
        sums.append(np.asarray(s)[:hi - lo])
    flat = np.concatenate(sums)
    return [flat[owner == i] for i in range(len(examples))]


def loglik_scores(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                  batch_size: int = 32, system: str | None = None, shared_prompt: bool = True) -> list[np.ndarray]:
    """Per example, the summed log-likelihood of each choice's continuation tokens (float32 ``[C_i]``)."""
    if shared_prompt:
        return shared_prompt_scores(params, config, tokenizer, examples, adapters=adapters, system=system,
                                    rows_per_call=max(batch_size, 2))
    return per_choice_scores(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                             system=system)


def loglik_correct(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                   batch_size: int = 32, system: str | None = None) -> np.ndarray:
    """``[n]`` float32 0/1: the highest-scoring choice is a gold one (lm-eval ``acc``)."""
    scores = loglik_scores(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                           system=system)
    return np.asarray([ex["choices"][int(np.argmax(s))] in golds(ex) for s, ex in zip(scores, examples)], np.float32)


def evaluate_loglik(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                    batch_size: int = 32, system: str | None = None) -> float:
    """Multiple-choice accuracy by summed log-likelihood (lm-evaluation-harness ``acc``)."""
    return float(np.mean(loglik_correct(params, config, tokenizer, examples, adapters=adapters,
                                        batch_size=batch_size, system=system)))


def predictions(params, config, tokenizer, examples: Sequence[Mapping], protocol: str = "generate", *,
                adapters=None, batch_size: int = 32, max_new_tokens: int = 30, system: str | None = None) -> list[dict]:
    """One row per example: ``index``, ``prompt`` (the rendered chat text the model saw), for
    "loglik" ``choices`` (each exactly as appended to ``prompt``) and their ``scores``, ``prediction``,
    ``gold`` (the training answer), ``golds`` (every accepted answer) and ``correct``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    rows = [{"index": i, "prompt": chat_text(tokenizer, ex["prompt"], system)} for i, ex in enumerate(examples)]
    if protocol == "generate":
        preds = generate_answers(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, system=system)
        for row, ex, p in zip(rows, examples, preds):
            row.update(prediction=p, gold=ex["answer"], golds=golds(ex), correct=bool(matches(p, ex)))
        return rows
    scores = loglik_scores(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                           system=system)
    for row, ex, s in zip(rows, examples, scores):
        pred = ex["choices"][int(np.argmax(s))]
        row.update(choices=list(ex["choices"]), scores=[float(x) for x in s], prediction=pred, gold=ex["answer"],
                   golds=golds(ex), correct=pred in golds(ex))
    return rows


def evaluate(params, config, tokenizer, examples: Sequence[Mapping], protocol: str = "generate", *,
             adapters=None, batch_size: int = 32, max_new_tokens: int = 30, system: str | None = None,
             per_example: bool = False):
    """Dispatch on ``protocol`` ("generate" | "loglik"); accuracy, or the 0/1 vector with ``per_example``."""
    if protocol == "generate":
        c = generate_correct(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, system=system)
    elif protocol == "loglik":
        c = loglik_correct(params, config, tokenizer, examples, adapters=adapters, batch_size=batch_size,
                           system=system)
    else:
        raise ValueError(f"protocol {protocol!r}: expected 'generate' or 'loglik'")
    return c if per_example else float(np.mean(c))
