"""Generated checkpoints and PEFT adapter folders of real shapes, written straight to safetensors (no torch
model, no whole model in memory): the inputs of ``jaxmerge bench export``, the 32-layer Llama-3.1-8B run
and the streaming-memory test.

    python -m jaxmerge.bench.synth --model llama-3.1-8b --layers 32 --out /tmp/l8b --adapters 30
        # 16 GB of bf16 weights + 30 adapters drawn from the real pool's (rank, alpha, modules) mix

Weights are N(0, 0.02) (norms 1 ± 0.1), in ``--dtype`` (bf16 by default), one tensor at a time through
``jaxmerge.pool.shards.StreamWriter``; ``config.json`` is transformers' own ``LlamaConfig`` with the
dims of ``--model`` (a known name or a config.json) and ``--layers``. Adapter factors: A ~ U(±1/√in)
(PEFT's kaiming init), B ~ N(0, σ) with σ set so that the adapter's scaled ‖ΔW‖_F over all its modules
and layers is about ``norm`` (10: inside the pool filter's (1, 1000] at any dims), or so that ΔW's
entries have std ``delta_std`` (``--delta-std``; 1e-3 ≈ 5 % of the weights' 0.02, a visible update
even after bf16 rounding).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

import numpy as np

from ..atomic import partial_dir, publish
from ..config import ModelConfig, known_or_json
from ..hf_write import SHARD_BYTES
from ..params import abstract_params, hf_key
from ..pool.shards import Plan, StreamWriter
from ..pool.peft_write import lora_config, lora_key, write_adapter
from ..progress import track
from ..shapes import AdapterShape, draw, load_shapes


def hf_llama_config(config: ModelConfig):
    """transformers' ``LlamaConfig`` with these dims (its ``to_json_file`` writes the ``config.json``)."""
    from transformers import LlamaConfig
    c = config
    rope = None if c.rope.rope_type == "default" else {
        "rope_type": c.rope.rope_type, "factor": c.rope.factor, "low_freq_factor": c.rope.low_freq_factor,
        "high_freq_factor": c.rope.high_freq_factor,
        "original_max_position_embeddings": c.rope.original_max_position_embeddings}
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                      max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=c.tie_word_embeddings,
                      rope_theta=c.rope.theta, rope_scaling=rope, bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def _entries(config: ModelConfig):
    """(key, shape) of every parameter, layer by layer."""
    import jax
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
    glob, layered = [], []
    for path, leaf in flat:
        names = tuple(p.key for p in path)
        if names[0] == "layers":
            layered += [(l, hf_key(names, l), leaf.shape[1:]) for l in range(leaf.shape[0])]
        else:
            glob.append((hf_key(names), leaf.shape))
    return glob + [(k, s) for _, k, s in sorted(layered, key=lambda x: x[0])]


def _normal(rng, shape, std, dtype, block_rows: int = 4096) -> np.ndarray:
    out = np.empty(shape, dtype)
    rows = out.reshape(shape[0], -1) if len(shape) > 1 else out.reshape(1, -1)
    for i in range(0, rows.shape[0], block_rows):
        rows[i:i + block_rows] = (rng.standard_normal(rows[i:i + block_rows].shape, np.float32) * std).astype(dtype)
    return out


def write_checkpoint(folder: str, config: ModelConfig, *, seed: int = 0, dtype="bfloat16",
                     shard_bytes: int = SHARD_BYTES, progress: bool = True) -> str:
    """A random checkpoint of ``config``'s dims at ``folder`` (built aside, published whole)."""
    dtype = np.dtype(dtype)
    entries = _entries(config)
    tmp = partial_dir(folder)
    writer = StreamWriter(tmp, Plan.make([(k, dtype, s) for k, s in entries], shard_bytes), None)
    rng = np.random.default_rng(seed)
    for k, s in track(entries, desc="write checkpoint", unit="tensor", enabled=progress):
        if k.endswith("norm.weight"):
            writer.write(k, (1 + 0.1 * rng.standard_normal(s, np.float32)).astype(dtype))
        else:
            writer.write(k, _normal(rng, s, 0.02, dtype))
    writer.finish()
    hf_llama_config(config).to_json_file(os.path.join(tmp, "config.json"))
    return publish(tmp, folder, replace=True)


def write_adapters(folder: str, config: ModelConfig, shapes: Sequence[AdapterShape], *, seed: int = 0,
                   dtype="bfloat16", norm: float = 10.0, delta_std: float | None = None,
                   progress: bool = True) -> list[str]:
    """One PEFT adapter folder per shape, ``folder/adapter{i:03d}``, every layer of its modules."""
    dtype = np.dtype(dtype)
    paths = []
    for i, sh in enumerate(track(list(shapes), desc="write adapters", unit="adapter", enabled=progress)):
        rng = np.random.default_rng([seed, i])
        s = sh.alpha / sh.r  # E‖s·B·A‖²_F = s²·out·r·σ²/3 per matrix with A ~ U(±1/√in)
        b_std = norm / np.sqrt(sum(s * s * config.module_shape(m)[0] * sh.r / 3 for m in sh.modules)
                               * config.num_hidden_layers)
        tensors = {}
        if delta_std is not None:  # E[(s·B·A)²_ij] = s²·r·σ²/(3·in) per module
            b_std = {m: delta_std * np.sqrt(3 * config.module_shape(m)[1] / sh.r) / s for m in sh.modules}
        for l in range(config.num_hidden_layers):
            for m in sh.modules:
                out_dim, in_dim = config.module_shape(m)
                bound = 1 / np.sqrt(in_dim)
                tensors[lora_key(l, m, "A")] = rng.uniform(-bound, bound, (sh.r, in_dim)).astype(np.float32).astype(dtype)
                std = b_std[m] if isinstance(b_std, dict) else b_std
                tensors[lora_key(l, m, "B")] = _normal(rng, (out_dim, sh.r), std, dtype)
        path = os.path.join(folder, f"adapter{i:03d}")
        write_adapter(path, lora_config(sh.r, sh.alpha, sh.modules), tensors)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxmerge.bench.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b", help="a known model or a config.json (dims)")
    p.add_argument("--layers", type=int, help="number of layers (default: the model's)")
    p.add_argument("--adapters", type=int, default=0, help="k adapters drawn from the real pool's shapes")
    p.add_argument("--pool-shapes", help="shapes file or manifest (default: the shipped Llama manifest)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--delta-std", type=float, default=1e-3, help="std of each adapter's ΔW entries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="OUT/base (checkpoint) and OUT/adapters/adapterNNN")
    a = p.parse_args(argv)
    config = known_or_json(a.model)
    if a.layers:
        config = dataclasses.replace(config, num_hidden_layers=a.layers)
    write_checkpoint(os.path.join(a.out, "base"), config, seed=a.seed, dtype=a.dtype)
    if a.adapters:
        shapes = draw(load_shapes(a.pool_shapes)[0], a.adapters, a.seed)
        write_adapters(os.path.join(a.out, "adapters"), config, shapes, seed=a.seed, dtype=a.dtype,
                       delta_std=a.delta_std)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
