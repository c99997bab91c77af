"""``jaxmerge pool {stats,filter,fetch}`` (``jaxmerge merge`` lives in ``jaxmerge.merge.cli``).

Sources everywhere: adapter folders, folders of them, list files, hub ids and pool manifests (a
shipped name — ``paper-llama31-8b``, ``paper-qwen3-4b`` — or a manifest JSON). A source that is not
there is one error line naming it (exit 2), never a silently smaller pool.
"""

from __future__ import annotations

import json
import os
import sys

SOURCES_HELP = "adapter folders, folders of them, list files, hub ids, pool manifests (e.g. paper-llama31-8b)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pool", help="pool statistics, filtering and fetching")
    ps = p.add_subparsers(dest="pool_command", required=True)
    st = ps.add_parser("stats", help="the paper's Appendix A tables for a pool")
    st.add_argument("sources", nargs="+", help=SOURCES_HELP)
    st.add_argument("--cache-dir", help="Hugging Face cache to read hub adapters from (default: the standard one)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_stats)
    fl = ps.add_parser("filter", help="filter a pool; write kept.txt and report.json")
    fl.add_argument("sources", nargs="+", help=SOURCES_HELP)
    fl.add_argument("--base", required=True, help="base checkpoint folder (or hub id) whose shapes adapters must fit")
    fl.add_argument("--cache-dir", help="Hugging Face cache to read hub adapters from (default: the standard one)")
    fl.add_argument("--permissive", action="store_true")
    fl.add_argument("--out", required=True)
    fl.set_defaults(func=run_filter)
    fe = ps.add_parser("fetch", help="download the allow-listed files of every hub adapter of a pool "
                                     "(config, safetensors, model card; never .bin)")
    fe.add_argument("sources", nargs="+", metavar="MANIFEST|ID", help=SOURCES_HELP)
    fe.add_argument("--cache-dir", help="Hugging Face cache to fill (default: the standard one)")
    fe.add_argument("--dry-run", action="store_true", help="list what would be fetched (cache only, no network)")
    fe.add_argument("--workers", type=int, default=8, help="adapters fetched in parallel")
    fe.add_argument("--report", help="write the per-adapter report (JSON) here")
    fe.add_argument("--quiet", action="store_true", help="no progress bar")
    fe.set_defaults(func=run_fetch)


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
    from ..errors import cli_errors
    from .stats import collect, format_stats, pool_stats
    with cli_errors("jaxmerge pool stats"):
        records, errors = collect(args.sources, cache_dir=args.cache_dir)
    stats = pool_stats(records)
    if args.json:
        print(json.dumps({**stats, "unreadable": errors}, indent=1))
    else:
        print(format_stats(stats))
        if errors:
            print(f"\n{len(errors)} unreadable adapter(s), not counted above:", file=sys.stderr)
        for e in errors:
            print(f"unreadable: {e['source']}: {e['reason']}", file=sys.stderr)
    return 0 if records else 1


def run_filter(args) -> int:
    from ..atomic import write_text
    from ..errors import cli_errors
    from .load import inspect_sources
    with cli_errors("jaxmerge pool filter"):
        _, report = inspect_sources(args.sources, _base_config(args.base), _policy(args), cache_dir=args.cache_dir)
    os.makedirs(args.out, exist_ok=True)
    report.save(os.path.join(args.out, "report.json"))
    write_text(os.path.join(args.out, "kept.txt"), "".join(s + "\n" for s in report.kept))
    print(report.summary())
    return 0 if report.kept else 1


def run_fetch(args) -> int:
    """Exit 0 when every adapter is fetched or cached, 1 when some failed (all others still fetched)."""
    from ..errors import UserError, cli_errors
    from .fetch import fetch
    with cli_errors("jaxmerge pool fetch"):
        if args.workers < 1:
            raise UserError(f"--workers {args.workers}: must be ≥ 1")
        report = fetch(args.sources, cache_dir=args.cache_dir, dry_run=args.dry_run, workers=args.workers,
                       progress=not args.quiet)
    if args.dry_run:
        for r in report.rows:
            print(f"{r['status']:<12} {r['id']}" + (f"  {' '.join(r['files'])}" if r["files"] else ""))
    if args.report:
        report.save(args.report)
    print(report.summary(), file=sys.stderr)
    return 1 if report.failed else 0
