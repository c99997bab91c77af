"""Loading a Hugging Face checkpoint into the params pytree (after bonsai's ``params.py``).

Everything comes from the family's schema (``jaxmerge.models``): the abstract tree (shapes from the
config), the key of every leaf and the leaf of every key. Missing, unexpected and mis-shaped tensors
are collected over all files and reported together, naming file and key. Arrays are built with
``jax.make_array_from_callback`` from memory-mapped files, so on a mesh each device reads only its own
slice — no full host copy per device.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .errors import UserError
from .models import families, schema_of
from .safetensors_io import SafeFile
from .sharding import ShardingRules, param_shardings

HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "chat_template.jinja"]


class CheckpointError(UserError, ValueError):
    """Tensors missing, unexpected or mis-shaped; the message lists all of them."""


class NotFound(UserError, FileNotFoundError):
    """A model path that does not exist, or a hub id that cannot be resolved (e.g. offline, not cached)."""


@dataclasses.dataclass
class Base:
    """A loaded base model: ``config`` (static), ``params`` (pytree), ``tokenizer`` (or None)."""
    config: ModelConfig
    params: dict
    tokenizer: Any
    path: str


def abstract_params(config: ModelConfig, dtype=jnp.bfloat16) -> dict:
    """The params tree as ``ShapeDtypeStruct`` leaves (no memory)."""
    s = schema_of(config)
    return s.tree(lambda leaf: jax.ShapeDtypeStruct(s.full_shape(leaf), dtype))


def hf_key(path: tuple, layer: int | None = None, config: ModelConfig | None = None) -> str:
    """The transformers key of a leaf (and layer). Paths name the same key in every family, so
    ``config`` is needed only to refuse a leaf that config does not have."""
    if config is not None:
        return schema_of(config).hf_key(tuple(path), layer)
    for fam in families().values():
        for leaf in fam.leaves:
            if leaf.path == tuple(path):
                if leaf.per_layer != (layer is not None):
                    raise ValueError(f"{'/'.join(path)}: layer {'required' if leaf.per_layer else 'not allowed'}")
                return leaf.key.format(layer=layer) if leaf.per_layer else leaf.key
    raise KeyError(f"{'/'.join(path)} is not a parameter of any supported family")


def resolve(path_or_id: str, patterns=HUB_PATTERNS) -> str:
    """A local folder as is; a ``.gguf`` file as its converted, cached folder (``jaxmerge.gguf``);
    otherwise a hub id through ``snapshot_download`` (cache and ``HF_HUB_OFFLINE`` honoured),
    fetching only the files matching ``patterns``. A hub id that cannot be resolved is a ``NotFound``
    naming it (and the offline mode when that is the cause)."""
    if os.path.isdir(path_or_id):
        return os.fspath(path_or_id)
    if os.fspath(path_or_id).startswith("pypi:"):  # a file inside a PyPI distribution (jaxmerge.registry_source)
        from .registry_source import member_path
        path_or_id = member_path(path_or_id)
    if os.fspath(path_or_id).endswith(".gguf") and os.path.isfile(path_or_id):  # converted once, cached
        from .gguf import gguf_folder
        return gguf_folder(path_or_id)
    if os.path.exists(path_or_id):
        raise NotFound(f"{path_or_id} is a file; expected a checkpoint folder or hub id")
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise NotFound(f"{path_or_id}: no such folder, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(path_or_id, allow_patterns=list(patterns))
    except Exception as e:  # noqa: BLE001 — every hub failure becomes one line naming the id
        raise NotFound(hub_failure(path_or_id, e)) from None


def hub_failure(repo_id: str, e: Exception, cache_dir: str | None = None) -> str:
    """One line for a failed hub resolution: which id, why, and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    if isinstance(e, LocalEntryNotFoundError) or (constants.HF_HUB_OFFLINE and isinstance(e, OSError)):
        where = cache_dir or constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            return (f"hub id {repo_id!r} is not in the local Hugging Face cache ({where}) and HF_HUB_OFFLINE=1 "
                    "forbids downloading it: fetch it once online, or unset HF_HUB_OFFLINE")
        return f"hub id {repo_id!r} is not in the local cache ({where}) and the hub could not be reached"
    if isinstance(e, GatedRepoError):
        return f"hub id {repo_id!r} is gated: accept its licence on the hub and log in (hf auth login)"
    if isinstance(e, RepositoryNotFoundError):
        return f"hub id {repo_id!r}: no such repository on the hub (or it is private)"
    return f"hub id {repo_id!r} could not be fetched: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


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


def _locate(config: ModelConfig, files: list[SafeFile]) -> dict:
    """Map every (leaf path, layer) to its (file, key); raise one error listing every problem."""
    s = schema_of(config)
    sources: dict[tuple, Any] = {}
    problems, seen = [], set()
    L = config.num_hidden_layers
    for f in files:
        for key in f.keys():
            hit = s.match(key)
            if hit is None:
                if not s.is_unused(key):  # e.g. a tied model's lm_head.weight: the embedding is the head
                    problems.append(f"unexpected tensor {key!r} in {f.path}")
                continue
            leaf, layer = hit
            if layer is not None and layer >= L:
                problems.append(f"unexpected tensor {key!r} in {f.path} (config has {L} layers)")
            elif f.shape(key) != tuple(leaf.shape(config)):
                problems.append(f"mis-shaped tensor {key!r} in {f.path}: {f.shape(key)}, expected "
                                f"{tuple(leaf.shape(config))}")
            else:
                sources[(leaf.path, layer)] = (f, key)
            seen.add((leaf.path, layer))
    for leaf in s.leaves:
        for layer in (range(L) if leaf.per_layer else [None]):
            if (leaf.path, layer) not in seen:
                problems.append(f"missing tensor {s.hf_key(leaf.path, layer)!r}")
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


def load_params(path: str, config: ModelConfig, dtype=jnp.bfloat16, mesh=None, rules: ShardingRules | None = None):
    """The params pytree from a checkpoint folder, as ``dtype`` arrays (sharded when ``mesh`` given)."""
    files = [SafeFile(p) for p in _weight_files(path)]
    abstract = abstract_params(config, dtype)
    sources = _locate(config, files)
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


def params_to_hf(params: Mapping, config: ModelConfig) -> dict[str, np.ndarray]:
    """The transformers state dict (key → NumPy array) of a params tree — or of any part of one —;
    inverse of loading."""
    s = schema_of(config)
    out = {}
    for path, leaf in _leaves(params):
        arr = np.asarray(jax.device_get(leaf))
        if s.leaf(path).per_layer:
            for i in range(arr.shape[0]):
                out[s.hf_key(path, i)] = arr[i]
        else:
            out[s.hf_key(path)] = arr
    return out


def load_tokenizer(path: str):
    """transformers ``AutoTokenizer`` from the folder, or None when it holds no tokenizer."""
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def load_base(path_or_hub_id: str, dtype: str | Any = "bfloat16", mesh=None, rules: ShardingRules | None = None,
              tokenizer: bool = True) -> Base:
    """Load a checkpoint of any supported family (``jaxmerge.models``): a folder written by
    ``save_pretrained``, a ``.gguf`` file, or a hub id.

    dtype: "bfloat16" | "float32" (or a jnp dtype). With ``mesh``, params are placed sharded by
    ``rules`` (default ``ShardingRules()``).
    """
    path = resolve(path_or_hub_id)
    config = ModelConfig.from_json(os.path.join(path, "config.json"))
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32), jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype {dtype}: use 'bfloat16' or 'float32'")
    params = load_params(path, config, dtype, mesh, rules)
    return Base(config, params, load_tokenizer(path) if tokenizer else None, path)
