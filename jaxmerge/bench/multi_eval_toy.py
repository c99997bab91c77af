"""A toy measurement of ``jaxmerge.adaptive.multi_eval``: batched against one-adapter-at-a-time scoring
on the embedded default world's shapes (``python -m jaxmerge.bench.multi_eval_toy``). The real-shape
comparison with transformers + PEFT is ``jaxmerge bench select``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..adaptive.multi_eval import _batches, _gather_jit, _stack_arrays, gather_plan, pool_losses, pool_losses_one_at_a_time, single_adapter
from ..config import LlamaConfig
from ..generate import generate


def measure(n_adapters: int = 44, n_examples: int = 80, seq: int = 32, seed: int = 0) -> dict:
    """Loss scoring and greedy generation (8 new tokens) over a random pool, batched (8 adapters a batch) vs
    one adapter at a time, cold (with compilation) and warm.
    Shapes of the embedded default world: hidden 64, 4 layers, 4 heads / 2 kv, ffn 128, its pool's
    rank cycle (16, 8, 64, 32, 4) on all seven projections."""
    import time

    from ..config import MODULES, RopeConfig
    from ..shapes import AdapterShape, random_pool
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope=RopeConfig(500000.0))
    rng = np.random.default_rng(seed)
    from ..params import abstract_params
    params = jax.tree_util.tree_map_with_path(
        lambda p, l: jnp.ones(l.shape, jnp.float32) if "norm" in jax.tree_util.keystr(p)
        else jnp.asarray(rng.normal(0, 0.05, l.shape), jnp.float32), abstract_params(config, jnp.float32))
    shapes = [AdapterShape((16, 8, 64, 32, 4)[i % 5], 16.0, MODULES) for i in range(n_adapters)]
    pool = random_pool(config, shapes, jax.random.key(seed))
    tokens = rng.integers(3, 256, (n_examples, seq)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, seq // 2:-1] = 1
    batch = dict(tokens=tokens, attention_mask=np.ones_like(tokens), loss_mask=loss_mask)
    prompts = np.concatenate([np.ones((n_examples, 1), np.int32), tokens[:, :seq // 2]], axis=1)
    ones = np.ones_like(prompts)

    def generate_one_at_a_time():
        return [np.asarray(generate(params, prompts, config, max_new_tokens=8, attention_mask=ones,
                                    adapters=single_adapter(pool, i), eos_token_id=2, pad_token_id=0))
                for i in range(n_adapters)]

    def generate_batched():
        stacks, out = _stack_arrays(pool), []
        for real, padded in _batches(pool, None, 8):
            ad = _gather_jit(stacks, gather_plan(pool, padded))
            g = generate(params, np.tile(prompts, (8, 1)), config, max_new_tokens=8, attention_mask=np.tile(ones, (8, 1)),
                         adapters=ad, eos_token_id=2, pad_token_id=0)
            out += list(zip(real.tolist(), np.asarray(g).reshape(8, n_examples, -1)))
        return [g for _, g in sorted(out, key=lambda t: t[0])]

    out = {}
    runs = (("loss_batched", lambda: pool_losses(params, config, pool, batch, application="grouped", progress=False)),
            ("loss_one_at_a_time", lambda: pool_losses_one_at_a_time(params, config, pool, batch)),
            ("generate_batched", generate_batched), ("generate_one_at_a_time", generate_one_at_a_time))
    res = {}
    for name, fn in runs:
        for phase in ("cold", "warm"):
            t = time.perf_counter()
            res[name] = fn()
            out[f"{name}_{phase}_s"] = round(time.perf_counter() - t, 3)
    out["loss_max_abs_diff"] = float(np.max(np.abs(res["loss_batched"] - res["loss_one_at_a_time"])))
    out["generations_equal"] = all(np.array_equal(a, b) for a, b in zip(res["generate_batched"],
                                                                         res["generate_one_at_a_time"]))
    for kind in ("loss", "generate"):
        for phase in ("cold", "warm"):
            out[f"{kind}_speedup_{phase}"] = round(out[f"{kind}_one_at_a_time_{phase}_s"] / out[f"{kind}_batched_{phase}_s"], 2)
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(measure(), indent=1))
