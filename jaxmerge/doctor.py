"""``jaxmerge doctor``: what this installation has — versions, devices, caches, optional pieces.

Prints one line per fact; ``--json`` for machines. Nothing is downloaded or built.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os

CORE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "safetensors",
        "huggingface_hub", "datasets", "nevergrad", "numpy", "jinja2", "gguf")
# optional pieces: import name → (what needs it, how to get it)
OPTIONAL = {
    "torch": ("tests (oracle) and `jaxmerge bench`", 'pip install -e ".[test]" (CPU torch, see README)'),
    "peft": ("tests (oracle) and `jaxmerge bench`", 'pip install -e ".[test]"'),
    "mergekit": ("mergekit oracle tests and `jaxmerge bench export`", 'pip install -e ".[test]"'),
    "pytest": ("the test suite", 'pip install -e ".[test]"'),
    "vllm": ("serving an exported adapter (experiments/serve_vllm.py)", "its own venv, see README"),
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def facts() -> dict:
    from . import __version__
    from .cache import cache_root
    out: dict = {"jaxmerge": __version__, "packages": {d: _version(d) for d in CORE}}
    try:
        import jax
        out["jax_backend"] = jax.default_backend()
        out["devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # a broken jaxlib is exactly what doctor must report, not die on
        out["devices"] = f"unavailable: {type(e).__name__}: {e}"
    out["caches"] = {
        "jaxmerge (JAXMERGE_CACHE)": cache_root(),
        "huggingface hub (HF_HUB_CACHE)": _hf_cache(),
        "jax compilation (JAX_COMPILATION_CACHE_DIR)": os.environ.get("JAX_COMPILATION_CACHE_DIR") or "off",
    }
    out["offline"] = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k)}
    out["optional"] = {name: {"importable": importlib.util.find_spec(name) is not None, "for": why, "install": how}
                       for name, (why, how) in OPTIONAL.items()}
    return out


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants
        return constants.HF_HUB_CACHE
    except Exception as e:
        return f"unknown ({e})"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="versions, devices, caches and optional pieces of this install")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    f = facts()
    if args.json:
        print(json.dumps(f, indent=1))
        return 0
    print(f"jaxmerge {f['jaxmerge']}")
    for name, v in f["packages"].items():
        print(f"  {name:<18} {v or 'NOT INSTALLED'}")
    print(f"jax backend: {f.get('jax_backend', '?')}; devices: {f['devices']}")
    print("caches:")
    for what, where in f["caches"].items():
        print(f"  {what:<46} {where}")
    if f["offline"]:
        print("offline: " + ", ".join(f"{k}={v}" for k, v in f["offline"].items()))
    print("optional:")
    for name, o in f["optional"].items():
        state = "yes" if o["importable"] else f"no  → {o['install']}"
        print(f"  {name:<10} {state}   ({o['for']})")
    return 0
