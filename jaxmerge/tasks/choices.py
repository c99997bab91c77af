"""Multiple-choice scoring with the shared prompt encoded once per example, not once per choice.

The log-likelihood protocol (lm-evaluation-harness ``acc``) scores each choice's continuation tokens
``tok(context + choice)[len(tok(context)):]`` after the rendered prompt. Per example the context is
run once through the decoder, filling a KV cache; every choice then runs only its own tokens against
that cache (gathered per choice row), at positions continuing the context. The LM head is applied at
the continuation positions only (the first continuation token is predicted from the context's last
hidden state). Equal to scoring one full row per choice (``encode.encode_choices``) up to float
rounding; the cost of a prompt of P tokens with C choices of c tokens falls from C·(P + c) to P + C·c
token passes. The tokens every context of the task starts with (the chat template's system turn, a task
prefix: Q of them) run once per call and their cache is copied to each context, so n examples cost
Q + n·(P − Q + C·c).

Batches: ``n`` examples per call, their choices padded to ``m`` rows (unused rows score 0 and are
dropped); context length ``P`` and continuation length ``c`` rounded up to a multiple of 8, so
that a task compiles a handful of shapes.

Einsum-free; shapes: L layers, G kv heads, K head dim, D model dim, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..model import _decoder, attention_masks, check_params, empty_caches, lm_head, prefix_caches, rope_cos_sin
from .encode import _ids, _round, chat_text, common_prefix, pad_id

ROWS_PER_CALL = 64  # choice rows per call: examples per call = ROWS_PER_CALL // (most choices of the task)


def encode_shared(examples: Sequence[Mapping], tokenizer, system: str | None = None) -> dict:
    """``{"contexts": [ids], "continuations": [[ids per choice]]}`` with the prefix property checked."""
    contexts, conts = [], []
    for i, ex in enumerate(examples):
        if not ex.get("choices"):
            raise ValueError(f"example {i} has no choices; the loglik protocol needs them")
        ctx = chat_text(tokenizer, ex["prompt"], system)
        ids = _ids(tokenizer, ctx)
        rows = []
        for choice in ex["choices"]:
            whole = _ids(tokenizer, ctx + choice)
            if whole[:len(ids)] != ids:
                raise ValueError(f"example {i}: the tokens of prompt + {choice!r} do not start with the prompt's "
                                 "tokens; the shared-prompt scorer needs that prefix property")
            if len(whole) == len(ids):
                raise ValueError(f"choice {choice!r} of example {i} adds no tokens")
            rows.append(whole[len(ids):])
        contexts.append(ids)
        conts.append(rows)
    return {"contexts": contexts, "continuations": conts}


@functools.partial(jax.jit, static_argnames=("config",))
def _scores(params, prefix, ctx, ctx_mask, cont, cont_mask, owner, adapters, config):
    """Summed log-probability of each continuation row ``[m]``.

    prefix ``[Q]``: the tokens every context starts with (run once, its cache copied to each context);
    ctx, ctx_mask: ``[n, P]`` the right-padded rest of the contexts; cont, cont_mask: ``[m, c]`` right-padded
    continuations; owner ``[m]``: the context row of each continuation. Cache entries: prefix 0..Q-1,
    context Q..Q+P-1, continuation Q+P…
    """
    check_params(params, config)
    Q = prefix.shape[0]
    n, P = ctx.shape
    m, c = cont.shape
    valid = jnp.concatenate([jnp.ones((n, Q), bool), ctx_mask.astype(bool)], axis=1)          # [n, Q + P]
    if Q:
        caches = prefix_caches(params, prefix, n, Q + P, config, adapters)
    else:
        caches = empty_caches(config, n, P, params["embed_tokens"].dtype)
    positions = Q + jnp.broadcast_to(jnp.arange(P), (n, P))
    cos, sin = rope_cos_sin(positions, config, params["embed_tokens"].dtype)
    h, caches = _decoder(params, params["embed_tokens"][ctx], cos, sin,
                         attention_masks(Q + jnp.arange(P), valid, config), config, adapters, False, caches, Q)
    n_ctx = jnp.sum(ctx_mask, axis=1).astype(jnp.int32)                                  # [n]
    last = jnp.take_along_axis(h, jnp.maximum(n_ctx - 1, 0)[:, None, None], axis=1)[:, 0]  # [n, D]
    # every continuation row attends to its own context's cache, then to its own tokens
    G, K = config.num_key_value_heads, config.head_dim
    pad = jnp.zeros((config.num_hidden_layers, m, c, G, K), caches[0].dtype)
    row_caches = tuple(jnp.concatenate([x[:, owner], pad], axis=2) for x in caches)    # [L, m, Q + P + c, G, K]
    key_valid = jnp.concatenate([valid[owner], cont_mask.astype(bool)], axis=1)          # [m, Q + P + c]
    positions = Q + n_ctx[owner][:, None] + jnp.arange(c)[None, :]
    cos, sin = rope_cos_sin(positions, config, params["embed_tokens"].dtype)
    hc, _ = _decoder(params, params["embed_tokens"][cont], cos, sin,
                     attention_masks(Q + P + jnp.arange(c), key_valid, config), config, adapters, False, row_caches,
                     Q + P)
    before = jnp.concatenate([last[owner][:, None], hc[:, :-1]], axis=1)                 # [m, c, D]: predicts cont
    logits = lm_head(params, before)                                                     # [m, c, V] float32
    picked = jnp.take_along_axis(logits, cont[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = picked - jax.nn.logsumexp(logits, axis=-1)
    return jnp.sum(logp * cont_mask, axis=1)


def _pack(rows: Sequence[Sequence[int]], n: int, length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((n, length), pad, np.int32)
    mask = np.zeros((n, length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def shared_prompt_scores(params, config, tokenizer, examples: Sequence[Mapping], *, adapters=None,
                         system: str | None = None, rows_per_call: int = ROWS_PER_CALL) -> list[np.ndarray]:
    """Per example, the summed log-likelihood of each choice's continuation (float32 ``[C_i]``)."""
    enc = encode_shared(examples, tokenizer, system)
    Q = common_prefix(enc["contexts"])  # the chat template's system turn and the task prefix: run once per call
    prefix = jnp.asarray(enc["contexts"][0][:Q], jnp.int32)
    contexts = [x[Q:] for x in enc["contexts"]]
    most = max(len(r) for r in enc["continuations"])
    per_call = max(1, rows_per_call // most)
    P = _round(max(map(len, contexts)))
    c = _round(max(len(x) for rows in enc["continuations"] for x in rows))
    pad = pad_id(tokenizer)
    out: list[np.ndarray] = []
    for lo in range(0, len(examples), per_call):
        hi = min(lo + per_call, len(examples))
        ctx, ctx_mask = _pack(contexts[lo:hi], per_call, P, pad)
        conts = [x for rows in enc["continuations"][lo:hi] for x in rows]
        owner = np.zeros(per_call * most, np.int32)
        owner[:len(conts)] = [j for j, rows in enumerate(enc["continuations"][lo:hi]) for _ in rows]
        cont, cont_mask = _pack(conts, per_call * most, c, pad)
        s = np.asarray(_scores(params, prefix, ctx, ctx_mask, cont, cont_mask, owner, adapters, config))
        k = 0
        for rows in enc["continuations"][lo:hi]:
            out.append(s[k:k + len(rows)])
            k += len(rows)
    return out
