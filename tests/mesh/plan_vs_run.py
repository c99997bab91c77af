"""Compile the plan's step for a small float32 config, then run it on real (random) arrays and
measure the process's peak resident memory during execution. Prints JSON."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge import shapes as shp
from jaxmerge.config import LlamaConfig, RopeConfig
from jaxmerge.plan import compile_step, memory


def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024


config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                     rope=RopeConfig(10000.0, "llama3", 8.0, 1.0, 4.0, 64))
drawn = [shp.AdapterShape(r, 16.0, ("q_proj", "v_proj", "down_proj")) for r in (8, 16, 32, 64)]
batch, seq = 8, 256
compiled, pool, mesh = compile_step(config, drawn, 1, batch=batch, seq=seq, tensor=1, dtype=jnp.float32)
plan = memory(compiled)

# Materialise arguments of exactly the compiled shapes.
args_abs = compiled.args_info[0]  # (state, frozen, mb) as abstract args
key = jax.random.PRNGKey(0)
leaves, treedef = jax.tree.flatten(args_abs)
real = []
for i, a in enumerate(leaves):
    shape, dtype = a.shape, a.dtype if hasattr(a, "dtype") else a._aval.dtype
    if dtype == jnp.bool_:
        real.append(jnp.ones(shape, dtype))
    elif jnp.issubdtype(dtype, jnp.integer):
        real.append(jnp.asarray(np.random.RandomState(i).randint(1, 100, shape), dtype))
    else:
        real.append(0.01 * jax.random.normal(jax.random.fold_in(key, i), shape, dtype))
state, frozen, mb = jax.tree.unflatten(treedef, real)
jax.block_until_ready((state, frozen, mb))
before = rss("VmRSS")
hwm_before = rss("VmHWM")
out = compiled(state, frozen, mb)
jax.block_until_ready(out)
peak = rss("VmHWM")
arg_bytes = sum(x.nbytes for x in real)
print(json.dumps({"plan": plan, "measured_peak_delta": peak - before, "hwm_before": hwm_before, "before": before,
                  "argument_bytes": arg_bytes}))
