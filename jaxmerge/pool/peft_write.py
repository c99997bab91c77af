"""PEFT LoRA adapters written without peft or torch: the one PEFT writer of the library.

    cfg = lora_config(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=True)
    write_adapter("out/adapter", cfg, {lora_key(0, "q_proj", "A"): a, lora_key(0, "q_proj", "B"): b, ...})

``lora_config`` gives the ``adapter_config.json`` dict with the keys and values
``peft.LoraConfig.save_pretrained`` writes for the same arguments (the portable core that PEFT has written
for many releases; fields PEFT fills with defaults are left to it, so older PEFTs and vLLM read it too).
``write_adapter`` writes that config and ``adapter_model.safetensors`` (``{"format": "pt"}``, PEFT's tensor
keys), each file atomically. Tests prove PEFT reads back the same ``LoraConfig`` and the same logits.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

from ..atomic import write_json
from ..safetensors_io import save

# Fields PEFT's LoraConfig accepts that this writer may set explicitly; anything else is a typo.
_FIELDS = {"r", "lora_alpha", "target_modules", "use_rslora", "layers_to_transform", "layers_pattern",
           "base_model_name_or_path", "task_type", "inference_mode", "lora_dropout", "bias", "use_dora",
           "rank_pattern", "alpha_pattern", "modules_to_save", "init_lora_weights", "exclude_modules",
           "fan_in_fan_out", "lora_bias", "revision"}


def lora_config(r: int, lora_alpha: float, target_modules: Iterable[str] | str, **fields: Any) -> dict:
    """The ``adapter_config.json`` dict of a LoRA (PEFT's key names and defaults)."""
    unknown = set(fields) - _FIELDS
    if unknown:
        raise TypeError(f"lora_config: unknown PEFT LoraConfig fields {sorted(unknown)}")
    targets = target_modules if isinstance(target_modules, str) else sorted(set(target_modules))
    alpha = int(lora_alpha) if float(lora_alpha).is_integer() else float(lora_alpha)
    cfg = {"alpha_pattern": {}, "base_model_name_or_path": None, "bias": "none", "exclude_modules": None,
           "fan_in_fan_out": False, "inference_mode": False, "init_lora_weights": True, "layers_pattern": None,
           "layers_to_transform": None, "lora_alpha": alpha, "lora_bias": False, "lora_dropout": 0.0,
           "modules_to_save": None, "peft_type": "LORA", "r": int(r), "rank_pattern": {}, "revision": None,
           "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}
    cfg.update(fields)
    if cfg["layers_to_transform"] is not None and not isinstance(cfg["layers_to_transform"], int):
        cfg["layers_to_transform"] = [int(i) for i in cfg["layers_to_transform"]]
    return dict(sorted(cfg.items()))


def lora_key(layer: int, module: str, factor: str, block: str | None = None, prefix: str = "base_model.model.model") -> str:
    """PEFT's tensor key of one factor (``"A"`` [r, in] or ``"B"`` [out, r]) of ``module`` in ``layer``."""
    if factor not in ("A", "B"):
        raise ValueError(f"factor {factor!r}: expected 'A' or 'B'")
    if block is None:
        from ..models.schema import BLOCK  # the module's block, as the family schema declares it
        block = BLOCK[module]
    return f"{prefix}.layers.{layer}.{block}.{module}.lora_{factor}.weight"


def write_adapter(path: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in ``path`` (created); tensors may be empty
    (then no weights file is written: a config-only folder, e.g. a broken test adapter)."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    if tensors:
        save(os.path.join(path, "adapter_model.safetensors"), tensors)
    write_json(os.path.join(path, "adapter_config.json"), dict(config), indent=2)
    return path
