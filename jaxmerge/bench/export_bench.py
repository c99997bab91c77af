"""``jaxmerge bench export``: merge k LoRAs into a checkpoint of Llama-3.1-8B dimensions (bf16, ``--layers``
≥ 8) — jaxmerge (``jaxmerge merge``, streamed) vs mergekit (``mergekit-yaml`` with ``base+lora`` models,
``--lora-merge-cache``, its low-memory options ``--lazy-unpickle --out-shard-size 1B``) vs PEFT
(``add_weighted_adapter(cat)`` + ``merge_and_unload`` + ``save_pretrained``), side by side in one run:
wall time, peak RSS (each tool in its own process, ``wait4``'s ``ru_maxrss``) and the agreement of sampled
output tensors (max |a − b| / max |b| over them; bf16 rounding alone gives up to ~4e-3) with each other
and with an oracle: PEFT's ``merge_utils`` (``task_arithmetic`` / ``ties``) applied in float32 to the
deltas s·B·A read from the adapter files, added to W and rounded to bf16 like the outputs.

Inputs are generated once under ``--workdir`` (``jaxmerge.bench.synth``: N(0, 0.02) weights, k adapters
drawn from the real pool's (rank, alpha, modules) mix with ΔW entries of std ``--delta-std``). mergekit
materialises one full model per adapter in its LoRA cache (``--layers`` × 0.44 GB + 2.1 GB of
embeddings each at 8B dims), so it runs on the first ``--mergekit-k`` adapters — jaxmerge runs on those
too, for the like-for-like ratio — and every output is deleted once sampled. PEFT's only dense
fold of several LoRAs is ``cat`` (exact task arithmetic), so PEFT runs for ``linear`` only.
Run it under the heavy-job lock on a shared machine: ``flock /tmp/jaxmerge-heavy.lock jaxmerge bench export``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PEFT_SCRIPT = r'''
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, out, ads = sys.argv[1], sys.argv[2], sys.argv[3:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
names = [f"a{i}" for i in range(len(ads))]
model = PeftModel.from_pretrained(model, ads[0], adapter_name=names[0])
for n, a in zip(names[1:], ads[1:]):
    model.load_adapter(a, adapter_name=n)
model.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type="cat")
model.set_adapter("merged")
for n in names:
    model.delete_adapter(n)
model.merge_and_unload().save_pretrained(out)
'''
MERGEKIT_METHOD = {"linear": "task_arithmetic", "ties": "ties"}
TIES_DENSITY = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--workdir", default="/tmp/jaxmerge-bench-export", help="inputs and scratch outputs")
    parser.add_argument("--model", default="llama-3.1-8b", help="a known model or config.json (dims)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--k", type=int, default=30, help="adapters merged by jaxmerge and PEFT")
    parser.add_argument("--mergekit-k", type=int, default=4, help="adapters merged by mergekit (and jaxmerge beside "
                        "it): its LoRA cache holds one full model per adapter")
    parser.add_argument("--methods", nargs="+", default=["linear", "ties"], choices=sorted(MERGEKIT_METHOD))
    parser.add_argument("--delta-std", type=float, default=1e-3)
    parser.add_argument("--pool-shapes", help="shapes file or manifest (default: the shipped Llama manifest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--keep-inputs", action="store_true", help="keep the generated checkpoint and adapters")


# A child's ru_maxrss counts the memory of the process it was forked from (Linux carries the old mm's
# high-water mark across exec), so each tool is started from this bare launcher (~10 MB), not from the
# benchmark (hundreds of MB of JAX): the figure is the tool's own, give or take the launcher's floor.
LAUNCH = ("import os, sys; pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ); "
          "_, st, ru = os.wait4(pid, 0); open(sys.argv[1], 'w').write(str(ru.ru_maxrss * 1024)); "
          "sys.exit(os.waitstatus_to_exitcode(st))")


def measure(cmd: list[str], log: str) -> dict:
    """Run ``cmd`` in its own process: wall seconds and peak RSS (bytes)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-S", "-c", LAUNCH, log + ".rss", *cmd], stdout=f,
                            stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{cmd[0]} … exited {rc}:\n{tail}")
    with open(log + ".rss") as f:
        return {"seconds": round(seconds, 2), "peak_rss_bytes": int(f.read())}


def _inputs(args, config):
    from ..bench.synth import write_adapters, write_checkpoint
    from ..shapes import draw, load_shapes
    root = os.path.join(args.workdir, f"inputs-{args.model.replace('/', '_')}-L{config.num_hidden_layers}-k{args.k}"
                        f"-s{args.seed}-d{args.delta_std:g}")
    base, ads = os.path.join(root, "base"), os.path.join(root, "adapters")
    shapes = draw(load_shapes(args.pool_shapes)[0], args.k, args.seed)
    if not os.path.exists(os.path.join(base, "config.json")):
        write_checkpoint(base, config, seed=args.seed)
    if not os.path.exists(os.path.join(ads, f"adapter{len(shapes) - 1:03d}", "adapter_config.json")):
        write_adapters(ads, config, shapes, seed=args.seed, delta_std=args.delta_std)
    return root, base, [os.path.join(ads, f"adapter{i:03d}") for i in range(len(shapes))], shapes


def sample(folder: str, keys: list[str]):
    import numpy as np
    from ..pool.shards import Checkpoint
    ckpt = Checkpoint(folder)
    return {k: np.asarray(ckpt[k], np.float32) for k in keys}


def oracle(method: str, base: str, ads: list[str], keys: list[str]) -> dict:
    """W + merge_utils(method)(ΔW_i) in float32, rounded to bf16: the independent reference of each key."""
    import ml_dtypes
    import numpy as np
    import torch
    from peft.utils import merge_utils as mu
    from ..pool.shards import Checkpoint
    from ..safetensors_io import SafeFile
    w_base = Checkpoint(base)
    out = {}
    for key in keys:
        deltas = []
        for a in ads:
            with open(os.path.join(a, "adapter_config.json")) as f:
                cfg = json.load(f)
            f = SafeFile(os.path.join(a, "adapter_model.safetensors"))
            ka = "base_model.model." + key.replace(".weight", ".lora_A.weight")
            if ka not in f.keys():
                deltas.append(torch.zeros(w_base.spec(key)[1]))
                continue
            A = torch.from_numpy(np.asarray(f[ka], np.float32))
            B = torch.from_numpy(np.asarray(f[ka.replace("lora_A", "lora_B")], np.float32))
            deltas.append((B @ A) * (cfg["lora_alpha"] / cfg["r"]))
        ones = torch.ones(len(ads))
        d = mu.ties(deltas, ones, TIES_DENSITY, "total") if method == "ties" else mu.task_arithmetic(deltas, ones)
        total = np.asarray(w_base[key], np.float32) + d.numpy()
        out[key] = total.astype(ml_dtypes.bfloat16).astype(np.float32)
    return out


def agreement(a: dict, b: dict) -> float:
    """max |a − b| / max |b| over the sampled tensors."""
    import numpy as np
    return float(max(np.abs(a[k] - b[k]).max() for k in b) / max(np.abs(b[k]).max() for k in b))


def _jaxmerge(method, base, ads, out, log):
    cmd = [sys.executable, "-m", "jaxmerge", "merge", "--base", base, "--adapters", *ads, "--method", method,
           "--out", out, "--quiet"]
    return measure(cmd, log)


def _mergekit(method, base, ads, out, cache, log):
    import yaml
    params = {"weight": 1.0, **({"density": TIES_DENSITY} if method == "ties" else {})}
    cfg = {"merge_method": MERGEKIT_METHOD[method], "base_model": base, "dtype": "bfloat16",
           "models": [{"model": f"{base}+{a}", "parameters": params} for a in ads]}
    path = out + ".yml"
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    exe = shutil.which("mergekit-yaml") or os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    return measure([exe, path, out, "--lora-merge-cache", cache, "--lazy-unpickle", "--out-shard-size", "1B",
                    "--no-copy-tokenizer", "--quiet"], log)


def run(args) -> int:
    import dataclasses

    from ..config import known_or_json
    from ..errors import UserError

    if args.layers < 1 or args.k < 1 or not 1 <= args.mergekit_k <= args.k:
        raise UserError("--layers, --k ≥ 1 and 1 ≤ --mergekit-k ≤ --k")
    config = dataclasses.replace(known_or_json(args.model), num_hidden_layers=args.layers)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    os.makedirs(args.workdir, exist_ok=True)
    root, base, ads, shapes = _inputs(args, config)
    L = config.num_hidden_layers
    # small matrices: the oracle holds all k deltas of each
    keys = [f"model.layers.0.self_attn.k_proj.weight", f"model.layers.{L - 1}.self_attn.v_proj.weight"]
    scratch = os.path.join(args.workdir, "scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    res = {"model": args.model, "layers": L, "k": args.k, "mergekit_k": args.mergekit_k, "dtype": "bfloat16",
           "ranks": sorted(s.r for s in shapes), "sampled": keys, "methods": {}}
    for method in args.methods:
        runs, samples = {}, {}

        def record(name, fn, *a):
            out = os.path.join(scratch, name)
            log(f"{method}: {name} …")
            runs[name] = fn(*a, out, os.path.join(scratch, f"{name}.log"))
            samples[name] = sample(out, keys)
            shutil.rmtree(out, ignore_errors=True)
            log(f"{method}: {name} {runs[name]['seconds']} s, peak RSS {runs[name]['peak_rss_bytes'] / 2**30:.2f} GiB")

        record(f"jaxmerge_k{args.k}", lambda out, lg: _jaxmerge(method, base, ads, out, lg))
        if not args.no_peft and method == "linear":
            record(f"peft_k{args.k}", lambda out, lg: measure([sys.executable, "-c", PEFT_SCRIPT, base, out, *ads], lg))
        if not args.no_mergekit:
            sub = ads[:args.mergekit_k]
            record(f"jaxmerge_k{args.mergekit_k}", lambda out, lg: _jaxmerge(method, base, sub, out, lg))
            cache = os.path.join(scratch, "lora-cache")
            record(f"mergekit_k{args.mergekit_k}", lambda out, lg: _mergekit(method, base, sub, out, cache, lg))
            shutil.rmtree(cache, ignore_errors=True)
        entry = {"runs": runs, "agreement": {}}
        oracles = {int(name.split("_k")[1]) for name in runs}
        oracles = {k: oracle(method, base, ads[:k], keys) for k in sorted(oracles)}
        for name in runs:
            entry["agreement"][f"{name}_vs_oracle"] = agreement(samples[name], oracles[int(name.split("_k")[1])])
        for other in runs:
            if not other.startswith("jaxmerge"):
                k = other.split("_k")[1]
                entry["agreement"][f"jaxmerge_vs_{other}"] = agreement(samples[f"jaxmerge_k{k}"], samples[other])
                entry[f"speedup_vs_{other}"] = round(runs[other]["seconds"] / runs[f"jaxmerge_k{k}"]["seconds"], 2)
                entry[f"memory_ratio_vs_{other}"] = round(runs[other]["peak_rss_bytes"]
                                                          / runs[f"jaxmerge_k{k}"]["peak_rss_bytes"], 2)
        res["methods"][method] = entry
    if not args.keep_inputs:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(res, indent=1)
    if args.out:
        from ..atomic import write_text
        write_text(args.out, text + "\n")
    if args.json:
        print(text)
    else:
        for method, e in res["methods"].items():
            log(method, {k: v for k, v in e.items() if k != "runs"})
    return 0
