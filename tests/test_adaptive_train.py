"""The training engine: `ours` at step 0 is the base model, factored = dense application, accumulation
= one big batch, the saved target LoRA is what PEFT loads, the method table, bounds and softmax."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import mesh_env  # noqa: E402
from helpers import make_setup  # noqa: E402

import jaxmerge  # noqa: E402
from jaxmerge.adaptive import METHODS, Tuning, method  # noqa: E402
from jaxmerge.adaptive.target_lora import init_lora, lora_adapters, save_peft  # noqa: E402
from jaxmerge.adaptive.objectives import Coefficients, answer_loss_sums, apply_choice  # noqa: E402
from jaxmerge.adaptive.train import application_cost, choose_application, fit  # noqa: E402
from jaxmerge.merge.coefficients import factored_adapters, module_coefficients  # noqa: E402
from jaxmerge.tasks import encode  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(str(tmp_path_factory.mktemp("adaptive_train")))


def test_method_table_is_the_papers():
    assert set(METHODS) == {"ours", "adamerging", "pi-tuning", "lorahub", "lorahub-grad", "average", "ties",
                            "tsv", "target-lora", "zero-shot"}
    o = METHODS["ours"]
    assert (o.selection.kind, o.selection.k, o.granularity, o.activation, o.init.kind, o.tuning.lr,
            o.tuning.steps) == ("evaluation", 30, "module", "leaky_relu", "zero", 5e-2, 100)
    a = METHODS["adamerging"]
    assert (a.selection.kind, a.activation, a.init.kind) == ("random", "linear", "one_over_k")
    p = METHODS["pi-tuning"]
    assert (p.selection.kind, p.selection.k, p.activation, p.tuning.kind, p.fresh_lora.a_init) == \
        ("quasi_fim", 20, "softmax", "joint", "normal")
    h = METHODS["lorahub"]
    assert (h.granularity, h.tuning.kind, h.tuning.bounds, h.tuning.budget, h.tuning.l1) == \
        ("model", "gradient_free", (-1.5, 1.5), 100, 0.05)
    t = METHODS["target-lora"]
    assert (t.lora.rank, t.lora.alpha, t.tuning.lr, t.tuning.steps, t.lora.modules) == (64, 16.0, 3e-4, 400, None)
    m = method("ours", k=5, lr=1e-2, granularity="layer")
    assert (m.selection.k, m.tuning.lr, m.granularity, m.selection.kind) == (5, 1e-2, "layer", "evaluation")
    with pytest.raises(ValueError, match="unknown method"):
        method("nope")
    with pytest.raises(ValueError, match="granularity"):
        method("ours", granularity="block")


def test_ours_at_step_zero_is_the_base_model(setup):
    base, pool, data = setup
    m = METHODS["ours"]
    w0 = m.init(m.coefficient_shape(pool.num_adapters, pool.num_layers, len(pool.modules)), jax.random.key(0))
    batch = encode(data.train[:4], base.tokenizer, None)
    plain = jaxmerge.forward(base.params, batch["tokens"], base.config, attention_mask=batch["attention_mask"])
    merged = jaxmerge.forward(base.params, batch["tokens"], base.config, attention_mask=batch["attention_mask"],
                              adapters=factored_adapters(pool, w0, m.granularity, m.activation))
    np.testing.assert_array_equal(np.asarray(merged), np.asarray(plain))
    # and the pool is not trivially zero: non-zero coefficients move the logits
    moved = jaxmerge.forward(base.params, batch["tokens"], base.config, attention_mask=batch["attention_mask"],
                             adapters=factored_adapters(pool, w0 + 0.5, m.granularity, m.activation))
    assert np.abs(np.asarray(moved) - np.asarray(plain)).max() > 1e-2


def test_factored_equals_dense_and_cost_choice(setup):
    base, pool, data = setup
    batch = encode(data.train[:8], base.tokenizer, None)
    w = jax.random.normal(jax.random.key(1), (pool.num_adapters, pool.num_layers, len(pool.modules)))

    def loss(w, choice):
        ad = apply_choice(factored_adapters(pool, w, "module", "leaky_relu"), choice)
        s, c = answer_loss_sums(base.params, base.config, batch, ad)
        return s / c

    fac = {m: "factored" for m in pool.modules}
    den = {m: "dense" for m in pool.modules}
    (lf, gf), (ld, gd) = jax.value_and_grad(loss)(w, fac), jax.value_and_grad(loss)(w, den)
    np.testing.assert_allclose(lf, ld, rtol=1e-5)
    np.testing.assert_allclose(gf, gd, rtol=1e-4, atol=1e-6)
    # the choice follows the FLOP model: tiny widths → dense; Llama-8B widths with few tokens → factored
    tokens = 8 * batch["tokens"].shape[1]
    cost = application_cost(pool, base.config, tokens)
    assert choose_application(pool, base.config, tokens) == {m: min(c, key=c.get) for m, c in cost.items()}
    from jaxmerge.config import LLAMA_3_1_8B
    c8 = application_cost(pool, LLAMA_3_1_8B, 8 * 64)["q_proj"]
    assert c8["factored"] < c8["dense"]


def test_softmax_coefficients_sum_to_one(setup):
    _, pool, _ = setup
    for g in ("model", "layer", "sublayer", "module"):
        shape = method("pi-tuning", granularity=g).coefficient_shape(pool.num_adapters, pool.num_layers,
                                                                     len(pool.modules))
        w = jax.random.normal(jax.random.key(2), shape)
        for m, c in module_coefficients(pool, w, g, "softmax").items():
            np.testing.assert_allclose(np.asarray(c).sum(0), 1.0, rtol=1e-6)


def test_accumulation_equals_one_batch_and_base_untouched(setup, tmp_path):
    base, pool, data = setup
    enc = lambda ex: encode(ex, base.tokenizer, None)
    train, val = enc(data.train), enc(data.validation)
    before = jax.tree.map(np.array, base.params)

    loss_fn = Coefficients(base.config, "module", "leaky_relu")
    w0 = {"w": jnp.zeros((pool.num_adapters, pool.num_layers, len(pool.modules)))}
    frozen = {"params": base.params, "stacks": pool.modules}
    runs = [fit(loss_fn, w0, frozen, train, val, Tuning(steps=3, eval_every=1, micro_batch=mb), key=jax.random.key(0),
                progress=False) for mb in (8, 2)]
    np.testing.assert_allclose(runs[0].final["w"], runs[1].final["w"], rtol=1e-4, atol=1e-6)
    # the kept state really is the best one: its validation loss is the recorded best (the step donates
    # its buffers, so a host view instead of a copy would silently drift to the latest state)
    from jaxmerge.adaptive.train import _micro, eval_loss
    ev = lambda tr, fz, b: eval_loss(tr, fz, b, objective=loss_fn)
    vb = {k: jnp.asarray(v) for k, v in _micro(val, np.arange(len(val["tokens"])), 8).items()}
    r = fit(loss_fn, w0, frozen, train, val, Tuning(steps=6, eval_every=1, lr=2.0), key=jax.random.key(0),
            progress=False)  # a large step size, so that the best state is rarely the last one
    np.testing.assert_allclose(float(ev({"w": jnp.asarray(r.best["w"])}, frozen, vb)), r.best_val_loss, rtol=1e-6)
    assert r.best_val_loss == min(v for _, v in r.history)
    assert runs[0].best_val_loss < runs[0].history[0][1]  # training improved on step 0
    assert np.abs(runs[0].final["w"]).max() > 0  # it trained
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), y), base.params, before)


def test_saved_target_lora_matches_peft(setup, tmp_path):
    """A LoRA written by save_peft, loaded by the real PEFT on the transformers model, gives our logits."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    base, _, data = setup
    spec = METHODS["target-lora"].lora
    lora = init_lora(base.config, spec, jax.random.key(3))
    lora = {"a": lora["a"], "b": {m: 0.05 * jax.random.normal(jax.random.key(i), b.shape)
                                  for i, (m, b) in enumerate(lora["b"].items())}}
    out = save_peft(lora, spec, base.config, str(tmp_path / "lora"))
    batch = encode(data.train[:4], base.tokenizer, None)
    ours = jaxmerge.forward(base.params, batch["tokens"], base.config, attention_mask=batch["attention_mask"],
                            adapters=lora_adapters(lora, spec.scale))
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base.path), out).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(batch["tokens"], dtype=torch.long),
                    attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long)).logits.numpy()
    mask = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[mask], ref[mask], rtol=1e-5, atol=1e-4)
    # PEFT's own init: A kaiming-uniform within ±1/√in, B zero
    a = np.asarray(init_lora(base.config, spec, jax.random.key(4))["a"]["q_proj"])
    assert np.abs(a).max() <= 1 / np.sqrt(base.config.hidden_size) and np.abs(a).max() > 0.5 / np.sqrt(64)


MESH_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from helpers import make_setup
import jaxmerge
from jaxmerge.adaptive import Tuning
from jaxmerge.adaptive.objectives import Coefficients
from jaxmerge.adaptive.train import fit
from jaxmerge.sharding import ShardingRules
from jaxmerge.stacks import pool_shardings, stack_logical_axes
from jaxmerge.tasks import encode
assert len(jax.devices()) == 8
base, pool, data = make_setup(sys.argv[1])
mesh, rules = jaxmerge.make_mesh(data=4, tensor=2), ShardingRules()
sharded = jaxmerge.load_base(base.path, dtype="float32", mesh=mesh)
s_pool = jax.device_put(pool, pool_shardings(pool, mesh, rules))
enc = lambda ex: encode(ex, base.tokenizer, None)
train, val = enc(data.train), enc(data.validation)
loss_fn = Coefficients(base.config, "module", "leaky_relu")
w0 = {"w": jnp.zeros((pool.num_adapters, pool.num_layers, len(pool.modules)))}
tuning = Tuning(steps=3, eval_every=3)
out = []
for frozen, m in (({"params": base.params, "stacks": pool.modules}, None), ({"params": sharded.params, "stacks": s_pool.modules}, mesh)):
    out.append(fit(loss_fn, w0, frozen, train, val, tuning, key=jax.random.key(0), mesh=m, progress=False))
report = {"bad_stack_specs": []}
q = sharded.params["layers"]["self_attn"]["q_proj"]
report["q_devices"], report["q_spec"] = len(q.sharding.device_set), str(q.sharding.spec)
for mod, st in s_pool.modules.items():
    for f in ("a", "b"):
        x = getattr(st, f)
        if x.sharding.spec != rules.spec(stack_logical_axes(mod)[f], x.shape, mesh) or len(x.sharding.device_set) != 8:
            report["bad_stack_specs"].append([mod, f, str(x.sharding.spec)])
report["specs"] = {m: [list(st.a.sharding.spec), list(st.b.sharding.spec)] for m, st in s_pool.modules.items()}
# where fit kept the state it trained (trainable and optimiser) after its last step
leaves = jax.tree.leaves(out[1].state_shardings)
report["state_leaves"] = len(leaves)
report["state_not_replicated"] = [str(x) for x in leaves if not (x.is_fully_replicated and len(x.device_set) == 8)]
report["w_max_diff"] = float(np.abs(out[0].final["w"] - out[1].final["w"]).max())
report["w_max"] = float(np.abs(out[1].final["w"]).max())
report["val_rel_diff"] = abs(out[0].best_val_loss - out[1].best_val_loss) / abs(out[0].best_val_loss)
print("REPORT" + json.dumps(report))
"""


def test_training_on_a_simulated_8_device_mesh(setup):
    import subprocess
    base = setup[0]
    root = os.path.dirname(base.path)
    env = mesh_env(8)
    p = subprocess.run([sys.executable, "-c", MESH_SCRIPT, root, os.path.dirname(os.path.abspath(__file__))],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.split("REPORT", 1)[1])
    # params, pool stacks and the trainable state sharded as the rules say …
    assert r["q_devices"] == 8 and "tensor" in r["q_spec"], r
    assert r["bad_stack_specs"] == [], r
    assert r["specs"]["q_proj"] == [[None, None, "data"], [None, "tensor", None]], r
    assert r["specs"]["down_proj"] == [[None, None, "tensor"], [None, "data", None]], r
    assert r["state_leaves"] >= 3 and r["state_not_replicated"] == [], r
    # … and the sharded run trains the same coefficients (which did move from 0)
    assert r["w_max_diff"] <= 1e-6 + 1e-4 * r["w_max"] and r["w_max"] > 1e-3, r
    assert r["val_rel_diff"] < 1e-5, r
