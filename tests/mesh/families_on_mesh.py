"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8. argv[1]: JSON list of
[checkpoint folder, PEFT adapter folder, npz of transformers' tokens/logits/PEFT logits]. For each:
load sharded on a (data=2, tensor=4) mesh, check every leaf's sharding, compare forward and LoRA
logits with transformers / PEFT and generation with a single-device run. Prints JSON."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

import jaxmerge
from helpers import sharding_mismatches
from jaxmerge.sharding import ShardingRules

assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
rules = ShardingRules()
fwd = jax.jit(jaxmerge.forward, static_argnames="config")
results = []
for path, adapter, ref_file in json.loads(sys.argv[1]):
    ref = np.load(ref_file)
    sharded = jaxmerge.load_base(path, dtype="float32", mesh=mesh, rules=rules)
    config = sharded.config
    bad = sharding_mismatches(sharded.params, config, mesh, rules)
    q = sharded.params["layers"]["self_attn"]["q_proj"]
    q_sharded = q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 4, q.shape[2] // 2)
    pool, _ = jaxmerge.load_pool([adapter], config, mesh=mesh, rules=rules, progress=False)
    adapters = pool.factored({m: jnp.ones((1, pool.num_layers)) for m in pool.modules})
    tok = ref["tokens"]
    with jax.set_mesh(mesh):
        tok_sh = jax.device_put(tok, NamedSharding(mesh, rules.spec(("batch", None), tok.shape, mesh)))
        logits = np.asarray(fwd(sharded.params, tok_sh, config=config))
        lora = np.asarray(jax.jit(lambda p, t, a: jaxmerge.forward(p, t, config, adapters=a))(sharded.params, tok_sh,
                                                                                             adapters))
        gen = np.asarray(jaxmerge.generate(sharded.params, tok_sh, config, max_new_tokens=8, eos_token_id=[]))
    single = jaxmerge.load_base(path, dtype="float32")
    gen1 = np.asarray(jaxmerge.generate(single.params, tok, config, max_new_tokens=8, eos_token_id=[]))
    results.append({"bad": bad, "q_sharded": bool(q_sharded), "logits_diff": float(np.abs(logits - ref["logits"]).max()),
                    "lora_diff": float(np.abs(lora - ref["lora"]).max()), "gen_equal": bool((gen == gen1).all())})
print(json.dumps(results))
