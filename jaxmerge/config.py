"""Model configuration, read from a Hugging Face ``config.json`` through its family's reader.

``ModelConfig`` is one frozen, hashable dataclass for every family (the forward's static argument);
``family`` names the family module (``jaxmerge.models``) whose schema gives the parameters. Each family
reads its own ``config.json`` (its fields, transformers' defaults for the fields a file omits) with the
helpers below. Accepts the hub's legacy form (``rope_theta`` + ``rope_scaling``) and transformers 5's
``rope_parameters``; rope types ``default`` and ``llama3``. Anything this forward does not implement
fails with a ``ConfigError`` naming the field, instead of running a different model silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .errors import UserError
from .models.schema import BLOCK, MODULES, module_shape as _module_shape

ATTN_MODULES = tuple(m for m in MODULES if BLOCK[m] == "self_attn")
MLP_MODULES = tuple(m for m in MODULES if BLOCK[m] == "mlp")


class ConfigError(UserError, ValueError):
    """A config.json this library cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    theta: float = 500000.0
    rope_type: str = "default"  # "default" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope: RopeConfig = RopeConfig()
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    family: str = "llama"                  # model_type of the family (``jaxmerge.models``)
    sliding_window: int | None = None      # keys visible to query t: t − window < s ≤ t, in ``sliding_layers``
    sliding_layers: tuple[int, ...] = ()   # layers that use the window

    # --- derived shapes -------------------------------------------------------------------------
    def module_shape(self, module: str) -> tuple[int, int]:
        """(out, in) of one projection, as stored by transformers (``nn.Linear.weight``)."""
        return _module_shape(self, module)

    @property
    def num_params(self) -> int:
        from .models import schema_of
        return schema_of(self).num_params

    # --- reading ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        from .models import read_config
        return read_config(d)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            return cls.from_dict(json.load(f))


LlamaConfig = ModelConfig  # the name of the single-family releases; every family's config is a ModelConfig


# --- helpers for the families' readers ----------------------------------------------------------------
def refuse(d: Mapping[str, Any], family: str, **fields: str) -> None:
    """ConfigError for the first of ``fields`` (name → why) that ``d`` sets to a true value."""
    for name, why in fields.items():
        if d.get(name):
            raise ConfigError(f"{name}={d[name]!r}: {why}; not supported for model_type {family!r}")


def read_decoder(d: Mapping[str, Any], family: str, defaults: Mapping[str, Any], **extra) -> ModelConfig:
    """The fields every family shares; ``defaults`` are transformers' values for fields ``d`` omits
    (``head_dim`` / ``num_key_value_heads`` default to hidden/heads and heads unless given there)."""
    def get(key):
        if key in d and d[key] is not None:
            return d[key]
        if key in defaults:
            return defaults[key]
        raise ConfigError(f"config.json lacks required field '{key}'")

    act = get("hidden_act")
    if act != "silu":
        raise ConfigError(f"hidden_act={act!r}: only 'silu' is supported")
    if d.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError(f"pretraining_tp={d['pretraining_tp']}: only 1 is supported")
    heads, hidden = int(get("num_attention_heads")), int(get("hidden_size"))
    head_dim = d.get("head_dim") or defaults.get("head_dim") or hidden // heads
    kv = d.get("num_key_value_heads") or defaults.get("num_key_value_heads") or heads
    if heads % kv:
        raise ConfigError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    eos = d.get("eos_token_id", defaults.get("eos_token_id"))
    eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    return ModelConfig(
        vocab_size=int(get("vocab_size")), hidden_size=hidden, intermediate_size=int(get("intermediate_size")),
        num_hidden_layers=int(get("num_hidden_layers")), num_attention_heads=heads, num_key_value_heads=int(kv),
        head_dim=int(head_dim), rms_norm_eps=float(get("rms_norm_eps")), rope=_read_rope(d, defaults["rope_theta"]),
        tie_word_embeddings=bool(get("tie_word_embeddings")),
        max_position_embeddings=int(get("max_position_embeddings")),
        bos_token_id=d.get("bos_token_id", defaults.get("bos_token_id")), eos_token_id=eos,
        pad_token_id=d.get("pad_token_id", defaults.get("pad_token_id")), family=family, **extra)


def read_layer_windows(d: Mapping[str, Any], num_layers: int) -> dict:
    """Qwen2/Qwen3-style sliding windows: ``layer_types`` when given, else ``use_sliding_window`` with
    ``max_window_layers`` (layers ≥ it slide), as transformers derives them. → ModelConfig fields."""
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    types = d.get("layer_types")
    if types is None:
        types = ["sliding_attention" if window is not None and i >= d.get("max_window_layers", 28)
                 else "full_attention" for i in range(num_layers)]
    bad = sorted(set(types) - {"full_attention", "sliding_attention"})
    if bad or len(types) != num_layers:
        raise ConfigError(f"layer_types={list(types)!r}: expected {num_layers} of 'full_attention' / "
                          "'sliding_attention'")
    layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if layers and window is None:  # transformers: sliding_window is None unless use_sliding_window
        layers = ()
    return {"sliding_window": int(window) if layers else None, "sliding_layers": layers}


def _read_rope(d: Mapping[str, Any], default_theta: float) -> RopeConfig:
    """Both spellings: ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
    params = d.get("rope_parameters")
    if params is not None:
        field = "rope_parameters"
        theta = params.get("rope_theta", d.get("rope_theta", default_theta))
        scaling = params
    else:
        field = "rope_scaling"
        theta = d.get("rope_theta", default_theta)
        scaling = d.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    if rope_type != "llama3":
        raise ConfigError(f"{field}.rope_type={rope_type!r}: only 'default' and 'llama3' are supported")
    try:
        return RopeConfig(theta=float(theta), rope_type="llama3", factor=float(scaling["factor"]),
                          low_freq_factor=float(scaling["low_freq_factor"]),
                          high_freq_factor=float(scaling["high_freq_factor"]),
                          original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
        raise ConfigError(f"{field} of rope_type 'llama3' lacks {e.args[0]!r}") from None


# Well-known shapes for memory plans and benchmarks (no download needed), from the hub's config.json.
LLAMA_3_1_8B = ModelConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
    rope=RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 8192), tie_word_embeddings=False)
LLAMA_3_2_1B = ModelConfig(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
    rope=RopeConfig(500000.0, "llama3", 32.0, 1.0, 4.0, 8192), tie_word_embeddings=True)
QWEN3_4B = ModelConfig(  # Qwen/Qwen3-4B-Instruct-2507, the authors' second base
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
    rope=RopeConfig(5000000.0), tie_word_embeddings=True, max_position_embeddings=262144, family="qwen3")
KNOWN = {"llama-3.1-8b": LLAMA_3_1_8B, "llama-3.2-1b": LLAMA_3_2_1B, "qwen3-4b": QWEN3_4B}


def known_or_json(name: str | os.PathLike) -> ModelConfig:
    """A ``KNOWN`` model name, a ``config.json`` file or a folder holding one."""
    if name in KNOWN:
        return KNOWN[name]
    path = os.fspath(name)
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json")):
        return ModelConfig.from_json(path)
    raise ConfigError(f"{path!r} is neither a known model ({', '.join(KNOWN)}) nor a config.json file or a "
                      "folder holding one")
