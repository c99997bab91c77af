"""Which adapters enter a pool, and why the others do not.

``FilterPolicy()`` is the paper's filter (§3.1 and REFERENCE §1): PEFT LoRA for CAUSAL_LM from
safetensors only; no DoRA (or any other LoRA variant), bias, ``modules_to_save``, trainable tokens,
``rank_pattern`` / ``alpha_pattern``; shapes matching the base; finite values; the scaled update's
norm in (1, 1000]. Added for the real hub: inits that rewrote the base (PiSSA, OLoRA, CorDA, LoftQ,
LoRA-GA), duplicates by content, and a missing license when hub metadata (the README's front matter)
is available. ``.bin`` files are never unpickled whatever the policy.

The norm is the Frobenius norm of the whole scaled update over every merged module and layer,
‖ΔW‖ = sqrt(Σ_{m,l} ‖s·B·A‖²_F), computed from the factors as Σ tr((BᵀB)(AAᵀ)) — no dense ΔW.

Every check returns a reason string (the report's ``reason``) or None.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from .peft_format import AdapterConfig


@dataclasses.dataclass(frozen=True)
class FilterPolicy:
    peft_types: tuple[str, ...] = ("LORA",)
    task_types: tuple[str | None, ...] = ("CAUSAL_LM",)
    allow_bias: bool = False
    allow_modules_to_save: bool = False
    allow_trainable_tokens: bool = False
    allow_patterns: bool = False           # rank_pattern / alpha_pattern
    allow_altered_base: bool = False       # pissa / olora / corda / loftq / lora_ga
    norm_range: tuple[float, float] | None = (1.0, 1000.0)   # open below, closed above
    dedupe: bool = True
    require_license: bool = True           # only applied when hub metadata is available

    @classmethod
    def permissive(cls) -> "FilterPolicy":
        """Only what cannot be merged faithfully is refused (variants, bias, bad shapes, NaN, .bin)."""
        return cls(task_types=(), allow_modules_to_save=True, allow_trainable_tokens=True, allow_patterns=True,
                   norm_range=None, dedupe=False, require_license=False)


def check_config(cfg: AdapterConfig, policy: FilterPolicy) -> str | None:
    """Reasons decided by ``adapter_config.json`` alone."""
    if cfg.peft_type not in policy.peft_types:
        return f"peft_type {cfg.peft_type!r} is not one of {list(policy.peft_types)}"
    if policy.task_types and cfg.task_type not in policy.task_types:
        return f"task_type {cfg.task_type!r} is not one of {list(policy.task_types)}"
    if cfg.variants:  # never mergeable as s·B·A, whatever the policy
        what = "DoRA (use_dora)" if "use_dora" in cfg.variants else ", ".join(cfg.variants)
        return f"LoRA variant {what}: not a plain ΔW = s·B·A"
    if cfg.bias != "none":
        return f"bias={cfg.bias!r}: trains biases, which a LoRA merge cannot carry"
    if cfg.modules_to_save and not policy.allow_modules_to_save:
        return f"modules_to_save={list(cfg.modules_to_save)}: carries full trained modules"
    if cfg.trainable_token_indices and not policy.allow_trainable_tokens:
        return "trainable_token_indices set: trains particular vocabulary rows"
    if (cfg.rank_pattern or cfg.alpha_pattern) and not policy.allow_patterns:
        which = [n for n, v in (("rank_pattern", cfg.rank_pattern), ("alpha_pattern", cfg.alpha_pattern)) if v]
        return f"{' and '.join(which)} set (excluded by the paper's filter)"
    if cfg.altered_base and not policy.allow_altered_base:
        return f"init_lora_weights={cfg.altered_base!r} rewrote the base weights; ΔW is relative to another base"
    if cfg.target_modules is None:
        return "target_modules is empty"
    return None


def check_norm(norm: float, policy: FilterPolicy) -> str | None:
    if not math.isfinite(norm):
        return f"scaled ‖ΔW‖ = {norm} is not finite"
    if policy.norm_range is not None:
        lo, hi = policy.norm_range
        if not lo < norm <= hi:
            return f"scaled norm ‖ΔW‖_F = {norm:.4g} outside ({lo:g}, {hi:g}]"
    return None


def readme_license(folder: str) -> str | None:
    """The ``license:`` of a hub README's YAML front matter, or None."""
    path = os.path.join(folder, "README.md")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(200_000)
    m = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    lic = re.search(r"^license:\s*(.*)$", m[1], re.M)
    if not lic:
        return None
    value = lic[1].strip().strip("'\"")
    if not value:  # a YAML list on the following lines
        items = re.search(r"^license:\s*\n((?:\s*-\s*.+\n?)+)", m[1], re.M)
        value = items[1].split("-", 1)[1].strip() if items else ""
    return value or None


def check_license(folder: str, from_hub: bool, policy: FilterPolicy) -> str | None:
    if not (policy.require_license and from_hub):
        return None
    if readme_license(folder) is None:
        return "no license in the hub README metadata"
    return None
