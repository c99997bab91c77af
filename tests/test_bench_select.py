"""``jaxmerge bench select``'s correctness half: jaxmerge's batched pool scores equal transformers + PEFT
evaluating one adapter at a time (loaded from disk with ``PeftModel.from_pretrained``, unloaded after),
losses and greedy generations, on a tiny real Llama and PEFT-written adapters of mixed ranks and modules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import SPECIALS, WORDS, examples, hf_llama, save_tokenizer, write_adapter
from jaxmerge.bench import select_bench
from jaxmerge.cli import main

# (r, lora_alpha, target modules, use_rslora): mixed ranks, a q/v-only and an attention-only adapter, rsLoRA
SPECS = [(4, 8, None, False), (2, 4, ["q_proj", "v_proj"], False), (8, 8, ["q_proj", "k_proj", "v_proj", "o_proj"], True),
         (1, 2, None, False), (4, 4, ["v_proj", "down_proj"], False)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    base_dir = root / "base"
    model = hf_llama(base_dir, vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=2, eos_token_id=3, pad_token_id=0)
    save_tokenizer(base_dir)
    dirs = []
    for i, (r, alpha, targets, rs) in enumerate(SPECS):
        kw = {} if targets is None else dict(target_modules=targets)
        write_adapter(model, root / f"a{i}", seed=10 + i, r=r, lora_alpha=alpha, use_rslora=rs, scale_b=2.0, **kw)
        dirs.append(str(root / f"a{i}"))
    return root, str(base_dir), dirs


def test_batched_scores_equal_transformers_peft_one_at_a_time(setup):
    _, base_dir, dirs = setup
    ex = examples(7, 1)  # 7 rows: padded to whole steps on the batched side
    res = select_bench.measure(base_dir, dirs, ex, max_new_tokens=5, adapters_per_batch=2, loss_examples_per_step=3,
                               gen_examples_per_step=3, hf_batch=4, progress=False)
    assert res["n_adapters"] == len(SPECS) and res["n_skipped"] == 0
    loss = res["loss"]
    assert loss["max_abs_diff"] < 1e-5, loss  # float32 on both sides, mean over 7 answers
    assert np.ptp(loss["losses"]) > 0.05  # the adapters really differ (the agreement is not vacuous)
    gen = res["generate"]
    assert gen["identical"] == gen["total"] == len(SPECS) * len(ex), gen["differ"]
    assert gen["distinct_answers"] >= 3  # different adapters, different answers
    for kind in ("loss", "generate"):
        assert loss["jaxmerge_s"] > 0 and res[kind]["transformers_peft_s"] > 0 and res[kind]["speedup"] > 0


def test_bench_select_cli(setup, capsys):
    root, base_dir, dirs = setup
    task = root / "toy"  # a task folder: the protocol's 80 train + 20 validation rows, and a test split
    task.mkdir(exist_ok=True)
    for split, n, seed in (("train", 80, 2), ("validation", 20, 3), ("test", 4, 4)):
        (task / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples(n, seed)))
    rc = main(["bench", "select", "--json", "--quiet", "--base", base_dir, "--adapters", *dirs[:2], "--task", str(task),
               "--examples", "5", "--only", "loss", "--adapters-per-batch", "2"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_adapters"] == 2 and res["n_examples"] == 5 and "generate" not in res
    assert res["loss"]["max_abs_diff"] < 1e-5
