"""The shared decoder of every family: ``forward(params, tokens, config, adapters=...) -> logits``.

Parameters are a plain dict pytree with Hugging Face's names and layouts (``nn.Linear.weight`` is
``[out, in]``), the per-layer weights stacked on a leading layer axis so that the decoder is one
``lax.scan``; the family's schema (``jaxmerge.models``) declares every leaf:

    {"embed_tokens": [V, D], "norm": [D], "lm_head": [V, D] (absent when tied),
     "layers": {"input_layernorm": [L, D], "post_attention_layernorm": [L, D],
                "self_attn": {"q_proj": [L, H·K, D], "k_proj": [L, G·K, D], "v_proj": [L, G·K, D],
                              "o_proj": [L, D, H·K],
                              "q_norm", "k_norm": [L, K]                       (Qwen3)
                              "q_proj_bias": [L, H·K], "k/v_proj_bias": [L, G·K]  (Qwen2)},
                "mlp": {"gate_proj": [L, F, D], "up_proj": [L, F, D], "down_proj": [L, D, F]}}}

A family's features are its schema's leaves (q/k norms, biases) and its config's sliding window:
one decoder, no per-family copies. RoPE is transformers' rotate-half form, so checkpoints and LoRA
factors map without permutation. Numerics follow ``modeling_llama.py`` / ``modeling_qwen3.py``:
RMSNorm in float32 then cast back before the weight, softmax in float32, cos/sin computed in float32
and cast to the activation dtype.

Einsum letters: b batch, t query tokens, s key tokens, d model dim, h query heads per kv head
(group), g kv heads, k head dim, v vocab.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig, RopeConfig
from .lora import Adapters, apply_linear, layer_major
from .models import schema_of
from .models.schema import BLOCK

NEG_INF = -1e30  # finite: a fully masked row (padding queries) gives a uniform, not a NaN, softmax


# --- rotary embeddings --------------------------------------------------------------------------
def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies ``[K/2]`` (float32), with llama3 frequency-dependent scaling."""
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    if rope.rope_type == "llama3":
        l0 = rope.original_max_position_embeddings
        low_wl, high_wl = l0 / rope.low_freq_factor, l0 / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / rope.factor, inv)
        smooth = (l0 / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_cos_sin(positions: jax.Array, config: ModelConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin ``[B, T, K]`` for integer positions ``[B, T]``."""
    inv = jnp.asarray(rope_inv_freq(config.rope, config.head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def _apply_rope(x, cos, sin):  # x: [B, T, heads, K]; cos/sin: [B, T, K]
    return x * cos[:, :, None, :] + _rotate_half(x) * sin[:, :, None, :]


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return w * h.astype(x.dtype)


# --- one decoder layer ---------------------------------------------------------------------------
def _attention(q, k, v, mask):
    """q: [B, T, G·H, K]; k, v: [B, S, G, K]; mask: [B, T, S] bool → [B, T, G·H·K]."""
    b, t, nq, kd = q.shape
    g = k.shape[2]
    q = q.reshape(b, t, g, nq // g, kd)
    scores = jnp.einsum("btghk,bsgk->bghts", q, k, preferred_element_type=jnp.float32) / math.sqrt(kd)
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bghts,bsgk->btghk", probs, v)
    return out.reshape(b, t, nq * kd)


def _layer(x, p, deltas, cos, sin, mask, config: ModelConfig, cache=None, index=None):
    """One decoder block. x: [B, T, D]; p: this layer's params; deltas: {module: tuple of deltas}.

    With ``cache=(k_cache, v_cache)`` of ``[B, S, G, K]`` the new keys/values are written at
    ``index`` and attention runs over the whole cache; returns (x, new_cache).
    """
    def lin(h, name):
        block = p[BLOCK[name]]
        return apply_linear(h, block[name], deltas.get(name, ()), block.get(f"{name}_bias"))

    attn = p["self_attn"]
    b, t, _ = x.shape
    h = rms_norm(x, p["input_layernorm"], config.rms_norm_eps)
    q = lin(h, "q_proj").reshape(b, t, config.num_attention_heads, config.head_dim)
    k = lin(h, "k_proj").reshape(b, t, config.num_key_value_heads, config.head_dim)
    v = lin(h, "v_proj").reshape(b, t, config.num_key_value_heads, config.head_dim)
    if "q_norm" in attn:  # Qwen3: RMSNorm of every head over head_dim, before RoPE
        q, k = rms_norm(q, attn["q_norm"], config.rms_norm_eps), rms_norm(k, attn["k_norm"], config.rms_norm_eps)
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    if cache is not None:
        k_cache = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
        k, v, cache = k_cache, v_cache, (k_cache, v_cache)
    x = x + lin(_attention(q, k, v, mask), "o_proj")
    h = rms_norm(x, p["post_attention_layernorm"], config.rms_norm_eps)
    h = jax.nn.silu(lin(h, "gate_proj")) * lin(h, "up_proj")
    return x + lin(h, "down_proj"), cache


def _decoder(params, x, cos, sin, masks, config, adapters, remat, caches=None, index=None):
    """Scan the stacked layers. ``masks`` from ``attention_masks``. Returns final-normed hidden states
    and the updated caches."""
    full, windowed = masks
    sliding = np.zeros(config.num_hidden_layers, bool)
    sliding[list(config.sliding_layers)] = True
    mixed = windowed is not None and not sliding.all()

    def body(h, xs):
        p, deltas, cache, slides = xs
        mask = full if windowed is None else windowed if not mixed else jnp.where(slides, windowed, full)
        h, cache = _layer(h, p, deltas, cos, sin, mask, config, cache, index)
        return h, cache

    if remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    xs = (params["layers"], layer_major(adapters), caches, jnp.asarray(sliding) if mixed else None)
    x, caches = jax.lax.scan(body, x, xs)
    return rms_norm(x, params["norm"], config.rms_norm_eps), caches


# --- entry points ---------------------------------------------------------------------------------
def default_positions(tokens: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """Positions ``[B, T]``: 0.. for each row's first real token (left padding skipped)."""
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)


def causal_mask(q_index: jax.Array, key_valid: jax.Array, window: int | None = None) -> jax.Array:
    """``[B, T, S]``: key s visible to query t iff s ≤ q_index[t] (and q_index[t] − window < s with a
    sliding window, as transformers counts it) and the key is a real token."""
    s = jnp.arange(key_valid.shape[1])
    ok = s[None, None, :] <= q_index[None, :, None]
    if window is not None:
        ok = ok & (s[None, None, :] > q_index[None, :, None] - window)
    return ok & key_valid[:, None, :].astype(bool)


def attention_masks(q_index: jax.Array, key_valid: jax.Array, config: ModelConfig) -> tuple:
    """(full causal mask, windowed mask or None): the masks the decoder's layers choose from."""
    windowed = causal_mask(q_index, key_valid, config.sliding_window) if config.sliding_layers else None
    return (causal_mask(q_index, key_valid) if windowed is None or len(config.sliding_layers)
            < config.num_hidden_layers else None), windowed


def check_params(params: Mapping, config: ModelConfig) -> None:
    """The params tree has exactly the leaves of the config's schema (checked once per trace)."""
    want = {leaf.path for leaf in schema_of(config).leaves}
    have = {tuple(getattr(k, "key", k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise ValueError(f"params do not fit a {config.family} model: missing {['/'.join(p) for p in missing]}, "
                         f"unexpected {['/'.join(p) for p in extra]}")


def hidden_states(params: Mapping, tokens: jax.Array, config: ModelConfig, *, adapters: Adapters | None = None,
                  attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                  remat: bool = False) -> jax.Array:
    """Final normed hidden states ``[B, T, D]`` (the input of the LM head)."""
    if positions is None:
        positions = default_positions(tokens, attention_mask)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    check_params(params, config)
    x = params["embed_tokens"][tokens]
    cos, sin = rope_cos_sin(positions, config, x.dtype)
    masks = attention_masks(jnp.arange(tokens.shape[1]), attention_mask, config)
    h, _ = _decoder(params, x, cos, sin, masks, config, adapters, remat)
    return h


def empty_caches(config: ModelConfig, batch: int, length: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Zero key and value caches ``[L, batch, length, G, K]`` for ``extend``."""
    shape = (config.num_hidden_layers, batch, length, config.num_key_value_heads, config.head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def extend(params: Mapping, tokens: jax.Array, positions: jax.Array, caches: tuple, key_valid: jax.Array,
           index, config: ModelConfig, adapters: Adapters | None = None, remat: bool = False) -> tuple[jax.Array, tuple]:
    """Run ``tokens [B, T]`` (at rope ``positions [B, T]``) as cache entries ``index .. index+T-1``: their keys
    and values are written into ``caches`` and each attends to the valid (``key_valid [B, S]``) cache keys up
    to its own entry. Returns final-normed hidden states ``[B, T, D]`` and the updated caches."""
    check_params(params, config)
    x = params["embed_tokens"][tokens]
    cos, sin = rope_cos_sin(positions, config, x.dtype)
    masks = attention_masks(index + jnp.arange(tokens.shape[1]), key_valid, config)
    return _decoder(params, x, cos, sin, masks, config, adapters, remat, caches, index)


def prefix_caches(params: Mapping, prefix: jax.Array, rows: int, length: int, config: ModelConfig,
                  adapters: Adapters | None = None) -> tuple[jax.Array, jax.Array]:
    """Caches ``[L, rows, length, G, K]`` holding the shared ``prefix [P]`` at entries 0 .. P-1: the prefix
    runs once (``adapters`` common to all rows) and its keys and values are copied to every row."""
    p = prefix.shape[0]
    _, one = extend(params, prefix[None], jnp.arange(p)[None],
                    empty_caches(config, 1, length, params["embed_tokens"].dtype), jnp.ones((1, length), bool), 0,
                    config, adapters)
    return tuple(jnp.repeat(c, rows, axis=1) for c in one)


def suffix_hidden_states(params: Mapping, prefix: jax.Array, tokens: jax.Array, config: ModelConfig, *,
                         adapters: Adapters | None = None, attention_mask: jax.Array | None = None,
                         remat: bool = False) -> jax.Array:
    """Final normed hidden states ``[B, T, D]`` of right-padded rows ``tokens [B, T]`` that all follow the shared
    ``prefix [P]`` (``jaxmerge.tasks.encode.split_prefix``): the prefix runs once, its keys and values are
    copied to every row (``prefix_caches``), the rows run at positions P… after it. Equal to ``hidden_states``
    of the full rows at their suffix positions up to rounding; differentiable (the prefix's gradient sums over
    the rows)."""
    B, T = tokens.shape
    P = prefix.shape[0]
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    caches = prefix_caches(params, prefix, B, P + T, config, adapters)
    valid = jnp.concatenate([jnp.ones((B, P), bool), attention_mask.astype(bool)], axis=1)
    h, _ = extend(params, tokens, P + default_positions(tokens, attention_mask), caches, valid, P, config,
                  adapters, remat)
    return h


def lm_head(params: Mapping, h: jax.Array) -> jax.Array:
    """Logits (float32) ``[..., V]`` from hidden states ``[..., D]``; tied embeddings when no lm_head."""
    w = params.get("lm_head", params["embed_tokens"])
    return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)


def forward(params: Mapping, tokens: jax.Array, config: ModelConfig, *, adapters: Adapters | None = None,
            attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
            remat: bool = False) -> jax.Array:
    """Logits ``[B, T, V]`` (float32) of token ids ``[B, T]``.

    ``attention_mask [B, T]`` (1 = real token) handles left or right padding; ``positions [B, T]``
    default to 0-based counts of real tokens. ``adapters`` adds LoRA deltas (see ``jaxmerge.lora``).
    Pure and differentiable; jit it with ``config`` static.
    """
    h = hidden_states(params, tokens, config, adapters=adapters, attention_mask=attention_mask,
                      positions=positions, remat=remat)
    return lm_head(params, h)
