"""TSV merging (Task Singular Vectors, Gargiulo et al. 2025) of LoRA deltas, from the factors.

Per module matrix (and layer), with ΔW_i = s_i·B_i·A_i:

1. the top ``K_i = min(k, r_i)`` singular triplets (u, σ, v) of each ΔW_i — an adapter of rank
   below k keeps all its triplets;
2. weights on the singular values: σ ← w_i·σ (the paper: k = 8, w_i = 1/30);
3. stack U = [U_1 … U_n] ``[out, ΣK]``, V = [V_1 … V_n] ``[in, ΣK]``, S = [S_1 … S_n];
4. orthogonalise U and V by their polar factor (U = PΣQᵀ → PQᵀ);
5. ΔW = U_⊥·diag(S)·V_⊥ᵀ.

The SVD of s·B·A never forms the dense matrix: B = Q_b·R_b and Aᵀ = Q_a·R_a (thin QR), then
s·R_b·R_aᵀ = U_m·Σ·V_mᵀ (an r×r SVD), so ΔW = (Q_b·U_m)·Σ·(Q_a·V_m)ᵀ. Adapters of equal rank are
decomposed together (one batched QR / SVD per rank group and layer block).

Degenerate triplets — singular values at rounding level, from zero (padding) rows or a factor of
deficient rank — are dropped (their columns zeroed), and the polar factor keeps only the directions
of non-negligible singular values, so padding never changes the result. The threshold is
``σ ≤ σ_max·max(rows, cols)·ε`` of each decomposition (NumPy's ``matrix_rank`` rule).

Einsum letters: l layers, g adapters of a rank group, o out features, d in features, r rank,
k kept triplets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..stacks import ModuleStack
from ._groups import scan_layers, static_ranks, weighted_groups


def _unbatched(fn, *xs):
    """``fn`` over the leading dims of matrices ``xs`` one matrix at a time (``lax.map``).

    Batched LAPACK calls (QR, SVD) deadlock nondeterministically inside XLA:CPU on this jaxlib
    (0 % CPU, all threads waiting; 3 of 4 runs at 10 × 4096×16 factors), while the same calls one
    matrix at a time never did (BUILD_NOTES). The matrices here are thin, so the loop costs little."""
    lead = xs[0].shape[:-2]
    flat = tuple(x.reshape((-1,) + x.shape[-2:]) for x in xs)
    out = jax.lax.map(lambda t: fn(*t), flat)
    return jax.tree.map(lambda y: y.reshape(lead + y.shape[1:]), out)


def qr_each(x):
    """Thin QR of each matrix of ``x [..., m, n]`` (see ``_unbatched``)."""
    return _unbatched(jnp.linalg.qr, x)


def svd_each(x):
    """Thin SVD of each matrix of ``x [..., m, n]`` (see ``_unbatched``)."""
    return _unbatched(lambda m: jnp.linalg.svd(m, full_matrices=False), x)


def _negligible(sv: jax.Array, rows: int, cols: int) -> jax.Array:
    """Mask of singular values at rounding level, ``sv [..., n]`` sorted descending."""
    eps = jnp.finfo(sv.dtype).eps
    return sv <= sv[..., :1] * (max(rows, cols) * eps)


def factor_svd(a: jax.Array, b: jax.Array, s: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-k singular triplets of s·B·A from the factors.

    a ``[..., r, in]``, b ``[..., out, r]``, s broadcastable to ``[...]`` →
    U ``[..., out, K]``, σ ``[..., K]`` (descending), V ``[..., in, K]`` with K = min(k, r, out, in);
    negligible triplets come back as zeros.
    """
    qb, rb = qr_each(b)                                        # [..., o, p], [..., p, r]
    qa, ra = qr_each(jnp.swapaxes(a, -1, -2))                  # [..., d, q], [..., q, r]
    core = jnp.einsum("...pr,...qr->...pq", rb, ra) * jnp.asarray(s)[..., None, None]
    um, sv, vmt = svd_each(core)
    kk = min(k, sv.shape[-1])
    keep = ~_negligible(sv, b.shape[-2], a.shape[-1])[..., :kk]  # the dense ΔW's rank rule
    u = jnp.einsum("...op,...pk->...ok", qb, um[..., :kk]) * keep[..., None, :]
    v = jnp.einsum("...dq,...kq->...dk", qa, vmt[..., :kk, :]) * keep[..., None, :]
    return u, sv[..., :kk] * keep, v


def polar(x: jax.Array) -> jax.Array:
    """Orthogonal polar factor P·Qᵀ of ``x [..., m, n]`` (x = P·Σ·Qᵀ), over the directions of
    non-negligible singular values. A tall x is reduced by QR first (x = Q·R → Q·polar(R)): an SVD
    of the 14336×240 stacked U takes 1.8 s on this CPU, QR plus a 240×240 SVD 0.05 s."""
    m, n = x.shape[-2:]
    if m < n:
        return jnp.swapaxes(polar(jnp.swapaxes(x, -1, -2)), -1, -2)
    q, r = qr_each(x)
    p, sv, qt = svd_each(r)
    keep = ~_negligible(sv, m, n)
    return jnp.einsum("...mj,...jk,...kn->...mn", q, p * keep[..., None, :], qt)


def _triplets(groups, k: int):
    """Stacked weighted triplets from per-group factors with any leading dims ``...``:
    U ``[..., out, T]``, S ``[..., T]``, V ``[..., in, T]``."""
    us, ss, vs = [], [], []
    for a, b, s, w in groups:                              # a [..., g, r, d], b [..., g, o, r], w [..., g]
        u, sv, v = factor_svd(a, b, s, k)                  # [..., g, o, K], [..., g, K], [..., g, d, K]
        sv = sv * w[..., None].astype(sv.dtype)
        lead, (g, o, kk), d = u.shape[:-3], u.shape[-3:], v.shape[-2]
        us.append(jnp.swapaxes(u, -3, -2).reshape(*lead, o, g * kk))
        vs.append(jnp.swapaxes(v, -3, -2).reshape(*lead, d, g * kk))
        ss.append(sv.reshape(*lead, g * kk))
    return jnp.concatenate(us, -1), jnp.concatenate(ss, -1), jnp.concatenate(vs, -1)


def tsv_triplets(stack: ModuleStack, k: int = 8, weights: jax.Array | None = None):
    """Stacked weighted triplets of every adapter: U ``[L, out, T]``, S ``[L, T]``, V ``[L, in, T]``,
    T = Σ_i min(k, r_i) (columns of dropped triplets are zero). Weights default to 1/N."""
    return _triplets(weighted_groups(stack, weights), k)


def tsv(stack: ModuleStack, k: int = 8, weights: jax.Array | None = None, ranks: tuple[int, ...] | None = None) -> jax.Array:
    """TSV merge ``[L, out, in]``: top-k triplets per adapter, weighted singular values (``weights``
    ``[N]`` or ``[N, L]``; default 1/N each), polar-orthogonalised stacked U and V. Layers are
    scanned, so on a mesh only one layer's factors are ever gathered for the QR. Compiled per rank
    structure of the stack (its per-adapter SVDs are shaped by the ranks)."""
    return _tsv(stack, k, weights, static_ranks(stack) if ranks is None else tuple(ranks))


@functools.partial(jax.jit, static_argnames=("k", "ranks"))
def _tsv(stack: ModuleStack, k: int, weights: jax.Array | None, ranks: tuple[int, ...]) -> jax.Array:
    def layer(groups, _):
        u, sv, v = _triplets([(a, b, s, w) for a, b, s, w, _ in groups], k)
        return jnp.einsum("ok,k,dk->od", polar(u), sv, polar(v))

    return scan_layers(stack, weights, layer, ranks=ranks)
