"""Check a merged checkpoint without loading it into memory: transformers builds the model on the meta
device from OUT and matches every weight key of its index (no missing or unexpected tensor, shapes from
the headers), and sampled small tensors equal the PEFT ``merge_utils`` oracle (W + merge of s·B·A read
from the adapter files, rounded like the output) — for checkpoints too big to load on this machine.

    python -m experiments.verify_merge --out OUT --base BASE --adapters ADAPTER_DIR... --method ties
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def meta_load(out: str) -> dict:
    """transformers' own key matching of OUT on the meta device: (missing, unexpected, mismatched) keys."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from jaxmerge.pool.shards import Checkpoint
    cfg = AutoConfig.from_pretrained(out)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    ckpt = Checkpoint(out)
    got = {k: tuple(ckpt.spec(k)[1]) for k in ckpt.keys()}
    return {"missing": sorted(set(expected) - set(got)), "unexpected": sorted(set(got) - set(expected)),
            "mismatched": sorted(k for k in set(got) & set(expected) if got[k] != expected[k]),
            "tensors": len(got), "parameters": int(sum(int(__import__("numpy").prod(s)) for s in got.values()))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.verify_merge", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--adapters", nargs="+", required=True, help="the adapter folders, in the merge's order")
    p.add_argument("--method", required=True, choices=("linear", "ties"))
    p.add_argument("--layers", type=int, nargs="+", default=[0, -1], help="layers whose k/v projections are sampled")
    a = p.parse_args(argv)
    from jaxmerge.bench.export_bench import agreement, oracle, sample
    with open(os.path.join(a.out, "config.json")) as f:
        L = json.load(f)["num_hidden_layers"]
    keys = [f"model.layers.{l % L}.self_attn.{m}.weight" for l in a.layers for m in ("k_proj", "v_proj")]
    ads = [x for src in a.adapters for x in (sorted(os.path.join(src, d) for d in os.listdir(src))
                                               if not os.path.exists(os.path.join(src, "adapter_config.json")) else [src])]
    res = meta_load(a.out)
    res["agreement_with_oracle"] = agreement(sample(a.out, keys), oracle(a.method, a.base, ads, keys))
    res["sampled"] = keys
    print(json.dumps(res, indent=1))
    return 0 if not (res["missing"] or res["unexpected"] or res["mismatched"]) else 1


if __name__ == "__main__":
    sys.exit(main())
