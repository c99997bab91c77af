"""Checkpoint loading: sharded safetensors and every bad input reported clearly (hub ids through the
Hugging Face cache, offline: tests/test_hub.py)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmerge
from jaxmerge import safetensors_io as st
from helpers import hf_llama


def _logits(base, seed=0):
    tok = jnp.asarray(np.random.RandomState(seed).randint(3, 128, (1, 12)))
    return np.asarray(jaxmerge.forward(base.params, tok, base.config))


def test_sharded_checkpoint_equals_single_file(tmp_path):
    model = hf_llama(tmp_path / "one", seed=3)
    model.save_pretrained(tmp_path / "many", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "many" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path / "many") if f.endswith(".safetensors")]) > 2
    a = jaxmerge.load_base(str(tmp_path / "one"), dtype="float32")
    b = jaxmerge.load_base(str(tmp_path / "many"), dtype="float32")
    np.testing.assert_array_equal(_logits(a), _logits(b))


def test_missing_unexpected_and_misshaped_reported_together(tmp_path):
    hf_llama(tmp_path, seed=5)
    f = tmp_path / "model.safetensors"
    tensors = st.load(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
    tensors["model.extra.weight"] = np.zeros((2,), np.float32)
    st.save(f, tensors)
    with pytest.raises(jaxmerge.CheckpointError) as e:
        jaxmerge.load_base(str(tmp_path))
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in msg
    assert "mis-shaped tensor 'model.layers.0.self_attn.k_proj.weight'" in msg and "(3, 64)" in msg
    assert "unexpected tensor 'model.extra.weight'" in msg and str(f) in msg


def test_truncated_file_names_the_file(tmp_path):
    hf_llama(tmp_path, seed=6)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(st.SafetensorsError, match=f"{f}: truncated"):
        jaxmerge.load_base(str(tmp_path))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    hf_llama(tmp_path, seed=7)
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(jaxmerge.CheckpointError, match="never unpickles"):
        jaxmerge.load_base(str(tmp_path))


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "mistral", "model_type='mistral'"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("attention_bias", True, "attention_bias"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope_parameters.rope_type='yarn'"),
    ("rope_parameters", {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}, "lacks 'low_freq_factor'"),
])
def test_unsupported_config_names_the_field(tmp_path, field, value, match):
    hf_llama(tmp_path, seed=8)
    p = tmp_path / "config.json"
    cfg = json.loads(p.read_text())
    cfg[field] = value
    p.write_text(json.dumps(cfg))
    with pytest.raises(jaxmerge.ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        jaxmerge.load_base(str(tmp_path))


def test_not_a_folder_nor_hub_id():
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        jaxmerge.load_base("./no/such/dir")


def test_tokenizer_loaded_when_present(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    hf_llama(tmp_path, seed=9)
    assert jaxmerge.load_base(str(tmp_path)).tokenizer is None
    vocab = {f"w{i}": i for i in range(128)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0").save_pretrained(tmp_path)
    tok = jaxmerge.load_base(str(tmp_path)).tokenizer
    assert tok("w5 w7")["input_ids"] == [5, 7]
