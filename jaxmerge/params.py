"""Loading a Hugging Face Llama checkpoint into the params pytree (after bonsai's ``params.py``).

The abstract tree comes first (shapes from the config); a small regex table then maps every
safetensors key onto a leaf (and a layer index for stacked leaves). Missing, unexpected and
mis-shaped tensors are collected over all files and reported together, naming file and key.
Arrays are built with ``jax.make_array_from_callback`` from memory-mapped files, so on a mesh each
device reads only its own slice — no full host copy per device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import LlamaConfig
from .errors import UserError
from .safetensors_io import SafeFile
from .sharding import ShardingRules, param_shardings

# HF key → (path in the params tree, whether it is stacked over layers).
KEY_TABLE = [
    (re.compile(r"model\.embed_tokens\.weight"), lambda m: ("embed_tokens",)),
    (re.compile(r"model\.norm\.weight"), lambda m: ("norm",)),
    (re.compile(r"lm_head\.weight"), lambda m: ("lm_head",)),
    (re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.weight"), lambda m: ("layers", m[2], m[3])),
    (re.compile(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight"),
     lambda m: ("layers", m[2])),
]
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]


class CheckpointError(UserError, ValueError):
    """Tensors missing, unexpected or mis-shaped; the message lists all of them."""


@dataclasses.dataclass
class Base:
    """A loaded base model: ``config`` (static), ``params`` (pytree), ``tokenizer`` (or None)."""
    config: LlamaConfig
    params: dict
    tokenizer: Any
    path: str


def abstract_params(config: LlamaConfig, dtype=jnp.bfloat16) -> dict:
    """The params tree as ``ShapeDtypeStruct`` leaves (no memory)."""
    c, L = config, config.num_hidden_layers
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
    tree = {"embed_tokens": sds(c.vocab_size, c.hidden_size), "norm": sds(c.hidden_size),
            "layers": {"input_layernorm": sds(L, c.hidden_size), "post_attention_layernorm": sds(L, c.hidden_size),
                       "self_attn": {m: sds(L, *c.module_shape(m)) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
                       "mlp": {m: sds(L, *c.module_shape(m)) for m in ("gate_proj", "up_proj", "down_proj")}}}
    if not c.tie_word_embeddings:
        tree["lm_head"] = sds(c.vocab_size, c.hidden_size)
    return tree


def hf_key(path: tuple, layer: int | None = None) -> str:
    """Inverse of the table: the transformers key of a leaf (and layer)."""
    if path[0] != "layers":
        return {"embed_tokens": "model.embed_tokens.weight", "norm": "model.norm.weight",
                "lm_head": "lm_head.weight"}[path[0]]
    return f"model.layers.{layer}." + ".".join(path[1:]) + ".weight"


def resolve(path_or_id: str, patterns=HUB_PATTERNS) -> str:
    """A local folder as is; a ``.gguf`` file as its converted, cached folder (``jaxmerge.gguf``);
    otherwise a hub id through ``snapshot_download`` (cache and ``HF_HUB_OFFLINE`` honoured),
    fetching only the files matching ``patterns``."""
    if os.path.isdir(path_or_id):
        return os.fspath(path_or_id)
    if os.fspath(path_or_id).endswith(".gguf") and os.path.isfile(path_or_id):  # converted once, cached
        from .gguf import gguf_folder
        return gguf_folder(path_or_id)
    if os.path.exists(path_or_id):
        raise FileNotFoundError(f"{path_or_id} is a file; expected a checkpoint folder or hub id")
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise FileNotFoundError(f"{path_or_id}: no such folder, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    return snapshot_download(path_or_id, allow_patterns=list(patterns))


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        missing = [x for x in files if not os.path.exists(os.path.join(path, x))]
        if missing:
            raise CheckpointError(f"{index} names files that are not there: {missing}")
        return [os.path.join(path, x) for x in files]
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    if any(f.endswith(".bin") for f in os.listdir(path)):
        raise CheckpointError(f"{path}: only pickle (.bin) weights found; jaxmerge never unpickles — "
                              "convert them to safetensors first")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _locate(config: LlamaConfig, files: list[SafeFile], abstract: dict) -> dict:
    """Map every leaf to its sources; raise one error listing every problem."""
    sources: dict[tuple, Any] = {}
    problems, seen = [], set()
    L = config.num_hidden_layers
    for f in files:
        for key in f.keys():
            if IGNORED.fullmatch(key):
                continue
            for rx, to_path in KEY_TABLE:
                m = rx.fullmatch(key)
                if m:
                    break
            else:
                problems.append(f"unexpected tensor {key!r} in {f.path}")
                continue
            path = to_path(m)
            if path == ("lm_head",) and config.tie_word_embeddings:
                continue  # tied: the embedding is the head
            leaf = abstract
            for p in path:
                leaf = leaf.get(p) if isinstance(leaf, dict) else None
            if leaf is None:
                problems.append(f"unexpected tensor {key!r} in {f.path}")
                continue
            layer = int(m[1]) if path[0] == "layers" else None
            want = leaf.shape[1:] if layer is not None else leaf.shape
            if layer is not None and layer >= L:
                problems.append(f"unexpected tensor {key!r} in {f.path} (config has {L} layers)")
            elif f.shape(key) != tuple(want):
                problems.append(f"mis-shaped tensor {key!r} in {f.path}: {f.shape(key)}, expected {tuple(want)}")
            else:
                sources[(path, layer)] = (f, key)
            seen.add((path, layer))
    for path, leaf in _leaves(abstract):
        for layer in (range(L) if path[0] == "layers" else [None]):
            if (path, layer) not in seen:
                problems.append(f"missing tensor {hf_key(path, layer)!r}")
    if problems:
        raise CheckpointError(f"{len(problems)} problem(s) loading {files[0].path if files else ''}:\n  "
                              + "\n  ".join(problems))
    return sources


def _leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def load_params(path: str, config: LlamaConfig, dtype=jnp.bfloat16, mesh=None, rules: ShardingRules | None = None):
    """The params pytree from a checkpoint folder, as ``dtype`` arrays (sharded when ``mesh`` given)."""
    files = [SafeFile(p) for p in _weight_files(path)]
    abstract = abstract_params(config, dtype)
    sources = _locate(config, files, abstract)
    if mesh is not None:
        shardings = param_shardings(config, abstract, mesh, rules)
    else:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, abstract)
    np_dtype = np.dtype(dtype)
    params: dict = {}
    for leaf_path, leaf in _leaves(abstract):
        sh = shardings
        for p in leaf_path:
            sh = sh[p]

        def read(index, leaf_path=leaf_path):
            if leaf_path[0] != "layers":
                f, key = sources[(leaf_path, None)]
                return np.asarray(f[key][index], dtype=np_dtype)
            layers = range(config.num_hidden_layers)[index[0]]
            parts = [sources[(leaf_path, i)] for i in layers]
            return np.stack([np.asarray(f[key][index[1:]], dtype=np_dtype) for f, key in parts])

        _set(params, leaf_path, jax.make_array_from_callback(leaf.shape, sh, read))
    return params


def params_to_hf(params: Mapping, config: LlamaConfig) -> dict[str, np.ndarray]:
    """The transformers state dict (key → NumPy array) of a params tree; inverse of loading."""
    out = {}
    for path, leaf in _leaves(params):
        arr = np.asarray(jax.device_get(leaf))
        if path[0] == "layers":
            for i in range(arr.shape[0]):
                out[hf_key(path, i)] = arr[i]
        else:
            out[hf_key(path)] = arr
    return out


def load_tokenizer(path: str):
    """transformers ``AutoTokenizer`` from the folder, or None when it holds no tokenizer."""
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def load_base(path_or_hub_id: str, dtype: str | Any = "bfloat16", mesh=None, rules: ShardingRules | None = None,
              tokenizer: bool = True) -> Base:
    """Load a Llama 3.x checkpoint (folder written by ``save_pretrained``, or a hub id).

    dtype: "bfloat16" | "float32" (or a jnp dtype). With ``mesh``, params are placed sharded by
    ``rules`` (default ``ShardingRules()``).
    """
    path = resolve(path_or_hub_id)
    config = LlamaConfig.from_json(os.path.join(path, "config.json"))
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype {dtype}: use 'bfloat16' or 'float32'")
    params = load_params(path, config, dtype, mesh, rules)
    return Base(config, params, load_tokenizer(path) if tokenizer else None, path)
