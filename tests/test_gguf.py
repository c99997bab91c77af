"""GGUF as a base: a tiny Llama written by the ``gguf`` package's own writer (quantised tensor types,
llama.cpp's q/k row permutation, a byte-level BPE vocabulary with control tokens and a chat template)
loads through ``jaxmerge.load_base`` and equals transformers reading the same file
(``from_pretrained(folder, gguf_file=...)``): logits to 1e-4, token ids and the rendered chat template
exactly. The conversion runs without torch and is cached by the file's hash."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import gguf  # a run-time dependency: never skipped

import jaxmerge  # noqa: E402
from jaxmerge.gguf import GGUFError, gguf_folder  # noqa: E402
from helpers import GGUF_DIMS, write_tiny_gguf  # noqa: E402

TEXTS = ["the cat sat on the mat", "Hello 123  world\n\nthe end", "théâtre — ünïcode 🙂", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_gguf(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, tied=request.param)
    return path


def test_logits_and_tokenizer_equal_transformers(tiny_gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = jaxmerge.load_base(os.fspath(tiny_gguf), dtype="float32")
    folder, name = os.path.dirname(tiny_gguf), os.path.basename(tiny_gguf)
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    assert base.config.tie_word_embeddings == ("output.weight" not in {t.name for t in gguf.GGUFReader(tiny_gguf).tensors})
    tok = base.tokenizer
    for s in TEXTS:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        assert ids == hf_tok(s)["input_ids"], s
        assert tok.decode(ids) == hf_tok.decode(ids) == s
    msgs = [{"role": "user", "content": TEXTS[0]}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token)
    rows = [tok(rendered)["input_ids"], tok(TEXTS[1])["input_ids"]]
    T = max(map(len, rows))
    ids = np.zeros((2, T), np.int32)
    mask = np.zeros((2, T), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    ours = np.asarray(jaxmerge.forward(base.params, jnp.asarray(ids), base.config, attention_mask=jnp.asarray(mask)))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - theirs[keep]).max() < 1e-4
    assert np.abs(theirs[keep]).max() > 0.5  # not a degenerate model


def test_cached_by_hash_and_rebuilt_for_another_file(tiny_gguf, tmp_path, monkeypatch):
    import jaxmerge.gguf as g
    first = gguf_folder(tiny_gguf, progress=False)

    def no_conversion(*a, **k):
        raise RuntimeError("converted again")

    monkeypatch.setattr(g, "convert", no_conversion)
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(open(tiny_gguf, "rb").read())
    assert gguf_folder(copy, progress=False) == first  # same bytes → the cached folder, no work
    other = tmp_path / "other.gguf"
    write_tiny_gguf(other, tied=True, seed=1)
    with pytest.raises(RuntimeError, match="converted again"):  # other bytes → a conversion
        gguf_folder(other, progress=False)
    assert sorted(os.listdir(first)) == ["config.json", "gguf_source.json", "model.safetensors",
                                         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_conversion_needs_no_torch(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, tied=True, seed=2)
    code = ("import sys; sys.modules['torch'] = None\n"
            "import jaxmerge\n"
            f"b = jaxmerge.load_base({os.fspath(path)!r}, dtype='float32')\n"
            "print(b.config.num_hidden_layers, b.tokenizer('the cat')['input_ids'])\n")
    env = dict(os.environ, JAXMERGE_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == str(GGUF_DIMS["layers"])


def test_unsupported_files_are_named_errors(tmp_path):
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        jaxmerge.load_base(os.fspath(not_gguf))
    other = tmp_path / "qwen.gguf"
    w = gguf.GGUFWriter(os.fspath(other), "qwen2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((32, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="general.architecture='qwen2'; only 'llama'"):
        gguf_folder(other, progress=False)
