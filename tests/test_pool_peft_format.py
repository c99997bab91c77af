"""PEFT config semantics against peft itself, plus the adapter-writing helpers the other
``test_pool_*`` files import (adapters written by the real peft library on tiny transformers Llamas)."""

from __future__ import annotations


import pytest

from jaxmerge.config import MODULES
from jaxmerge.models.schema import module_name
from jaxmerge.pool.peft_format import AdapterConfig, parse_key

NAMES = [module_name(l, m) for l in range(2) for m in MODULES] + ["lm_head", "model.embed_tokens"]








CONFIGS = [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=r".*\.layers\.1\.self_attn\.(q|k)_proj"),
    dict(target_modules=r".*(gate|up)_proj"),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[1]),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=0, layers_pattern="layers"),
    dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[0], layers_pattern=["blocks"]),
    dict(target_modules=["q_proj", "v_proj", "o_proj"], exclude_modules=["v_proj"]),
    dict(target_modules=["q_proj", "v_proj", "o_proj"], exclude_modules=r".*\.0\.self_attn\.o_proj"),
    dict(target_modules=["self_attn.q_proj", "mlp.up_proj", "lm_head"]),
    dict(target_modules="all-linear-like.*"),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_targets_match_peft(kw):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    peft_cfg = LoraConfig(**kw)
    ours = AdapterConfig.from_dict(peft_cfg.to_dict())
    for name in NAMES:
        theirs = check_target_module_exists(peft_cfg, name)
        theirs = bool(theirs) and type(theirs).__name__ != "_ExcludedModule"
        assert ours.targets(name) == theirs, (kw, name)


def test_rank_alpha_patterns_and_scale_match_peft():
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    kw = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
              rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 4}, alpha_pattern={r"v_proj": 3})
    peft_cfg = LoraConfig(**kw)
    ours = AdapterConfig.from_dict(peft_cfg.to_dict())
    for name in NAMES:
        r = peft_cfg.rank_pattern.get(get_pattern_key(peft_cfg.rank_pattern.keys(), name), peft_cfg.r)
        a = peft_cfg.alpha_pattern.get(get_pattern_key(peft_cfg.alpha_pattern.keys(), name), peft_cfg.lora_alpha)
        assert ours.rank_alpha(name) == (r, a)
        assert ours.scale(name) == pytest.approx(a / r)
    rs = AdapterConfig.from_dict(dict(LoraConfig(r=16, lora_alpha=8, use_rslora=True).to_dict()))
    assert rs.scale("model.layers.0.self_attn.q_proj") == pytest.approx(8 / 4)


def test_parse_key_variants():
    k = parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight")
    assert (k.kind, k.layer, k.module, k.part, k.bare) == ("lora", 3, "q_proj", "A", False)
    assert parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight").part == "B"
    assert parse_key("model.layers.1.mlp.up_proj.lora_A.weight").module == "up_proj"
    assert parse_key("base_model.model.layers.1.mlp.up_proj.lora_A.weight").bare
    assert parse_key("base_model.model.lm_head.lora_A.weight").kind == "other_lora"
    assert parse_key("base_model.model.model.embed_tokens.lora_embedding_A").kind == "other_lora"
    assert parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector").kind == "dora"
    assert parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias").kind == "bias"
    assert parse_key("base_model.model.lm_head.weight").kind == "full"
    assert parse_key("base_model.model.model.layers.0.mlp.fc_in.lora_A.weight").kind == "unknown_module"
    assert parse_key("base_model.model.model.layers.0.self_attn.q_proj.weight").kind == "unknown"
