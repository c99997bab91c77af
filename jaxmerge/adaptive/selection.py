"""Choosing k of N pool LoRAs: random, evaluation-based, or by parameter-space similarity to a target.

Every similarity treats a LoRA as one flattened task vector over all merged parameters (every
module type of the pool, every layer; ΔW = s·B·A) and compares it with the target LoRA's:

    cosine     Σ ΔW_c∘ΔW_t            / (‖ΔW_c‖·‖ΔW_t‖)
    clamp      Σ max(ΔW_c∘ΔW_t, 0)    / (‖ΔW_c‖·‖ΔW_t‖)     negative elementwise products dropped
    abs        Σ |ΔW_c∘ΔW_t|          / (‖ΔW_c‖·‖ΔW_t‖)
    quasi_fim  Σ ΔW_c²∘ΔW_t²          / (‖ΔW_c²‖·‖ΔW_t²‖)   cosine of the elementwise squares

with sums and squared norms accumulated over all (module, layer) blocks before the one division.
A module the target lacks contributes only to the candidate's norm (the target is zero there).

Nothing builds the pool's dense deltas. Cosine is exact from the factors:
⟨s_c B_c A_c, s_t B_t A_t⟩ = s_c s_t Σ (A_c A_tᵀ) ∘ (B_cᵀ B_t), and ‖s B A‖² = s² Σ (A Aᵀ) ∘ (BᵀB).
Quasi-FIM has a factored form too: Σ X²∘Y² = ‖X∘Y‖², and X∘Y = P·Q with the row-wise Khatri–Rao
products P[o,(a,b)] = B_x[o,a]·B_y[o,b], Q[(a,b),d] = A_x[a,d]·A_y[b,d] (rank r_x·r_y), so
‖X∘Y‖² = Σ (PᵀP)∘(QQᵀ). It costs (out+in)·(r_x·r_y)² against out·in·r_x for forming X, so it is used
per rank bucket where it is cheaper (small ranks), the dense block otherwise. Clamp and abs apply a
non-linearity to every element and have no such form: they **materialise one (layer, module) dense
delta per candidate at a time** (a ``lax.scan`` over layers, candidates in memory-bounded chunks),
never the whole pool's deltas.

Candidates are processed in rank buckets (adapters of equal rank for a module, gathered from the
rank-concatenated stack), so no padding work is done. A candidate whose delta is zero everywhere
gets similarity 0 (orthogonal to everything); a zero target is an error.

Einsum letters: n candidates, l layers, r candidate rank rows, p a second candidate rank index,
q target rank rows, o out features, d in features.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..merge._groups import rank_groups, take_rows
from ..stacks import ModuleStack, Pool
from .space import SELECTIONS  # the design space owns the names

SIMILARITIES = tuple(k for k in SELECTIONS if k not in ("random", "evaluation"))
_HI = jax.lax.Precision.HIGHEST
_CHUNK_BYTES = 64 << 20  # per-chunk working set of the dense / Khatri–Rao paths


# --- gathering factors -----------------------------------------------------------------------------
def _gather(a_stack, b_stack, scale, rows, idx):
    """Factors of the adapters owning ``rows [n, r]``, adapter-major: a [n, L, r, d], b [n, L, o, r],
    s [n] (float32)."""
    a, b, s = take_rows(a_stack, b_stack, scale, rows, idx)
    f32 = jnp.float32
    return a.transpose(1, 0, 2, 3).astype(f32), b.transpose(1, 0, 2, 3).astype(f32), s.astype(f32)


def _target_factors(target: Pool | int, module: str, stack: ModuleStack):
    """The target's (a [L, q, d], b [L, o, q], s) for ``module``; rank-1 zeros if it lacks the module.
    ``target`` is an index into the pool (whose ``stack`` this is) or a one-adapter Pool."""
    if isinstance(target, Pool):
        ts, i = target.modules.get(module), 0
    else:
        ts, i = stack, target
    if ts is None or ts.ranks[i] == 0:
        L, _, d = stack.a.shape
        return jnp.zeros((L, 1, d), jnp.float32), jnp.zeros((L, stack.b.shape[1], 1), jnp.float32), jnp.float32(0)
    if ts.a.shape[0] != stack.a.shape[0] or ts.a.shape[2] != stack.a.shape[2] or ts.b.shape[1] != stack.b.shape[1]:
        raise ValueError(f"{module}: target factors {ts.a.shape}/{ts.b.shape} do not match the pool's "
                         f"{stack.a.shape}/{stack.b.shape}")
    a, b = ts.adapter(i)
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(ts.scale[i], jnp.float32)


def _chunks(idx: np.ndarray, item_bytes: int) -> Iterable[np.ndarray]:
    n = max(1, min(len(idx), _CHUNK_BYTES // max(item_bytes, 1)))
    for i in range(0, len(idx), n):
        yield idx[i:i + n]


# --- per-chunk statistics: (numerator [n], squared norm [n]) -----------------------------------------
def _cosine_stats(a, b, s, at, bt, st):
    ga = jnp.einsum("nlrd,lqd->nlrq", a, at, precision=_HI)
    gb = jnp.einsum("nlor,loq->nlrq", b, bt, precision=_HI)
    num = s * st * jnp.sum(ga * gb, axis=(1, 2, 3))
    aa = jnp.einsum("nlrd,nlpd->nlrp", a, a, precision=_HI)
    bb = jnp.einsum("nlor,nlop->nlrp", b, b, precision=_HI)
    return num, s * s * jnp.sum(aa * bb, axis=(1, 2, 3))


def _dense_stats(a, b, s, at, bt, st, kind):
    """Elementwise statistics with one dense (layer, module) block per candidate at a time."""
    def layer(carry, xs):
        al, bl, atl, btl = xs                       # [n, r, d], [n, o, r], [q, d], [o, q]
        x = jnp.einsum("nor,nrd->nod", bl * s[:, None, None], al, precision=_HI)
        y = st * jnp.einsum("oq,qd->od", btl, atl, precision=_HI)
        xy = x * y
        if kind == "clamp":
            num, sq = jnp.sum(jnp.maximum(xy, 0), (1, 2)), jnp.sum(x * x, (1, 2))
        elif kind == "abs":
            num, sq = jnp.sum(jnp.abs(xy), (1, 2)), jnp.sum(x * x, (1, 2))
        elif kind == "cosine":
            num, sq = jnp.sum(xy, (1, 2)), jnp.sum(x * x, (1, 2))
        else:  # quasi_fim
            num, sq = jnp.sum(xy * xy, (1, 2)), jnp.sum((x * x) ** 2, (1, 2))
        return (carry[0] + num, carry[1] + sq), None

    zero = jnp.zeros(a.shape[0], jnp.float32)
    (num, sq), _ = jax.lax.scan(layer, (zero, zero), (a.swapaxes(0, 1), b.swapaxes(0, 1), at, bt))
    return num, sq


def _hadamard_sq(ax, bx, ay, by):
    """Σ (X∘Y)² per candidate with X = B_x A_x, Y = B_y A_y, by the Khatri–Rao factorisation.
    ax [n, r, d], bx [n, o, r], ay [n|1, q, d], by [n|1, o, q] (unscaled)."""
    p = (bx[:, :, :, None] * by[:, :, None, :]).reshape(bx.shape[0], bx.shape[1], -1)   # [n, o, r·q]
    q = (ax[:, :, None, :] * ay[:, None, :, :]).reshape(ax.shape[0], -1, ax.shape[2])   # [n, r·q, d]
    pp = jnp.einsum("nok,noj->nkj", p, p, precision=_HI)
    qq = jnp.einsum("nkd,njd->nkj", q, q, precision=_HI)
    return jnp.sum(pp * qq, axis=(1, 2))


def _qfim_factored_stats(a, b, s, at, bt, st):
    def layer(carry, xs):
        al, bl, atl, btl = xs
        num = _hadamard_sq(al, bl, atl[None], btl[None])
        sq = _hadamard_sq(al, bl, al, bl)
        return (carry[0] + num, carry[1] + sq), None

    zero = jnp.zeros(a.shape[0], jnp.float32)
    (num, sq), _ = jax.lax.scan(layer, (zero, zero), (a.swapaxes(0, 1), b.swapaxes(0, 1), at, bt))
    return num * (s * st) ** 2, sq * s ** 4


def _use_khatri_rao(rank: int, target_rank: int, out: int, inp: int) -> bool:
    """Khatri–Rao quasi-FIM (numerator and norm) vs forming the dense block, in multiply-adds."""
    factored = (out + inp) * (rank * rank * target_rank * target_rank + rank ** 4)
    return factored < out * inp * rank


# --- public API ------------------------------------------------------------------------------------
def similarity_terms(pool: Pool, target_index: int | Pool, kind: str, *, method: str = "auto"
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """The pieces of the similarity before division: numerator ``[N]``, candidate squared norm
    ``[N]`` (of ΔW for cosine/clamp/abs, of ΔW∘ΔW for quasi_fim), and the target's squared norm.

    ``method``: "auto" (cheapest exact path), "dense" (dense blocks for every kind) or "factored"
    (factor-only paths; cosine and quasi_fim only) — the last two exist for tests and measurements.
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity kind {kind!r}: expected one of {SIMILARITIES}")
    if method not in ("auto", "dense", "factored"):
        raise ValueError(f"method {method!r}: expected 'auto', 'dense' or 'factored'")
    if method == "factored" and kind in ("clamp", "abs"):
        raise ValueError(f"{kind} is elementwise and has no factored form; use method='auto' or 'dense'")
    if isinstance(target_index, Pool):
        target = target_index
        if target.num_adapters != 1:
            raise ValueError(f"target pool must hold exactly one adapter, got {target.num_adapters}")
        missing = set(target.modules) - set(pool.modules)
        if missing and any(target.modules[m].ranks[0] for m in missing):
            raise ValueError(f"target LoRA targets modules the pool lacks: {sorted(missing)}")
    else:
        target = int(target_index)
        if not 0 <= target < pool.num_adapters:
            raise IndexError(f"target_index {target} outside the pool of {pool.num_adapters}")

    n_total = pool.num_adapters
    num, sq = np.zeros(n_total, np.float64), np.zeros(n_total, np.float64)
    target_sq = 0.0
    for module, stack in pool.modules.items():
        at, bt, st = _target_factors(target, module, stack)
        L, _, d = stack.a.shape
        o = stack.b.shape[1]
        q = at.shape[1]
        path = _path(kind, method, q, q, o, d)
        one = np.zeros((1,), np.int32)
        t_stats = _chunk_stats(at, bt, st[None], np.arange(q, dtype=np.int32)[None], one,
                               at, bt, st, kind=kind, path=path)
        target_sq += float(t_stats[1][0])
        for group in rank_groups(stack):
            r = group.rank
            path = _path(kind, method, r, q, o, d)
            item = {"dense": 4 * o * d * 3, "khatri_rao": 4 * (o + d) * r * max(q, r) * 2,
                    "cosine": 4 * L * (r * (d + o) + r * max(q, r) * 2)}[path]
            for part in _chunks(np.arange(len(group.adapters)), item):
                chunk = group.adapters[part]
                cn, cs = _chunk_stats(stack.a, stack.b, stack.scale, group.rows[part].astype(np.int32),
                                      chunk.astype(np.int32), at, bt, st, kind=kind, path=path)
                num[chunk] += np.asarray(cn, np.float64)
                sq[chunk] += np.asarray(cs, np.float64)
    return num, sq, target_sq


def _path(kind: str, method: str, r: int, q: int, o: int, d: int) -> str:
    """Which exact computation: "cosine" (factor Grams), "khatri_rao" (quasi-FIM) or "dense" blocks."""
    if method == "dense" or kind in ("clamp", "abs"):
        return "dense"
    if kind == "cosine":
        return "cosine"
    return "khatri_rao" if method == "factored" or _use_khatri_rao(r, q, o, d) else "dense"


@functools.partial(jax.jit, static_argnames=("kind", "path"))
def _chunk_stats(a_stack, b_stack, scale, rows, idx, at, bt, st, *, kind, path):
    """(numerator [n], squared norm [n]) of the adapters owning ``rows [n, r]`` against the target."""
    a, b, s = _gather(a_stack, b_stack, scale, rows, idx)
    if path == "cosine":
        return _cosine_stats(a, b, s, at, bt, st)
    if path == "khatri_rao":
        return _qfim_factored_stats(a, b, s, at, bt, st)
    return _dense_stats(a, b, s, at, bt, st, kind)


def similarity(pool: Pool, target_index: int | Pool, kind: str, *, method: str = "auto") -> np.ndarray:
    """Similarity ``[N]`` (float64) of every pool LoRA to the target LoRA (module docstring).

    ``target_index``: the target's index in ``pool`` (its own entry is then 1 for cosine and
    quasi_fim), or a one-adapter ``Pool`` with the same base shapes (target kept out of the pool).
    Candidates with an all-zero delta get 0. Raises ``ValueError`` if the target's delta is zero.
    """
    num, sq, target_sq = similarity_terms(pool, target_index, kind, method=method)
    if not target_sq > 0:
        raise ValueError(f"the target LoRA's delta is zero (squared norm {target_sq}); {kind} similarity "
                         "is undefined")
    den = np.sqrt(sq) * np.sqrt(target_sq)
    return np.where(sq > 0, num / np.where(sq > 0, den, 1.0), 0.0)


def top_k(scores: np.ndarray, k: int, candidates: np.ndarray) -> np.ndarray:
    """The k candidates of highest score, best first; ties go to the lower index."""
    scores = np.asarray(scores, np.float64)
    if np.isnan(scores[candidates]).any():
        raise ValueError("scores contain NaN for some candidates; refusing to rank them")
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]].astype(np.int64)


def select(pool: Pool, kind: str, k: int, *, key: jax.Array | None = None, target_index: int | Pool | None = None,
           eval_scores: Sequence[float] | np.ndarray | None = None, exclude: Sequence[int] = (),
           similarity_method: str = "auto") -> np.ndarray:
    """Indices ``[k]`` (int64) of the selected pool LoRAs.

    * ``random``: k distinct draws with ``key`` (a ``jax.random`` key), ascending index order.
    * ``evaluation``: top-k of ``eval_scores [N]`` (higher is better: accuracy, or minus a loss).
    * ``cosine`` / ``clamp`` / ``abs`` / ``quasi_fim``: top-k similarity to ``target_index`` (an index
      into ``pool``, itself never selected, or a one-adapter ``Pool``).
    Ranked kinds return best first, ties to the lower index. ``exclude`` indices are never chosen.
    """
    n = pool.num_adapters
    if kind not in SELECTIONS:
        raise ValueError(f"selection {kind!r}: expected one of {SELECTIONS}")
    excluded = {int(i) for i in exclude}
    if kind in SIMILARITIES:
        if target_index is None:
            raise ValueError(f"{kind} selection needs target_index (the target-task LoRA)")
        if not isinstance(target_index, Pool):
            excluded.add(int(target_index))
    candidates = np.array([i for i in range(n) if i not in excluded], np.int64)
    if not 0 < k <= len(candidates):
        raise ValueError(f"cannot select k={k} of {len(candidates)} candidates ({n} in the pool, "
                         f"{n - len(candidates)} excluded)")
    if kind == "random":
        if key is None:
            raise ValueError("random selection needs key=jax.random.key(seed)")
        pick = jax.random.choice(key, len(candidates), (k,), replace=False)
        return np.sort(candidates[np.asarray(pick)])
    if kind == "evaluation":
        if eval_scores is None:
            raise ValueError("evaluation selection needs eval_scores (one per pool LoRA)")
        scores = np.asarray(eval_scores, np.float64)
        if scores.shape != (n,):
            raise ValueError(f"eval_scores has shape {scores.shape}, expected ({n},)")
        return top_k(scores, k, candidates)
    return top_k(similarity(pool, target_index, kind, method=similarity_method), k, candidates)
