"""Pool manifests: a named list of hub adapter ids, with the configs their authors recorded.

Shipped with the package, one JSON file per manifest in ``jaxmerge/data/pools/`` (the registry is that
folder: a manifest's name is its file name):

* ``paper-llama31-8b`` — the paper's Llama-3.1-8B-Instruct pool, the authors' 960 hub ids with the
  ``r``, ``lora_alpha`` and ``target_modules`` they recorded (955 known; 5 ids without a config);
* ``paper-qwen3-4b`` — the authors' Qwen3-4B-Instruct-2507 pool, 1,956 ids (no configs recorded).

A manifest name (or a JSON file ``{"adapters": [{"id": ..., "r"?, "lora_alpha"?, "target_modules"?}]}``)
is accepted wherever pool sources are: ``--pool``, ``jaxmerge pool stats|filter|fetch``, ``load_pool``.
Each entry becomes a hub source that carries its recorded config, and an adapter whose downloaded
``adapter_config.json`` disagrees with it is reported (``mismatch``), never merged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

from ..errors import UserError

POOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "pools")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One adapter of a manifest: its hub id and the config recorded for it (None = not recorded)."""
    id: str
    r: int | None = None
    lora_alpha: float | None = None
    target_modules: tuple[str, ...] | str | None = None

    @property
    def recorded(self) -> bool:
        return self.r is not None

    def mismatch(self, cfg) -> str | None:
        """Why an ``AdapterConfig`` disagrees with what was recorded, or None."""
        diffs = []
        if self.r is not None and cfg.r != self.r:
            diffs.append(f"r {cfg.r} (recorded {self.r})")
        if self.lora_alpha is not None and float(cfg.lora_alpha) != float(self.lora_alpha):
            diffs.append(f"lora_alpha {cfg.lora_alpha:g} (recorded {self.lora_alpha:g})")
        if self.target_modules is not None:
            got, want = cfg.target_modules, self.target_modules
            same = (sorted(got) == sorted(want)) if not isinstance(got, str) and not isinstance(want, str) \
                else got == want
            if not same:
                diffs.append(f"target_modules {_show(got)} (recorded {_show(want)})")
        return "; ".join(diffs) or None


def _show(t) -> str:
    return repr(t) if isinstance(t, str) or t is None else repr(sorted(t))


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    description: str
    base_model: str | None
    entries: tuple[Entry, ...]
    path: str


class ManifestError(UserError, ValueError):
    """A manifest file that cannot be read; the message names it."""


def names() -> list[str]:
    """The shipped manifests' names."""
    return sorted(f[:-5] for f in os.listdir(POOLS_DIR) if f.endswith(".json"))


def is_manifest(spec: str | os.PathLike) -> bool:
    """A shipped manifest's name, or a JSON file whose ``adapters`` are objects with an ``id``."""
    spec = os.fspath(spec)
    if spec in names():
        return True
    if not (spec.endswith(".json") and os.path.isfile(spec)):
        return False
    try:
        with open(spec) as f:
            adapters = json.load(f).get("adapters")
    except (ValueError, AttributeError, OSError):
        return False
    return isinstance(adapters, list) and bool(adapters) and all(isinstance(a, dict) and "id" in a for a in adapters)


@functools.lru_cache(maxsize=16)
def load(spec: str) -> Manifest:
    """A manifest by name (shipped) or path."""
    path = os.path.join(POOLS_DIR, f"{spec}.json") if spec in names() else os.fspath(spec)
    try:
        with open(path) as f:
            d = json.load(f)
        entries = tuple(_entry(a) for a in d["adapters"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"manifest {spec}: cannot be read ({type(e).__name__}: {e})") from None
    name = d.get("name") or os.path.basename(path).removesuffix(".json")
    return Manifest(name, d.get("description", ""), d.get("base_model"), entries, path)


def _entry(a: dict[str, Any]) -> Entry:
    tm = a.get("target_modules")
    tm = tm if tm is None or isinstance(tm, str) else tuple(str(x) for x in tm)
    return Entry(str(a["id"]), None if a.get("r") is None else int(a["r"]),
                 None if a.get("lora_alpha") is None else float(a["lora_alpha"]), tm)
