"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: load a checkpoint sharded on a
(data=2, tensor=4) mesh and compare logits / generation with a single-device load."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

import jaxmerge
from helpers import sharding_mismatches
from jaxmerge.sharding import ShardingRules

path = sys.argv[1]
assert jax.device_count() == 8, jax.devices()
mesh = jaxmerge.make_mesh(data=2, tensor=4)
rules = ShardingRules()
sharded = jaxmerge.load_base(path, dtype="float32", mesh=mesh, rules=rules)
single = jaxmerge.load_base(path, dtype="float32")

# Every param carries the sharding the rules imply (indivisible dims replicated).
bad = sharding_mismatches(sharded.params, sharded.config, mesh, rules)
q = sharded.params["layers"]["self_attn"]["q_proj"]
shard_shape = q.addressable_shards[0].data.shape

tok = np.random.RandomState(0).randint(3, 128, (4, 24))
fwd = jax.jit(jaxmerge.forward, static_argnames="config")
with jax.set_mesh(mesh):
    tok_sh = jax.device_put(tok, NamedSharding(mesh, rules.spec(("batch", None), tok.shape, mesh)))
    a = np.asarray(fwd(sharded.params, tok_sh, config=sharded.config))
    ga = np.asarray(jaxmerge.generate(sharded.params, tok_sh, sharded.config, max_new_tokens=8, eos_token_id=[]))
b = np.asarray(fwd(single.params, jnp.asarray(tok), config=single.config))
gb = np.asarray(jaxmerge.generate(single.params, tok, single.config, max_new_tokens=8, eos_token_id=[]))
print(json.dumps({"bad": bad, "max_diff": float(np.abs(a - b).max()), "gen_equal": bool((ga == gb).all()),
                  "q_shard_shape": list(shard_shape), "q_shape": list(q.shape)}))
