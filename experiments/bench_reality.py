"""What a real vocabulary costs (issue #15 item 7), measured on the smollm2-bigbench world's base:

* one target-LoRA training step (rank 64, all seven projections, batch 8 of a target's training rows):
  the loss from full ``[batch, tokens, vocab]`` logits vs the LM head at the answer positions only;
* multiple-choice scoring of a target's test examples: one full row per choice vs the shared prompt
  encoded once per example.

For each: the compiled program's temporary memory (``memory_analysis``; deterministic), the median
wall time of ``--repeats`` calls after a warm-up call (the machine's noise shows in the spread), and
the agreement of the two results.

    python -m experiments.bench_reality [--task sports_understanding] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _time(fn, repeats: int) -> dict:
    fn()  # compile + warm
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return {"median_s": round(float(np.median(out)), 3), "min_s": round(min(out), 3), "max_s": round(max(out), 3)}


def training_step(base, rows, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from jaxmerge.adaptive.methods import method
    from jaxmerge.adaptive.target_lora import init_lora, lora_adapters
    from jaxmerge.adaptive.objectives import answer_loss_sums
    from jaxmerge.tasks import encode
    spec = method("target-lora").lora
    lora = init_lora(base.config, spec, jax.random.key(0))
    lora = {"a": lora["a"], "b": {m: 0.01 * jnp.ones_like(b) for m, b in lora["b"].items()}}  # B ≠ 0: a real gradient
    batch = {k: jnp.asarray(v) for k, v in encode(rows, base.tokenizer, None).items()}
    out = {"tokens": list(batch["tokens"].shape), "answer_positions": int(batch["answer_index"].shape[1])}
    results = {}
    for name, b in (("full_logits", {k: v for k, v in batch.items() if k != "answer_index"}), ("answer_only", batch)):
        def loss(tr, params, b):  # weights and batch are arguments: closed over, XLA would fold them as constants
            s, c = answer_loss_sums(params, base.config, b, lora_adapters(tr, spec.scale))
            return s / c
        step = jax.jit(jax.value_and_grad(loss))
        compiled = step.lower(lora, base.params, b).compile()
        mem = compiled.memory_analysis()
        value, grads = compiled(lora, base.params, b)
        results[name] = (float(value), grads)
        out[name] = {"temp_bytes": int(mem.temp_size_in_bytes),
                     **_time(lambda: jax.block_until_ready(compiled(lora, base.params, b)), repeats)}
    out["loss_difference"] = abs(results["full_logits"][0] - results["answer_only"][0])
    out["grad_max_difference"] = max(float(jnp.abs(x - y).max()) for x, y in
                                     zip(jax.tree.leaves(results["full_logits"][1]), jax.tree.leaves(results["answer_only"][1])))
    out["temp_ratio"] = out["full_logits"]["temp_bytes"] / out["answer_only"]["temp_bytes"]
    out["time_ratio"] = out["full_logits"]["median_s"] / out["answer_only"]["median_s"]
    return out


def choice_scoring(base, examples, repeats: int) -> dict:
    from jaxmerge.tasks import per_choice_scores, shared_prompt_scores
    out = {"examples": len(examples), "choices": int(sum(len(e["choices"]) for e in examples))}
    shared = lambda: shared_prompt_scores(base.params, base.config, base.tokenizer, examples)
    plain = lambda: per_choice_scores(base.params, base.config, base.tokenizer, examples)
    out["per_choice"] = _time(plain, repeats)
    out["shared_prompt"] = _time(shared, repeats)
    a, b = np.concatenate(plain()), np.concatenate(shared())
    out["max_score_difference"] = float(np.abs(a - b).max())
    out["time_ratio"] = out["per_choice"]["median_s"] / out["shared_prompt"]["median_s"]
    out["memory_note"] = _scoring_memory(base, examples)
    return out


def _scoring_memory(base, examples) -> dict:
    """Temporary bytes of one compiled call of each scorer at the sizes the scorers use."""
    import jax.numpy as jnp
    from jaxmerge.tasks import encode_choices
    from jaxmerge.tasks.choices import ROWS_PER_CALL, _scores, encode_shared, _pack, _round
    from jaxmerge.tasks.evaluate import _summed_logprobs
    from jaxmerge.tasks.encode import pad_id
    enc, _ = encode_choices(examples, base.tokenizer)
    rows = 32
    t = {k: jnp.asarray(v[:rows]) for k, v in enc.items() if k != "answer_index"}
    plain = _summed_logprobs.lower(base.params, t["tokens"], t["attention_mask"], t["loss_mask"].astype(jnp.float32),
                                   None, base.config).compile().memory_analysis()
    sh = encode_shared(examples, base.tokenizer)
    most = max(len(r) for r in sh["continuations"])
    n = max(1, ROWS_PER_CALL // most)
    P = _round(max(map(len, sh["contexts"])))
    c = _round(max(len(x) for r in sh["continuations"] for x in r))
    ctx, cm = _pack(sh["contexts"][:n], n, P, pad_id(base.tokenizer))
    cont, km = _pack([x for r in sh["continuations"][:n] for x in r], n * most, c, pad_id(base.tokenizer))
    owner = np.zeros(n * most, np.int32)
    shared = _scores.lower(base.params, ctx, cm, cont, km, owner, None, base.config).compile().memory_analysis()
    return {"per_choice_temp_bytes_per_32_rows": int(plain.temp_size_in_bytes),
            "shared_temp_bytes_per_call": int(shared.temp_size_in_bytes), "shared_rows_per_call": n * most}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_reality", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sports_understanding", help="a multiple-choice target of the world")
    p.add_argument("--examples", type=int, default=64, help="test examples scored")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the measurements here")
    a = p.parse_args(argv)
    import jaxmerge
    from jaxmerge.tasks import load_task
    from experiments.world import get_world
    world = get_world("smollm2-bigbench")
    base = jaxmerge.load_base(world.base_dir, dtype="float32")
    data = load_task(a.task, world=world)
    rows = [{"prompt": e["prompt"], "answer": e["answer"]} for e in data.train[:8]]
    out = {"task": a.task, "vocab": base.config.vocab_size, "training_step": training_step(base, rows, a.repeats),
           "choice_scoring": choice_scoring(base, data.test[:a.examples], a.repeats)}
    print(json.dumps(out, indent=1))
    if a.json:
        from jaxmerge.atomic import write_json
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
