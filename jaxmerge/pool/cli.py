"""``jaxmerge merge`` and ``jaxmerge pool {stats,filter}``.

merge: load the base, load + filter the adapters (report in ``DIR/report.json``), merge, export.
``average`` = mean over kept adapters of s_i·B_i·A_i, ``linear`` = Σ w_i·s_i·B_i·A_i — both computed
here from the rank-concatenated stacks (so ``--format peft`` exports them exactly, ranks
concatenated); ``ties`` / ``tsv`` call ``jaxmerge.merge.merge_pool``. ``--weights`` are given per
adapter source after folders and lists are expanded; the weights of skipped adapters are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

METHODS = ("average", "linear", "ties", "tsv")


def add_parser(subparsers) -> None:
    m = subparsers.add_parser("merge", help="merge PEFT LoRA adapters into a base model (or a PEFT adapter)")
    m.add_argument("--base", required=True, help="base checkpoint folder or hub id")
    m.add_argument("--adapters", nargs="+", required=True,
                   help="adapter folders, folders of adapter folders, text files of paths / hub ids, hub ids")
    m.add_argument("--method", choices=METHODS, default="average")
    m.add_argument("--weights", type=float, nargs="+", help="linear: one weight per adapter (after expansion)")
    m.add_argument("--density", type=float, help="ties: fraction of entries kept per matrix (1 − p)")
    m.add_argument("--sign", choices=("total", "frequency"), default="total", help="ties: sign election")
    m.add_argument("--tsv-k", type=int, default=8, help="tsv: singular triplets kept per adapter")
    m.add_argument("--format", choices=("model", "peft"), default="model")
    m.add_argument("--rank", type=int, help="peft: truncate to this uniform rank (default: exact)")
    m.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    m.add_argument("--permissive", action="store_true", help="keep everything that can be merged faithfully")
    m.add_argument("--out", required=True)
    m.set_defaults(func=run_merge)

    p = subparsers.add_parser("pool", help="pool statistics and filtering")
    ps = p.add_subparsers(dest="pool_command", required=True)
    st = ps.add_parser("stats", help="the paper's Appendix A tables for a pool")
    st.add_argument("sources", nargs="+")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_stats)
    fl = ps.add_parser("filter", help="filter a pool; write kept.txt and report.json")
    fl.add_argument("sources", nargs="+")
    fl.add_argument("--base", required=True, help="base checkpoint folder (or hub id) whose shapes adapters must fit")
    fl.add_argument("--permissive", action="store_true")
    fl.add_argument("--out", required=True)
    fl.set_defaults(func=run_filter)


def _base_config(path):
    from ..config import KNOWN, ModelConfig
    from ..params import resolve
    if path in KNOWN:
        return KNOWN[path]
    return ModelConfig.from_json(os.path.join(resolve(path, ["config.json"]), "config.json"))


def _policy(args):
    from .filters import FilterPolicy
    return FilterPolicy.permissive() if args.permissive else FilterPolicy()


def merge_deltas(pool, method: str, *, weights=None, density=None, sign="total", tsv_k=8, factored: bool = False):
    """``{module: Factored}`` (average / linear with ``factored=True``) or ``{module: [L, out, in]}``."""
    import jax.numpy as jnp
    n, L = pool.num_adapters, pool.num_layers
    if method in ("average", "linear"):
        w = jnp.full((n,), 1.0 / n) if method == "average" else jnp.asarray(weights, jnp.float32)
        if w.shape != (n,):
            raise ValueError(f"linear needs {n} weights (one per kept adapter), got {w.shape[0]}")
        f = pool.factored({m: jnp.broadcast_to(w[:, None], (n, L)) for m in pool.modules})
        return f if factored else {m: d.dense() for m, d in f.items()}
    from ..merge import merge_pool  # ties / tsv: the merge-functions module
    weights = None if weights is None else jnp.asarray(weights, jnp.float32)
    return merge_pool(pool, method, weights=weights, density=density, sign=sign, tsv_k=tsv_k)


def run_merge(args) -> int:
    import jax.numpy as jnp
    from ..params import load_base
    from .export import export_model, export_peft
    from .load import load_pool
    from .sources import expand_sources

    if args.method == "linear" and not args.weights:
        print("jaxmerge merge: --method linear needs --weights", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    base = load_base(args.base, dtype=args.dtype)
    dtype = jnp.dtype(args.dtype)
    srcs = [s.spec for s in expand_sources(args.adapters)]
    if args.weights and len(args.weights) != len(srcs):
        print(f"jaxmerge merge: {len(args.weights)} weights for {len(srcs)} adapters", file=sys.stderr)
        return 2
    pool, report = load_pool(args.adapters, base.config, policy=_policy(args), dtype=dtype)
    report.save(os.path.join(args.out, "report.json"))
    print(report.summary(), file=sys.stderr)
    if pool.num_adapters == 0:
        print(f"jaxmerge merge: no adapter was kept (reasons in {args.out}/report.json)", file=sys.stderr)
        return 1
    weights = None
    if args.weights:
        by_source = dict(zip(srcs, args.weights))
        weights = [by_source[name] for name in pool.names]
    exact_peft = args.format == "peft" and args.method in ("average", "linear")
    deltas = merge_deltas(pool, args.method, weights=weights, density=args.density, sign=args.sign,
                          tsv_k=args.tsv_k, factored=exact_peft)
    if args.format == "model":
        export_model(base, deltas, args.out)
    else:
        export_peft(deltas, base.config, args.out, rank=args.rank, base_model_name_or_path=args.base)
    print(f"wrote {args.format} to {args.out} ({pool.num_adapters} adapters, method {args.method})", file=sys.stderr)
    return 0


def run_stats(args) -> int:
    from .stats import collect, format_stats, pool_stats
    records, errors = collect(args.sources)
    stats = pool_stats(records)
    if args.json:
        print(json.dumps({**stats, "unreadable": errors}, indent=1))
    else:
        print(format_stats(stats))
        for e in errors:
            print(f"unreadable: {e['source']}: {e['reason']}", file=sys.stderr)
    return 0 if records else 1


def run_filter(args) -> int:
    from .load import inspect_sources
    _, report = inspect_sources(args.sources, _base_config(args.base), _policy(args))
    os.makedirs(args.out, exist_ok=True)
    report.save(os.path.join(args.out, "report.json"))
    tmp = os.path.join(args.out, f"kept.txt.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write("".join(s + "\n" for s in report.kept))
    os.replace(tmp, os.path.join(args.out, "kept.txt"))
    print(report.summary())
    return 0 if report.kept else 1
