"""The embedded default world: a tiny Llama 3.1-style base, a pool of PEFT LoRAs, target tasks.

Built by this project's own code, deterministic from a seed, cached under ``$JAXMERGE_CACHE`` (or
``~/.cache/jaxmerge``) as ``world-<size>-<recipe hash>``; a changed recipe (every build parameter plus
``VERSION``) means a new folder. The build runs in ``.partial-<name>`` under a file lock, stage by
stage (tokenizer and tasks → base → pool chunks → broken adapters), each stage skipped when already
done, so an interrupted build resumes; the finished folder is renamed into place at the end.

Layout::

    world-<size>-<hash>/
      recipe.json  world.json
      base/                     config.json, model.safetensors, tokenizer.json, chat template …
      pool/<name>/              adapter_config.json + adapter_model.safetensors (PEFT)
      pool/broken-<defect>/     deliberately broken adapters the pool filter must reject
      tasks/<task>/             task.json, train.jsonl (80), validation.jsonl (20), test.jsonl

Design: pretraining covers the non-knowledge families in phrasings 0/1 (so zero-shot is above
chance on some targets); the pool holds LoRAs of ``POOL_FAMILIES`` (phrasings 0/1, other data and
seeds); targets use phrasing 2. A *related* target has LoRAs of its family in the pool; the others
have none. Knowledge targets (category, color, translate) train on half of the map's words and test on the
other half, so only the related LoRAs can know the test answers — the case where positive transfer
is possible; test prompts of the other targets never occur in their train/validation rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from jaxmerge.cache import build_lock, cache_root

from . import world_smollm2 as _smollm2  # the real-model world (its module needs nothing from this one at import)

VERSION = 3  # 3: the content the current trainer builds (version 2's folder name held two different builds)
POOL_FAMILIES = ("add", "sub", "successor", "max", "count", "first", "sentiment", "boolean", "color", "translate",
                 "category", "antonym")
PRETRAIN_FAMILIES = ("add", "sub", "successor", "double", "max", "compare", "parity", "count", "first", "last",
                     "min", "second", "sentiment", "boolean", "echo")
RANKS = (16, 8, 64, 32, 4)
ALPHAS = (16, 32, 8, None)  # None: alpha = r
TARGET_SETS = {"all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
               "qv": ("q_proj", "v_proj"), "qkvo": ("q_proj", "k_proj", "v_proj", "o_proj")}
BROKEN = {"nan": "nan", "shape": "shape", "bin": ".bin", "dora": "dora", "tiny": "norm", "huge": "norm",
          "rank_pattern": "rank_pattern"}

SIZES = {
    "default": dict(dims=dict(hidden=64, layers=4, heads=4, kv_heads=2, ffn=128), max_len=32,
                    pretrain=dict(steps=1200, batch=32, lr=3e-3, examples_per_family=1500),
                    pool=dict(n=44, steps=200, batch=8, lr=1e-2, examples=400, chunk=9),
                    targets=("category", "color", "translate", "add", "count", "compare", "last", "min", "second"),
                    n_test=200, default_task="compare"),
    "small": dict(dims=dict(hidden=32, layers=2, heads=4, kv_heads=2, ffn=64), max_len=32,
                  pretrain=dict(steps=40, batch=16, lr=3e-3, examples_per_family=40),
                  pool=dict(n=12, steps=15, batch=4, lr=2e-2, examples=32, chunk=12),
                  targets=("category", "add", "compare"), n_test=40, default_task="category"),
}


@dataclasses.dataclass(frozen=True)
class World:
    """A built world; every path absolute.

    base_dir: transformers checkpoint + tokenizer; pool_dirs: PEFT adapter folders (the broken ones
    included); broken: {dir: keyword the filter's rejection reason should contain}; tasks: {name:
    folder with task.json and JSONL splits}; related: {task: names of pool adapters of its family}.
    """
    root: str
    base_dir: str
    pool_dirs: list[str]
    broken: dict[str, str]
    tasks: dict[str, str]
    default_task: str
    target_tasks: list[str]
    related: dict[str, list[str]]
    adapters: dict[str, dict]  # pool adapter name → its spec (family, r, alpha, rslora, targets, layers, seed)
    stats: dict

    @property
    def good_pool_dirs(self) -> list[str]:
        return [d for d in self.pool_dirs if d not in self.broken]


# --- recipe ------------------------------------------------------------------------------------------------
def pool_specs(n: int, layers: int, seed: int) -> list[dict]:
    """The pool's variety, cycled: ranks 4–64, several alphas, q,v / q,k,v,o / all seven (most common),
    rsLoRA on every 5th, ``layers_to_transform`` (the upper half) on every 7th."""
    kinds = ("all", "qv", "all", "qkvo", "all")
    specs = []
    for i in range(n):
        fam = POOL_FAMILIES[i % len(POOL_FAMILIES)]
        r = RANKS[i % len(RANKS)]
        alpha = ALPHAS[i % len(ALPHAS)] or r
        specs.append(dict(name=f"{fam}-{i:02d}", family=fam, r=r, alpha=alpha, rslora=i % 5 == 3,
                          targets=list(TARGET_SETS[kinds[i % len(kinds)]]),
                          layers=list(range(layers // 2, layers)) if i % 7 == 6 else None,
                          seed=seed * 1000 + i))
    return specs


def recipe(size: str = "default", seed: int = 0) -> dict:
    if size not in SIZES:
        raise ValueError(f"world size {size!r}: expected one of {sorted(SIZES)}")
    r = dict(SIZES[size], version=VERSION, size=size, seed=seed, pool_families=list(POOL_FAMILIES),
             pretrain_families=list(PRETRAIN_FAMILIES), broken=BROKEN, maps_seed=1234)
    r["pool"] = dict(r["pool"], specs=pool_specs(r["pool"]["n"], r["dims"]["layers"], seed))
    r["targets"] = list(r["targets"])
    return r


def recipe_hash(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:12]


# --- building ----------------------------------------------------------------------------------------------
def build_world(root: str | None = None, size: str = "default", seed: int = 0, progress: bool = True) -> World:
    """The world for ``(size, seed)``: loaded from the cache, else built (resumably) and cached."""
    rec = recipe(size, seed)
    root = os.path.abspath(root or cache_root())
    name = f"world-{size}-{recipe_hash(rec)}"
    final = os.path.join(root, name)
    if os.path.exists(os.path.join(final, "world.json")):
        return load_world(final)
    with build_lock(final):  # another process may be building the same world
        if os.path.exists(os.path.join(final, "world.json")):
            return load_world(final)
        partial = os.path.join(root, f".partial-{name}")
        os.makedirs(partial, exist_ok=True)
        from .world_build import build_stages
        build_stages(partial, rec, progress)
        os.replace(partial, final)
    return load_world(final)


def load_world(path: str) -> World:
    """A built world from its folder (paths in world.json are relative to it)."""
    with open(os.path.join(path, "world.json")) as f:
        d = json.load(f)
    j = lambda p: os.path.join(path, p)
    return World(root=path, base_dir=j(d["base_dir"]), pool_dirs=[j(p) for p in d["pool_dirs"]],
                 broken={j(k): v for k, v in d["broken"].items()}, tasks={k: j(v) for k, v in d["tasks"].items()},
                 default_task=d["default_task"], target_tasks=list(d["target_tasks"]), related=d["related"],
                 adapters=d["adapters"], stats=d.get("stats", {}))


_SMALL: dict = {}


def small_world(root: str | None = None) -> World:
    """The small test world, built once per process (cached on disk like any world)."""
    key = root or cache_root()
    if key not in _SMALL:
        _SMALL[key] = build_world(root, size="small", progress=False)
    return _SMALL[key]


# --- the worlds every experiment CLI knows (one registry: ``--world`` choices come from here) -------------
@dataclasses.dataclass(frozen=True)
class WorldKind:
    """A world by name: ``build`` ("module:function", called as ``function(root=None, seed=0,
    progress=True) -> World``), its target tasks and default task (known without building it, so that
    arguments are checked before anything is built), and the dtype its base runs in on CPU."""
    build: str
    targets: tuple[str, ...]
    default_task: str
    dtype: str = "float32"


def _embedded(size: str) -> WorldKind:
    return WorldKind(f"experiments.world:build_{size}", tuple(SIZES[size]["targets"]), SIZES[size]["default_task"])


def build_default(root: str | None = None, seed: int = 0, progress: bool = True) -> World:
    return build_world(root, "default", seed, progress)


def build_small(root: str | None = None, seed: int = 0, progress: bool = True) -> World:
    return build_world(root, "small", seed, progress)


WORLDS: dict[str, WorldKind] = {"default": _embedded("default"), "small": _embedded("small"),
                                 _smollm2.NAME: WorldKind("experiments.world_smollm2:build", tuple(_smollm2.TARGETS),
                                                          _smollm2.DEFAULT_TASK)}


def get_world(name: str, root: str | None = None, seed: int = 0, progress: bool = True) -> World:
    """The world ``name`` of ``WORLDS``, built (resumably) on first use and cached."""
    import importlib
    kind = world_kind(name)
    module, fn = kind.build.split(":")
    return getattr(importlib.import_module(module), fn)(root=root, seed=seed, progress=progress)


def world_kind(name: str) -> WorldKind:
    if name not in WORLDS:
        from jaxmerge.errors import UserError
        raise UserError(f"world {name!r}: expected one of {', '.join(sorted(WORLDS))}")
    return WORLDS[name]


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m experiments.world", description="Build (or locate) a world.")
    p.add_argument("--world", default="default", choices=sorted(WORLDS))
    p.add_argument("--size", dest="world", choices=sorted(SIZES), help=argparse.SUPPRESS)  # older spelling
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None, help="cache folder (default $JAXMERGE_CACHE or ~/.cache/jaxmerge)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    from jaxmerge.errors import cli_errors
    t = time.time()
    with cli_errors("python -m experiments.world"):
        w = get_world(a.world, a.root, a.seed, progress=not a.quiet)
    print(f"world at {w.root} ({time.time() - t:.1f} s)")
    print(f"  base: {w.base_dir}\n  pool: {len(w.good_pool_dirs)} adapters + {len(w.broken)} broken")
    print(f"  targets: {', '.join(w.target_tasks)} (default {w.default_task})")
    for k, v in sorted(w.stats.get("zero_shot", {}).items()):
        print("  zero-shot " + k + ": " + "  ".join(f"{p} {a:.3f}" for p, a in v.items() if isinstance(a, float)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
