"""Stack layout benchmark: one merged 4096×4096 ΔW from k adapters with the real pool's rank mix.

Three layouts of the same Σ_i w_i·s_i·B_i·A_i:
    concat — ranks concatenated (``jaxmerge.stacks``): one [out, Σr]·[Σr, in] matmul
    pad    — every adapter padded to r_max: einsum over (k, r_max)
    bucket — adapters grouped by equal rank, one padded-free einsum per bucket, summed

    python -m jaxmerge.pool.bench_layout [--k 30] [--dim 4096] [--seed 0] [--shapes PATH|MANIFEST]

Ranks are drawn from the real pool's recorded configs (``jaxmerge.shapes.load_shapes``: the shipped
``paper-llama31-8b`` manifest by default). Einsum letters: n adapters, r rank rows, o out, d in.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

def pool_ranks(path: str | None = None) -> np.ndarray:
    from ..shapes import load_shapes
    return np.asarray([s.r for s in load_shapes(path)[0]])


def _time(fn, *args, reps=3) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def run(k=30, dim=4096, seed=0, shapes=None) -> dict:
    rng = np.random.default_rng(seed)
    ranks = rng.choice(pool_ranks(shapes), size=k, replace=False).astype(int)
    R, rmax = int(ranks.sum()), int(ranks.max())
    key = jax.random.key(seed)
    a = jax.random.normal(key, (R, dim), jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), (dim, R), jnp.float32)
    m = jnp.asarray(np.repeat(rng.normal(size=k), ranks), jnp.float32)
    off = np.concatenate([[0], np.cumsum(ranks)])

    concat = jax.jit(lambda a, b, m: (b * m) @ a)
    # padded layout [k, r_max, in], [k, out, r_max]
    rows = np.full((k, rmax), R)  # index R = a zero row
    for i in range(k):
        rows[i, :ranks[i]] = np.arange(off[i], off[i + 1])
    a_pad = jnp.concatenate([a, jnp.zeros((1, dim))])[rows]
    b_pad = jnp.concatenate([b, jnp.zeros((dim, 1))], 1)[:, rows].transpose(1, 0, 2)
    m_pad = jnp.concatenate([m, jnp.zeros(1)])[rows]
    pad = jax.jit(lambda a, b, m: jnp.einsum("nor,nrd->od", b * m[:, None, :], a))
    # bucketed by rank
    buckets = []
    for r in sorted(set(ranks.tolist())):
        idx = np.flatnonzero(ranks == r)
        sel = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx]).reshape(len(idx), r)
        buckets.append((a[sel], b[:, sel].transpose(1, 0, 2), m[sel]))
    bucket = jax.jit(lambda bs: sum(jnp.einsum("nor,nrd->od", b * m[:, None, :], a) for a, b, m in bs))

    ref = concat(a, b, m)
    for out in (pad(a_pad, b_pad, m_pad), bucket(buckets)):
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=2e-3, atol=2e-3 * float(jnp.abs(ref).max()))
    res = {"k": k, "dim": dim, "sum_r": R, "r_max": rmax, "k_times_rmax": k * rmax, "ranks": sorted(ranks.tolist()),
           "concat_s": _time(concat, a, b, m), "pad_s": _time(pad, a_pad, b_pad, m_pad),
           "bucket_s": _time(bucket, buckets), "buckets": len(buckets)}
    res["useful_gflop"] = 2 * dim * dim * R / 1e9
    res["pad_work_ratio"] = k * rmax / R
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shapes", default=None, help="shapes file or pool manifest (default: paper-llama31-8b)")
    args = p.parse_args(argv)
    r = run(args.k, args.dim, args.seed, args.shapes)
    print(json.dumps(r, indent=1))
    print(f"concat {r['concat_s']:.3f}s  pad {r['pad_s']:.3f}s ({r['pad_s'] / r['concat_s']:.1f}x)  "
          f"bucket {r['bucket_s']:.3f}s ({r['bucket_s'] / r['concat_s']:.1f}x); padding does "
          f"{r['pad_work_ratio']:.1f}x the useful work (Σr={r['sum_r']}, k·r_max={r['k_times_rmax']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
