"""Target LoRAs a user brings go through the pool loader: an rsLoRA PEFT adapter on some layers, written
by PEFT and put in slot 0 of a pool, gives ``PeftModel``'s logits (1e-4); a LoRA jaxmerge trained and
saved reads back with its own factors and scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxmerge
from helpers import hf_model, make_pool, write_adapter
from jaxmerge.adaptive.space import LoraSpec
from jaxmerge.adaptive.target_lora import as_pool, init_lora, load_target, save_peft
from jaxmerge.pool.derive import with_target
from jaxmerge.pool.peft_format import AdapterError


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_rslora_target_in_slot_0_equals_peftmodel(tmp_path, model_type):
    from peft import PeftModel
    model = hf_model(tmp_path / "base", model_type, seed=5)
    adapter = str(tmp_path / "target")
    write_adapter(model, adapter, seed=3, r=4, lora_alpha=16, use_rslora=True, layers_to_transform=[1],
                  target_modules=["q_proj", "v_proj", "down_proj"])
    base = jaxmerge.load_base(str(tmp_path / "base"), dtype="float32")
    target = load_target(adapter, base.config)
    assert target.names == (f"target:{adapter}",)
    np.testing.assert_allclose(target.modules["q_proj"].scale, [16 / 2.0])  # rsLoRA: alpha / sqrt(r)
    assert np.asarray(target.modules["q_proj"].present).tolist() == [[False, True]]
    pool = with_target(make_pool(base.config), target)
    n, L = pool.num_adapters, pool.num_layers
    slot0 = jnp.zeros((n, L)).at[0].set(1.0)  # the merged pool, only slot 0 switched on
    tok = np.random.RandomState(1).randint(3, 128, (2, 14))
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config,
                                       adapters=pool.factored({m: slot0 for m in pool.modules})))
    with torch.no_grad():
        ref = PeftModel.from_pretrained(model, adapter).eval()(torch.tensor(tok)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    off = np.asarray(jaxmerge.forward(base.params, jnp.asarray(tok), base.config))
    assert np.abs(off - ref).max() > 1e-2  # the target LoRA matters


def test_saved_lora_reads_back_with_its_factors_and_scale(tmp_path):
    from helpers import hf_llama
    hf_llama(tmp_path / "base", seed=2)
    base = jaxmerge.load_base(str(tmp_path / "base"), dtype="float32")
    spec = LoraSpec(rank=4, alpha=16.0, modules=("q_proj", "o_proj", "up_proj"))
    lora = init_lora(base.config, spec, jax.random.key(0))
    lora["b"] = {m: 0.1 * jax.random.normal(jax.random.key(i), b.shape) for i, (m, b) in enumerate(lora["b"].items())}
    save_peft(lora, spec, base.config, str(tmp_path / "ad"))
    got, want = load_target(str(tmp_path / "ad"), base.config), as_pool(lora, spec.scale)
    assert set(got.modules) == set(want.modules)
    for m in want.modules:
        for f in ("a", "b", "scale", "present"):
            np.testing.assert_array_equal(np.asarray(getattr(got.modules[m], f)), np.asarray(getattr(want.modules[m], f)))


def test_unusable_target_lora_names_the_reason(tmp_path):
    model = hf_model(tmp_path / "base", "llama", seed=1)
    write_adapter(model, tmp_path / "dora", seed=1, use_dora=True)
    base = jaxmerge.load_base(str(tmp_path / "base"), dtype="float32")
    with pytest.raises(AdapterError, match=r"target LoRA .*dora: LoRA variant DoRA"):
        load_target(str(tmp_path / "dora"), base.config)
