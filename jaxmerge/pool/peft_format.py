"""The PEFT LoRA adapter format: ``adapter_config.json`` fields and ``adapter_model.safetensors`` keys.

``AdapterConfig.from_dict`` reads every field that changes what the adapter computes (REFERENCE §3):
``r``, ``lora_alpha``, ``use_rslora``, ``target_modules`` (list: name equals or ends with
"."+entry; string: ``re.fullmatch``), ``exclude_modules``, ``layers_to_transform`` /
``layers_pattern``, ``rank_pattern`` / ``alpha_pattern`` (first key with
``re.match(rf"(.*\\.)?({key})$", name)``), and the fields that make an adapter something other than
ΔW = s·B·A (DoRA, bias, ``modules_to_save``, trainable tokens, variants, base-altering inits).
Matching is ported from ``peft.tuners.tuners_utils.check_target_module_exists`` and
``peft.utils.other.get_pattern_key`` (peft 0.21) and tested against them.

``parse_key`` classifies a tensor name in any of the variants seen on the hub: with or without
``base_model.model.``, trained on a bare ``LlamaModel`` (``base_model.model.layers...``), the adapter
name left inside (``lora_A.default.weight``), ``lora_embedding_A/B``, ``lora_magnitude_vector``,
full ``embed_tokens`` / ``lm_head`` tensors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from ..errors import UserError
from ..models.schema import BLOCK

# init_lora_weights values whose initialisation rewrites the base weight (residual W − s·B₀A₀)
ALTERED_BASE_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
# config fields that turn LoRA into something that is not ΔW = s·B·A on a plain base
VARIANT_FIELDS = ("use_dora", "velora_config", "monteclora_config", "use_bdlora", "arrow_config", "kasa_config",
                  "alora_invocation_tokens", "use_qalora", "lora_bias", "target_parameters", "layer_replication",
                  "megatron_config")


class AdapterError(UserError, ValueError):
    """An adapter that cannot be read as a plain LoRA; the message is the report's reason."""


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    peft_type: str | None
    task_type: str | None
    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...] | str | None
    exclude_modules: tuple[str, ...] | str | None
    layers_to_transform: tuple[int, ...] | int | None
    layers_pattern: tuple[str, ...] | None
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    modules_to_save: tuple[str, ...] | None
    bias: str
    init_lora_weights: Any
    trainable_token_indices: Any
    variants: tuple[str, ...]            # names of VARIANT_FIELDS that are set
    base_model_name_or_path: str | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdapterConfig":
        if not isinstance(d, Mapping):
            raise AdapterError("adapter_config.json is not a JSON object")

        def names(v):
            if v is None or isinstance(v, str):
                return v
            return tuple(str(x) for x in v)

        try:
            r = int(d.get("r", 8))
            alpha = float(d.get("lora_alpha", 8))
        except (TypeError, ValueError):
            raise AdapterError(f"adapter_config.json: r={d.get('r')!r} lora_alpha={d.get('lora_alpha')!r} "
                               "are not numbers") from None
        if r <= 0:
            raise AdapterError(f"adapter_config.json: r={r} must be positive")
        layers = d.get("layers_to_transform")
        if isinstance(layers, list):
            layers = tuple(int(x) for x in layers)
        elif layers is not None:
            layers = int(layers)
        pattern = d.get("layers_pattern")
        pattern = (pattern,) if isinstance(pattern, str) else names(pattern)
        variants = tuple(f for f in VARIANT_FIELDS if d.get(f) not in (None, False, {}, [], ""))
        return cls(
            peft_type=d.get("peft_type"), task_type=d.get("task_type"), r=r, lora_alpha=alpha,
            use_rslora=bool(d.get("use_rslora", False)), target_modules=names(d.get("target_modules")),
            exclude_modules=names(d.get("exclude_modules")), layers_to_transform=layers, layers_pattern=pattern,
            rank_pattern=dict(d.get("rank_pattern") or {}), alpha_pattern=dict(d.get("alpha_pattern") or {}),
            modules_to_save=names(d.get("modules_to_save")) or None, bias=str(d.get("bias", "none")),
            init_lora_weights=d.get("init_lora_weights", True),
            trainable_token_indices=d.get("trainable_token_indices"), variants=variants,
            base_model_name_or_path=d.get("base_model_name_or_path"))

    # --- which modules, which rank and alpha (PEFT's own rules) -----------------------------------
    def targets(self, name: str) -> bool:
        """Whether PEFT would put this LoRA on module ``name`` (e.g. ``model.layers.3.self_attn.q_proj``)."""
        ex = self.exclude_modules
        if ex:
            if isinstance(ex, str):
                if re.fullmatch(ex, name):
                    return False
            elif name in ex or any(name.endswith(f".{e}") for e in ex):
                return False
        if self.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in self.modules_to_save):
            return False
        tm = self.target_modules
        if tm is None:
            return False
        if isinstance(tm, str):
            return re.fullmatch(tm, name) is not None
        if name in tm:
            return True
        found = any(name.endswith(f".{t}") for t in tm)
        if found and self.layers_to_transform is not None and self.layers_to_transform != ():
            if not self.layers_pattern:
                m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
            else:
                m = None
                for p in self.layers_pattern:
                    m = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name)
                    if m is not None:
                        break
            if m is None:
                return False
            idx = int(m["idx"])
            lt = self.layers_to_transform
            return idx == lt if isinstance(lt, int) else idx in lt
        return found

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """(r, alpha) of module ``name`` after ``rank_pattern`` / ``alpha_pattern``."""
        return (int(_pattern_value(self.rank_pattern, name, self.r)),
                float(_pattern_value(self.alpha_pattern, name, self.lora_alpha)))

    def scale(self, name: str) -> float:
        """s = alpha / r, or alpha / sqrt(r) with rsLoRA."""
        r, alpha = self.rank_alpha(name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    @property
    def altered_base(self) -> str | None:
        """The init name when it rewrote the base weight (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA)."""
        v = self.init_lora_weights
        if isinstance(v, str) and any(v.lower().startswith(p) for p in ALTERED_BASE_INITS):
            return v
        return None


def _pattern_value(patterns: Mapping[str, Any], name: str, default):
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return patterns[key]
    return default


# --- keys ---------------------------------------------------------------------------------------
_LAYER_LORA = re.compile(r"^(?P<prefix>(?:base_model\.model\.)?(?:model\.)?)layers\.(?P<layer>\d+)\."
                         r"(?P<path>[\w.]+?)\.(?P<part>lora_A|lora_B)(?:\.(?P<name>[\w-]+))?\.weight$")


@dataclasses.dataclass(frozen=True)
class Key:
    """A classified tensor name. kind: ``lora`` (layer, module, part 'A'|'B'), ``other_lora`` (a LoRA
    outside ``.layers.``, e.g. lm_head / embeddings: not merged), ``dora``, ``bias``,
    ``modules_to_save``, ``trainable_tokens``, ``full`` (a full embed/lm_head tensor), ``unknown``."""
    kind: str
    layer: int | None = None
    module: str | None = None
    part: str | None = None
    bare: bool = False
    target: str | None = None  # what the key is about, for messages


def parse_key(key: str) -> Key:
    if "lora_magnitude_vector" in key:
        return Key("dora", target=key)
    if ".modules_to_save." in key or key.endswith(".modules_to_save"):
        return Key("modules_to_save", target=key)
    if "trainable_tokens" in key:
        return Key("trainable_tokens", target=key)
    if key.endswith(".bias"):
        return Key("bias", target=key)
    m = _LAYER_LORA.match(key)
    if m:
        path = m["path"]
        block, _, module = path.rpartition(".")
        if module not in BLOCK or block != BLOCK[module]:
            return Key("unknown_module", layer=int(m["layer"]), target=path)
        bare = m["prefix"] == "base_model.model."
        return Key("lora", int(m["layer"]), module, m["part"][-1], bare, path)
    if re.search(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.|$)", key):
        target = re.split(r"\.lora_(?:embedding_)?[AB]", key)[0]
        target = target.removeprefix("base_model.model.").removeprefix("model.")
        return Key("other_lora", target=target)
    if re.search(r"(embed_tokens|lm_head)(\.base_layer)?\.weight$", key):
        return Key("full", target=key)
    return Key("unknown", target=key)
