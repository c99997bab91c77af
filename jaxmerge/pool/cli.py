"""``jaxmerge pool {stats,filter}`` (``jaxmerge merge`` lives in ``jaxmerge.merge.cli``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

def add_parser(subparsers) -> None:
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
