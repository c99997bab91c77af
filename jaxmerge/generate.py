"""Greedy decoding with a KV cache, for generation-style evaluation.

Prompts are left-padded ``[B, T]`` with ``attention_mask`` (as transformers expects for decoder-only
generation). The cache is ``[L, B, T + N, G, K]`` for keys and for values; the prompt is prefilled in
one pass, then each step feeds one token, for at most N steps and until every row has produced an end
token; rows that produced one emit ``pad_id`` afterwards, like transformers' ``generate``. With a
``prefix`` every row shares (``jaxmerge.tasks.encode.split_prefix``: the chat template's system turn and
a task prefix), the prefix runs once and its cache entries are copied to every row.

Einsum letters as in ``jaxmerge.model``.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .lora import Adapters, grouped
from .model import default_positions, empty_caches, extend, lm_head, prefix_caches


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_ids", "pad_id"))
def _generate(params, tokens, attention_mask, adapters, config, max_new_tokens, eos_ids, pad_id, prefix=None):
    b, t = tokens.shape
    p = 0 if prefix is None else prefix.shape[0]
    total = p + t + max_new_tokens
    dtype = params["embed_tokens"].dtype
    key_valid = jnp.zeros((b, total), bool).at[:, p:p + t].set(attention_mask.astype(bool))
    if p:  # the shared prefix once, its cache entries copied to every row
        caches = prefix_caches(params, prefix, b, total, config, adapters)
        key_valid = key_valid.at[:, :p].set(True)
    else:
        caches = empty_caches(config, b, total, dtype)

    def step(tok, pos, caches, key_valid, index):
        h, caches = extend(params, tok, pos, caches, key_valid, index, config, adapters)
        return jnp.argmax(lm_head(params, h[:, -1]), axis=-1).astype(tokens.dtype), caches

    positions = p + default_positions(tokens, attention_mask)
    nxt, caches = step(tokens, positions, caches, key_valid, p)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), tokens.dtype)

    # A while loop, not a scan: decoding stops once every row has emitted an end token (as transformers'
    # generate does), so a short answer costs its own length, not max_new_tokens steps.
    def cond(carry):
        i, _, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tok, pos, caches, key_valid, done, out = carry
        tok = jnp.where(done, pad_id, tok)
        done = done | jnp.isin(tok, eos)
        out = out.at[:, i].set(tok)
        key_valid = key_valid.at[:, p + t + i].set(True)
        nxt, caches = step(tok[:, None], pos[:, None], caches, key_valid, p + t + i)
        return i + 1, nxt, pos + 1, caches, key_valid, done, out

    out = jnp.full((b, max_new_tokens), pad_id, tokens.dtype)
    init = (jnp.int32(0), nxt, positions[:, -1] + 1, caches, key_valid, jnp.zeros((b,), bool), out)
    return jax.lax.while_loop(cond, body, init)[-1]


def generate(params: Mapping, tokens: jax.Array, config: ModelConfig, *, max_new_tokens: int = 30,
             attention_mask: jax.Array | None = None, adapters: Adapters | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             prefix: jax.Array | None = None) -> jax.Array:
    """Greedy continuation ``[B, max_new_tokens]`` of left-padded prompts ``[B, T]`` (jitted).

    ``eos_token_id`` defaults to the config's; after it a row emits ``pad_token_id`` (default: the
    config's pad id, else the first end id, else 0). ``prefix [P]``: tokens that precede every row's
    prompt (``jaxmerge.tasks.encode.split_prefix``), run once and shared; ``adapters`` must then be one
    delta for all rows (not grouped per row).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
    if eos_token_id is None:
        eos_ids = tuple(config.eos_token_id)
    else:
        eos_ids = tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else (int(eos_token_id),)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if prefix is not None and grouped(adapters):
        raise ValueError("generate: a shared prefix needs adapters common to all rows, not grouped per row")
    prefix = None if prefix is None or len(prefix) == 0 else jnp.asarray(prefix, jnp.int32)
    return _generate(params, tokens, jnp.asarray(attention_mask), adapters, config, int(max_new_tokens),
                     eos_ids, int(pad_token_id), prefix)
