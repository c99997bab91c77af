"""``jaxmerge merge``: PEFT LoRA adapters merged into a base checkpoint (streamed, any size) or into one
PEFT adapter. ``--method`` choices and the method flags come from the registry
(``jaxmerge.merge.registry``); everything the arguments decide is checked before anything is read.

    jaxmerge merge --base BASE --adapters A1 A2 ... --method ties --out OUT          # density 0.8 (recipe)
    jaxmerge merge ... --method dare_ties --density 0.5 --seed 1 --out OUT
    jaxmerge merge ... --method linear --weights 1 0.5 --format peft [--rank 64] --out OUT

``--weights`` are given per adapter source after folders and lists are expanded; the weights of
skipped adapters are dropped. The filter report is written to ``OUT/report.json``, what was merged to
``OUT/merge.json``.
"""

from __future__ import annotations

import argparse
import sys

SHARD_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MiB', '1048576' → bytes."""
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        return int(float(num) * SHARD_UNITS[t[len(num):]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 5GB, 500MB or 2GiB") from None


def _flag_type(field):
    if field.type in (bool, "bool"):
        return lambda s: {"true": True, "1": True, "false": False, "0": False}[s.lower()]
    return {"float": float, "int": int, "str": str}.get(field.type, field.type)


def add_parser(subparsers) -> None:
    from . import registry
    m = subparsers.add_parser("merge", help="merge PEFT LoRA adapters into a base model (or a PEFT adapter)",
                              description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--base", required=True, help="base checkpoint folder, hub id or .gguf file")
    m.add_argument("--adapters", nargs="+", required=True,
                   help="adapter folders, folders of adapter folders, text files of paths / hub ids, hub ids")
    methods = registry.names()
    m.add_argument("--method", choices=methods, default="average", metavar="METHOD",
                   help="one of: " + "; ".join(f"{n} ({registry.get(n).summary})" for n in methods))
    m.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (after expansion); "
                   "default: the method's (1 each; 1/N for tsv)")
    group = m.add_argument_group("method parameters (each method takes some; defaults are its recipe)")
    for name, field in registry.all_params().items():
        meta = field.metadata
        takes = [n for n in methods if name in registry.param_names(n)]
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", type=_flag_type(field),
                           choices=meta.get("choices"), default=None, metavar=None if meta.get("choices") else name.upper(),
                           help=f"{meta.get('help', '')} [{', '.join(takes)}]")
    m.add_argument("--seed", type=int, default=0, help="key of the methods that draw masks (dare_*, della*)")
    m.add_argument("--format", choices=("model", "peft"), default="model")
    m.add_argument("--rank", type=int, help="peft: truncate to this uniform rank (default: exact for low-rank "
                   "methods, the largest adapter rank otherwise)")
    m.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written tensors (default: the base's for model, float32 for peft)")
    m.add_argument("--shard-size", type=parse_size, default="5GB", help="model: largest output shard (default 5GB)")
    m.add_argument("--layers-per-step", type=int, default=1, help="layers merged per window (memory ∝ this)")
    m.add_argument("--permissive", action="store_true", help="keep everything that can be merged faithfully")
    m.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.add_argument("--out", required=True)
    m.set_defaults(func=run_merge)


def method_params(args) -> dict:
    return {k.removeprefix("param_"): v for k, v in vars(args).items() if k.startswith("param_") and v is not None}


def run_merge(args) -> int:
    import os

    from ..errors import UserError, cli_errors
    from ..pool.filters import FilterPolicy
    from ..pool.sources import expand_sources
    from .stream import NothingKept, check_request, stream_merge

    with cli_errors("jaxmerge merge"):
        check_request(args.method, args.format, args.rank, args.weights, method_params(args))
        if args.layers_per_step < 1:
            raise UserError(f"--layers-per-step {args.layers_per_step}: must be ≥ 1")
        if os.path.lexists(args.out) and not args.overwrite:
            raise UserError(f"--out {args.out} exists; choose another folder or pass --overwrite")
        weights = None
        if args.weights:
            srcs = [s.spec for s in expand_sources(args.adapters)]
            if len(args.weights) != len(srcs):
                raise UserError(f"{len(args.weights)} weights for {len(srcs)} adapters")
            weights = dict(zip(srcs, args.weights))
        try:
            res = stream_merge(args.base, args.adapters, args.out, method=args.method, params=method_params(args),
                               weights=weights, fmt=args.format, rank=args.rank, dtype=args.dtype,
                               shard_bytes=args.shard_size, policy=FilterPolicy.permissive() if args.permissive
                               else None, seed=args.seed, layers_per_step=args.layers_per_step,
                               progress=not args.quiet, replace=args.overwrite)
        except NothingKept as e:
            print(f"jaxmerge merge: {e}", file=sys.stderr)
            return 1
    print(f"wrote {args.format} to {args.out} ({len(res['adapters'])} adapters, method {args.method}"
          f"{', resumed' if res['resumed'] else ''}, {res['seconds']:.1f} s)", file=sys.stderr)
    return 0
