"""``jaxmerge bench {merge,train,export,…}``: each benchmark module provides ``add_arguments(parser)`` and
``run(args) -> int``; modules load lazily, and one missing from this build says so."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "merge": ("jaxmerge.bench.merge_bench", "merge throughput: jaxmerge vs the float32 matmul peak and PEFT"),
    "train": ("jaxmerge.bench.train_bench", "coefficient-training throughput"),
    "export": ("jaxmerge.bench.export_bench", "streamed merge into a checkpoint: jaxmerge vs mergekit vs PEFT"),
    "select": ("jaxmerge.bench.select_bench", "evaluation-based selection: batched pool scoring vs transformers+PEFT"),
}


def _unavailable(name):
    def run(args) -> int:
        print(f"jaxmerge bench {name}: not available in this build", file=sys.stderr)
        return 2
    return run


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (merge throughput, training throughput)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.description = "not available in this build"
            p.set_defaults(func=_unavailable(name))
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
