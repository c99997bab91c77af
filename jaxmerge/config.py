"""Llama 3.x configuration, read from a Hugging Face ``config.json``.

Accepts the hub's legacy form (``rope_theta`` + ``rope_scaling``) and transformers 5's
``rope_parameters``; rope types ``default`` and ``llama3``. Anything this forward does not implement
fails with a ``ConfigError`` naming the field, instead of running a different model silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .errors import UserError

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_MODULES = MODULES[:4]
MLP_MODULES = MODULES[4:]


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
class LlamaConfig:
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

    # --- derived shapes -------------------------------------------------------------------
    def module_shape(self, module: str) -> tuple[int, int]:
        """(out, in) of one projection, as stored by transformers (``nn.Linear.weight``)."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
                "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}[module]

    @property
    def num_params(self) -> int:
        per_layer = sum(o * i for o, i in map(self.module_shape, MODULES)) + 2 * self.hidden_size
        emb = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * per_layer + self.hidden_size + emb * (1 if self.tie_word_embeddings else 2)

    # --- reading ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LlamaConfig":
        def need(key):
            if key not in d:
                raise ConfigError(f"config.json lacks required field '{key}'")
            return d[key]

        arch = d.get("architectures") or []
        if d.get("model_type", "llama") != "llama" or (arch and arch[0] not in ("LlamaForCausalLM", "LlamaModel")):
            raise ConfigError(f"model_type={d.get('model_type')!r} architectures={arch!r}: only Llama "
                              "(model_type 'llama', LlamaForCausalLM) is supported")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"hidden_act={act!r}: only 'silu' is supported")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ConfigError(f"{flag}=true: Llama 3.x has no projection biases; not supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ConfigError(f"pretraining_tp={d['pretraining_tp']}: only 1 is supported")
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = d.get("head_dim") or hidden // heads
        eos = d.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        return cls(
            vocab_size=need("vocab_size"), hidden_size=hidden, intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"), num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads, head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)), rope=_read_rope(d),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=eos, pad_token_id=d.get("pad_token_id"))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "LlamaConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _read_rope(d: Mapping[str, Any]) -> RopeConfig:
    """Both spellings: ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling``."""
    params = d.get("rope_parameters")
    if params is not None:
        field = "rope_parameters"
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = params
    else:
        field = "rope_scaling"
        theta = d.get("rope_theta", 10000.0)
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


# Well-known shapes for memory plans and benchmarks (no download needed).
LLAMA_3_1_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
    rope=RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 8192), tie_word_embeddings=False)
LLAMA_3_2_1B = LlamaConfig(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
    rope=RopeConfig(500000.0, "llama3", 32.0, 1.0, 4.0, 8192), tie_word_embeddings=True)
KNOWN = {"llama-3.1-8b": LLAMA_3_1_8B, "llama-3.2-1b": LLAMA_3_2_1B}
