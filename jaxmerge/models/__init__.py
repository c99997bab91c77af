"""Model families: one module per family (``llama``, ``qwen3``, ``qwen2``, ``mistral``), each a
``FAMILY = schema.Family(...)`` — its ``model_type``, architectures, ``config.json`` reader and
parameter leaves. The registry is every module of this package that defines ``FAMILY``: adding a
family is adding one module (BUILD_NOTES, "Model families").

    family("qwen3")          # the Family of a model_type
    schema_of(config)        # the Schema (leaves and derived views) of a config
    read_config(d)           # a config.json dict → ModelConfig, through its family's reader
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any, Mapping

from ..errors import UserError
from .schema import Family, Schema, check_unique


@functools.cache
def families() -> dict[str, Family]:
    """``{model_type: Family}`` of every family module in this package."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "schema":
            continue
        fam = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(fam, Family):
            out[fam.model_type] = fam
    check_unique(out.values())
    return out


def family(model_type: str) -> Family:
    fams = families()
    if model_type not in fams:
        from ..config import ConfigError
        raise ConfigError(f"model_type={model_type!r} is not supported; supported: {sorted(fams)}")
    return fams[model_type]


@functools.lru_cache(maxsize=64)
def schema_of(config) -> Schema:
    """The parameter schema of ``config`` (its family's leaves that this config has)."""
    return Schema(family(config.family), config)


def read_config(d: Mapping[str, Any]):
    """``config.json`` → ``ModelConfig``: dispatch on ``model_type`` and check ``architectures``."""
    from ..config import ConfigError
    if not isinstance(d, Mapping):
        raise ConfigError("config.json is not a JSON object")
    model_type = d.get("model_type")
    if model_type is None:
        raise ConfigError(f"config.json has no model_type; supported: {sorted(families())}")
    fam = family(model_type)
    arch = d.get("architectures") or []
    if arch and arch[0] not in fam.architectures:
        raise ConfigError(f"model_type={model_type!r} architectures={list(arch)!r}: expected one of "
                          f"{list(fam.architectures)}")
    return fam.read(d)


__all__ = ["Family", "Schema", "UserError", "families", "family", "read_config", "schema_of"]
