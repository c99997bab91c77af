"""A Llama-architecture ``.gguf`` file → a cached Hugging Face checkpoint folder (no torch).

    folder = gguf_folder("SmolLM2-135M-Instruct.Q4_1.gguf")   # converted once, then reused
    base = jaxmerge.load_base("SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")   # the same, via resolve

The folder — ``config.json``, float32 ``model.safetensors`` (sharded above ``SHARD_BYTES``),
``tokenizer.json`` + ``tokenizer_config.json`` with the file's chat template — lives under
``$JAXMERGE_CACHE/gguf/<sha256 of the file>-v<CONVERTER_VERSION>``, is built under a file lock in a
partial folder and published atomically, so an interrupted conversion never leaves a half folder.

Weights: read with ``gguf.GGUFReader`` and dequantised by ``gguf.quants.dequantize`` (the gguf
package's own NumPy code for every quantised type); llama.cpp's row permutation of q and k (it
interleaves the two rotary halves of each head) is undone, so the rows are transformers' again.
Tokenizer: built from the file's metadata with ``tokenizers`` (byte-level BPE: vocabulary, merges,
control tokens as special tokens, the pre-tokenizer split named by ``tokenizer.ggml.pre``);
transformers' own GGUF tokenizer path imports torch, this one does not.

Anything this converter cannot reproduce faithfully — another architecture, a sentencepiece
vocabulary, rope scaling, an unknown tensor — is a ``GGUFError`` naming it.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .atomic import partial_dir, publish, write_json
from .cache import build_lock, cache_root
from .errors import UserError, require
from .progress import bar
from .registry_source import file_sha256
from .safetensors_io import save as save_safetensors

CONVERTER_VERSION = 1
SHARD_BYTES = 2 << 30
# llama.cpp's names → transformers' (N = layer)
TENSOR_NAMES = [
    (re.compile(r"token_embd\.weight"), "model.embed_tokens.weight"),
    (re.compile(r"output_norm\.weight"), "model.norm.weight"),
    (re.compile(r"output\.weight"), "lm_head.weight"),
    (re.compile(r"blk\.(\d+)\.attn_norm\.weight"), "model.layers.{}.input_layernorm.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_norm\.weight"), "model.layers.{}.post_attention_layernorm.weight"),
    (re.compile(r"blk\.(\d+)\.attn_q\.weight"), "model.layers.{}.self_attn.q_proj.weight"),
    (re.compile(r"blk\.(\d+)\.attn_k\.weight"), "model.layers.{}.self_attn.k_proj.weight"),
    (re.compile(r"blk\.(\d+)\.attn_v\.weight"), "model.layers.{}.self_attn.v_proj.weight"),
    (re.compile(r"blk\.(\d+)\.attn_output\.weight"), "model.layers.{}.self_attn.o_proj.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_gate\.weight"), "model.layers.{}.mlp.gate_proj.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_up\.weight"), "model.layers.{}.mlp.up_proj.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_down\.weight"), "model.layers.{}.mlp.down_proj.weight"),
]
# tokenizer.ggml.pre → the regex that splits text before byte-level BPE (None: ByteLevel's own GPT-2 split)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_SPLITS = {"default": None, "gpt2": None, "smollm": None, "llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT,
              "llama-v3": LLAMA3_SPLIT, "smaug-bpe": LLAMA3_SPLIT, "dbrx": LLAMA3_SPLIT}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


class GGUFError(UserError, ValueError):
    """A .gguf file this converter cannot turn into a faithful Llama checkpoint; the message says why."""


def is_gguf(path: str | os.PathLike) -> bool:
    """A file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def gguf_folder(path: str | os.PathLike, progress: bool = True) -> str:
    """The converted folder of ``path`` (converted now if it is not in the cache)."""
    path = os.path.abspath(os.fspath(path))
    if not is_gguf(path):
        raise GGUFError(f"{path}: not a GGUF file (no 'GGUF' magic)")
    final = os.path.join(cache_root(), "gguf", f"{file_sha256(path, progress)}-v{CONVERTER_VERSION}")
    if os.path.exists(os.path.join(final, "config.json")):
        return final
    with build_lock(final):
        if not os.path.exists(os.path.join(final, "config.json")):
            tmp = partial_dir(final)
            convert(path, tmp, progress)
            publish(tmp, final)
    return final


# --- metadata ---------------------------------------------------------------------------------
def _fields(reader) -> dict:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            out[name] = field.contents()
        except Exception as e:  # a value type the reader cannot decode: fail only if it is needed
            out[name] = GGUFError(f"field {name!r}: {type(e).__name__}: {e}")
    return out


def _need(meta: dict, key: str, path: str):
    if key not in meta:
        raise GGUFError(f"{path}: metadata lacks {key!r}")
    v = meta[key]
    if isinstance(v, GGUFError):
        raise v
    return v


def hf_config(meta: dict, path: str, tied: bool) -> dict:
    """transformers' ``config.json`` for a Llama GGUF (``general.architecture == 'llama'``)."""
    arch = _need(meta, "general.architecture", path)
    if arch != "llama":
        raise GGUFError(f"{path}: general.architecture={arch!r}; only 'llama' is supported")
    a = lambda k: _need(meta, f"llama.{k}", path)
    for key in ("llama.rope.scaling.type", "llama.rope.scaling.factor"):
        if key in meta and meta[key] not in ("none", 1.0):
            raise GGUFError(f"{path}: {key}={meta[key]!r}; rope scaling in GGUF is not supported")
    if "llama.expert_count" in meta:
        raise GGUFError(f"{path}: a mixture of experts (llama.expert_count); not supported")
    heads, hidden = int(a("attention.head_count")), int(a("embedding_length"))
    head_dim = int(meta.get("llama.attention.key_length") or meta.get("llama.rope.dimension_count") or hidden // heads)
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise GGUFError(f"{path}: partial rotary (rope.dimension_count={meta['llama.rope.dimension_count']} "
                        f"< head_dim {head_dim}); not supported")
    vocab = int(meta.get("llama.vocab_size") or len(_need(meta, "tokenizer.ggml.tokens", path)))
    tok = lambda k: None if meta.get(f"tokenizer.ggml.{k}") is None else int(meta[f"tokenizer.ggml.{k}"])
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": hidden, "intermediate_size": int(a("feed_forward_length")),
            "num_hidden_layers": int(a("block_count")), "num_attention_heads": heads,
            "num_key_value_heads": int(meta.get("llama.attention.head_count_kv") or heads), "head_dim": head_dim,
            "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)), "rope_scaling": None,
            "max_position_embeddings": int(a("context_length")), "vocab_size": vocab, "tie_word_embeddings": tied,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": tok("bos_token_id"),
            "eos_token_id": tok("eos_token_id"), "pad_token_id": tok("padding_token_id"), "torch_dtype": "float32"}


# --- weights ------------------------------------------------------------------------------------
def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: its rows are (head, i, half) where transformers' are (head, half, i)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name: str) -> str | None:
    for rx, target in TENSOR_NAMES:
        m = rx.fullmatch(name)
        if m:
            return target.format(*m.groups())
    return None


def hf_tensors(reader, config: dict, path: str, progress: bool = True):
    """Yield (transformers key, float32 array) for every tensor of the file, dequantised and unpermuted."""
    gguf = require("gguf", "reading .gguf files")
    unknown = [t.name for t in reader.tensors if hf_name(t.name) is None]
    if unknown:
        raise GGUFError(f"{path}: tensors a Llama checkpoint does not have: {unknown[:8]}"
                        + (" (rope_freqs holds rope scaling, which is not supported)" if "rope_freqs.weight" in unknown else ""))
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    with bar(len(reader.tensors), "dequantise GGUF", "tensor", progress) as b:
        for t in reader.tensors:
            key = hf_name(t.name)
            shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists dimensions innermost first
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
            proj = key.split(".")[-2]
            if proj in heads:
                w = unpermute(w, heads[proj])
            yield key, np.ascontiguousarray(w)
            b.update(1)


def _write_weights(tensors, folder: str) -> None:
    """``model.safetensors``, or shards of ≤ SHARD_BYTES (each written when full, so memory holds one)
    with transformers' index file."""
    weight_map, shard, size, n = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_safetensors(os.path.join(folder, name), shard)
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for key, w in tensors:
        if shard and size + w.nbytes > SHARD_BYTES:
            flush()
        shard[key], size = w, size + w.nbytes
    if n == 0:
        save_safetensors(os.path.join(folder, "model.safetensors"), shard)
        return
    if shard:
        flush()
    write_json(os.path.join(folder, "model.safetensors.index.json"), {"metadata": {}, "weight_map": weight_map})


# --- tokenizer ----------------------------------------------------------------------------------
def build_tokenizer(meta: dict, path: str):
    """A ``tokenizers.Tokenizer`` and the special-token names, from the file's vocabulary metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    kind = _need(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') vocabularies are "
                        "supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_SPLITS:
        raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r}; known pre-tokenizers: {sorted(PRE_SPLITS)}")
    tokens = list(_need(meta, "tokenizer.ggml.tokens", path))
    merges = [tuple(m.split(" ", 1)) for m in _need(meta, "tokenizer.ggml.merges", path)]
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                              byte_fallback=False))
    split = PRE_SPLITS[pre]
    tk.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True) if split is None else
                        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    tk.decoder = decoders.ByteLevel()
    names = {k: tokens[int(meta[f"tokenizer.ggml.{v}"])] for k, v in
             (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
              ("pad_token", "padding_token_id")) if meta.get(f"tokenizer.ggml.{v}") is not None}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and "bos_token" in names:
        bos = names["bos_token"]
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                          special_tokens=[(bos, tokens.index(bos))])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                           if ty == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tk, names, add_bos


def save_tokenizer(meta: dict, path: str, folder: str) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` (chat template, special tokens) for AutoTokenizer."""
    tk, names, add_bos = build_tokenizer(meta, path)
    tk.save(os.path.join(folder, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, "add_eos_token": False,
           "clean_up_tokenization_spaces": False, "model_max_length": int(meta.get("llama.context_length", 8192)),
           **names}
    if meta.get("tokenizer.chat_template"):
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    write_json(os.path.join(folder, "tokenizer_config.json"), cfg)
    write_json(os.path.join(folder, "special_tokens_map.json"), names)


# --- the conversion -----------------------------------------------------------------------------
def convert(path: str, folder: str, progress: bool = True) -> None:
    """Write the Hugging Face checkpoint of the GGUF file ``path`` into ``folder``."""
    gguf = require("gguf", "reading .gguf files")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    meta = _fields(reader)
    names = {t.name for t in reader.tensors}
    config = hf_config(meta, path, tied="output.weight" not in names)
    save_tokenizer(meta, path, folder)
    _write_weights(hf_tensors(reader, config, path, progress), folder)
    write_json(os.path.join(folder, "gguf_source.json"), {"file": path, "converter_version": CONVERTER_VERSION,
                                                          "general.name": meta.get("general.name")})
    write_json(os.path.join(folder, "config.json"), config)  # last: its presence marks a complete folder
