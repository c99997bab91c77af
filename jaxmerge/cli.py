"""The ``jaxmerge`` command. Each subsystem owns its subcommands: a module with
``add_parser(subparsers)`` that registers them and sets ``func`` (called with the parsed args,
returning an exit code). Imports are lazy so ``jaxmerge --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand → module providing add_parser()
SUBCOMMANDS = {
    "merge": "jaxmerge.merge.cli",
    "pool": "jaxmerge.pool.cli",
    "bench": "jaxmerge.bench.cli",
    "plan": "jaxmerge.plan",
    "doctor": "jaxmerge.doctor",
    "tasks": "jaxmerge.tasks.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmerge", description="Recycle LoRA adapters by (adaptive) merging.")
    sub = parser.add_subparsers(dest="command", required=True)
    done = set()
    for name, module in SUBCOMMANDS.items():
        if module in done:
            continue
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as e:
            if not (e.name and module.startswith(e.name)):
                raise
            sub.add_parser(name, help="(not available in this build)")
        done.add(module)
    return parser


def main(argv=None) -> int:
    from .errors import cli_errors
    args = build_parser().parse_args(argv)
    if not hasattr(args, "func"):
        print(f"jaxmerge {args.command}: not available in this build", file=sys.stderr)
        return 2
    with cli_errors(f"jaxmerge {args.command}"):
        return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
