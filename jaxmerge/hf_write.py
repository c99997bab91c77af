"""Hugging Face model folders written without torch: what ``PreTrainedModel.save_pretrained`` writes.

``write_model_folder(path, config, tensors)`` writes ``config.json`` (through transformers' own config
class for the ``model_type``, with ``architectures`` and ``dtype`` set as ``save_pretrained`` sets them),
``generation_config.json`` (``GenerationConfig.from_model_config``) and the weights as
``model.safetensors`` with ``{"format": "pt"}`` metadata — or as shards plus
``model.safetensors.index.json`` when they exceed ``shard_bytes``. transformers, PEFT and vLLM load the
result as if transformers had saved it (tests compare the files and the logits). The folder is built in
``jaxmerge.atomic.partial_dir`` and published whole.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .atomic import partial_dir, publish, write_json
from .safetensors_io import save

SHARD_BYTES = 5 << 30  # transformers' default max_shard_size ("5GB")


def hf_config(config: Mapping[str, Any], architecture: str, dtype: str):
    """transformers' config object for ``config`` (the config class's arguments, ``model_type``
    included), with ``architectures`` and ``dtype`` set as ``save_pretrained`` sets them."""
    from transformers import AutoConfig
    kw = dict(config)
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    cfg.architectures = [architecture]
    cfg.dtype = dtype
    return cfg


def _json_of(cfg) -> dict:
    import json
    return json.loads(cfg.to_json_string(use_diff=True))


def write_model_folder(path: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], *,
                       architecture: str = "LlamaForCausalLM", shard_bytes: int = SHARD_BYTES,
                       replace: bool = False) -> str:
    """A checkpoint folder at ``path``, built aside and published whole (see ``write_model_files``)."""
    tmp = partial_dir(path)
    write_model_files(tmp, config, tensors, architecture=architecture, shard_bytes=shard_bytes)
    return publish(tmp, path, replace=replace)


def write_model_files(folder: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], *,
                      architecture: str = "LlamaForCausalLM", shard_bytes: int = SHARD_BYTES) -> str:
    """Config, generation config and safetensors weights (state-dict keys as transformers names them)
    into the existing ``folder``; each file is atomic, the folder as a whole is the caller's."""
    from transformers import GenerationConfig
    dtypes = {np.asarray(t).dtype.name for t in tensors.values()}
    dtype = "bfloat16" if dtypes == {"bfloat16"} else "float16" if dtypes == {"float16"} else "float32"
    tmp = os.fspath(folder)
    cfg = hf_config(config, architecture, dtype)
    write_json(os.path.join(tmp, "config.json"), _json_of(cfg), indent=2)
    write_json(os.path.join(tmp, "generation_config.json"), _json_of(GenerationConfig.from_model_config(cfg)), indent=2)
    shards: list[dict] = [{}]
    size = 0
    for k in sorted(tensors):
        arr = np.ascontiguousarray(tensors[k])
        if size + arr.nbytes > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = arr
        size += arr.nbytes
    if len(shards) == 1:
        save(os.path.join(tmp, "model.safetensors"), shards[0])
    else:
        weight_map, total = {}, 0
        for i, sh in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save(os.path.join(tmp, name), sh)
            weight_map.update({k: name for k in sh})
            total += sum(a.nbytes for a in sh.values())
        write_json(os.path.join(tmp, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    return tmp
