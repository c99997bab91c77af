"""Compile the plan's step for a small float32 config, then run it on random arrays of exactly the
compiled shapes (``jaxmerge.plan.measure_step``) and measure the process's peak resident memory
growth during the steps. Prints JSON."""

import json
import math

import jax
import jax.numpy as jnp

from jaxmerge import shapes as shp
from jaxmerge.config import LlamaConfig, RopeConfig
from jaxmerge.plan import compile_step, measure_step, memory

config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                     rope=RopeConfig(10000.0, "llama3", 8.0, 1.0, 4.0, 64))
drawn = [shp.AdapterShape(r, 16.0, ("q_proj", "v_proj", "down_proj")) for r in (8, 16, 32, 64)]
compiled, pool, mesh = compile_step(config, drawn, 1, batch=8, seq=256, tensor=1, dtype=jnp.float32)
# the arguments' bytes from the compiled signature (not by allocating them a second time)
arg_bytes = sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(compiled.args_info[0]))
measured = measure_step(compiled, config.vocab_size, steps=2)
print(json.dumps({"plan": memory(compiled), "measured": measured, "argument_bytes": arg_bytes}))
