"""Where mergekit's TIES differs from PEFT's (BUILD_NOTES, "mergekit's TIES vs PEFT's"): on a real base,
mergekit 0.1.5 (``base+lora`` models through its LoRA cache) against ``jaxmerge merge`` — with mergekit's
LoRA cache in float32 (its default for a float32 base) and in float64 — for ``ties`` with weights 1 and
with unequal weights (against ``ties`` and ``ties_mergekit``).

    python -m experiments.mergekit_ties --base SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/mk

Per case: how many layer matrices differ by more than 1e-5 and the largest difference relative to the
matrix's largest merged entry. Adapters: three generated ones of ranks 8/16/4 (all seven, q+v,
attention), ΔW entries of std 1e-3 (``jaxmerge.bench.synth``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys


def run_mergekit(base, ads, weights, density, cache_dtype, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    cfg = {"merge_method": "ties", "base_model": base, "dtype": cache_dtype,
           "models": [{"model": f"{base}+{a}", "parameters": {"weight": w, "density": density}}
                      for a, w in zip(ads, weights)]}
    shutil.rmtree(out, ignore_errors=True)
    run_merge(MergeConfiguration.model_validate(cfg), out,
              MergeOptions(lora_merge_cache=f"{out}-cache-{cache_dtype}", lora_merge_dtype=cache_dtype, quiet=True,
                           copy_tokenizer=False, write_model_card=False))


def compare(base, a, b) -> dict:
    import numpy as np
    from safetensors.numpy import load_file
    w = load_file(os.path.join(base, "model.safetensors"))
    ta = {k: v for f in glob.glob(os.path.join(a, "*.safetensors")) for k, v in load_file(f).items()}
    tb = {k: v for f in glob.glob(os.path.join(b, "*.safetensors")) for k, v in load_file(f).items()}
    n, worst, total = 0, 0.0, 0
    for k in w:
        if ".layers." in k and k.endswith("_proj.weight"):
            da, db = ta[k].astype(np.float64) - w[k], tb[k].astype(np.float64) - w[k]
            diff = np.abs(da - db).max()
            total += 1
            n += diff > 1e-5
            worst = max(worst, diff / max(np.abs(db).max(), 1e-30))
    return {"matrices_differing": int(n), "of": total, "max_relative": float(worst)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.mergekit_ties", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base folder or .gguf (SmolLM2-135M-Instruct)")
    p.add_argument("--density", type=float, default=0.8)
    p.add_argument("--out", default="runs/mergekit_ties")
    a = p.parse_args(argv)
    import jaxmerge
    from jaxmerge.bench.synth import write_adapters
    from jaxmerge.config import MODULES
    from jaxmerge.merge.stream import stream_merge
    from jaxmerge.params import resolve
    from jaxmerge.shapes import AdapterShape
    base = resolve(a.base)
    config = jaxmerge.load_base(base, dtype="float32", tokenizer=False).config
    shapes = [AdapterShape(8, 16.0, MODULES), AdapterShape(16, 16.0, ("q_proj", "v_proj")),
              AdapterShape(4, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"))]
    ads = write_adapters(os.path.join(a.out, "adapters"), config, shapes, dtype="float32", delta_std=1e-3,
                         progress=False)
    res = {}
    for weights in ([1.0, 1.0, 1.0], [1.0, 0.5, 2.0]):
        tag = "w" + "-".join(f"{w:g}" for w in weights)  # no commas: mergekit splits model references on them
        for method in ("ties", "ties_mergekit"):
            out = os.path.join(a.out, f"jaxmerge-{method}-{tag}")
            stream_merge(base, ads, out, method=method, params={"density": a.density}, weights=weights,
                         dtype="float32", progress=False, replace=True)
        for cache in ("float32", "float64"):
            mk = os.path.join(a.out, f"mergekit-{cache}-{tag}")
            # a process of its own: within one process mergekit reuses the first LoRA-merged models it made,
            # whatever the cache folder or dtype asked later
            code = "import sys, json; from experiments.mergekit_ties import run_mergekit; run_mergekit(*json.loads(sys.argv[1]))"
            subprocess.run([sys.executable, "-c", code, json.dumps([base, ads, weights, a.density, cache, mk])],
                           check=True, capture_output=True)
            for method in ("ties", "ties_mergekit"):
                res[f"weights {weights}, mergekit cache {cache} vs jaxmerge {method}"] = compare(
                    base, os.path.join(a.out, f"jaxmerge-{method}-{tag}"), mk)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
