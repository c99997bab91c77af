"""``jaxmerge bench merge``: runs through the CLI on a tiny config, reports the required keys, and its
jaxmerge side equals PEFT's ``get_delta_weight`` fold of the same adapters."""

from __future__ import annotations

import json

from transformers import LlamaConfig

from jaxmerge import xla_cpu
from jaxmerge.cli import main

# (out, in) of each projection for hidden 64, intermediate 160, 4 heads of 16, 2 KV heads
SHAPES = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
          "gate_proj": (160, 64), "up_proj": (160, 64), "down_proj": (64, 160)}


def test_bench_merge_json(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128).to_json_file(str(cfg))
    # four known adapter shapes (the shapes file's format), all drawn since k = 4
    pool_shapes = tmp_path / "shapes.json"
    pool_shapes.write_text(json.dumps({"adapters": [
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        {"r": 8, "lora_alpha": 16, "target_modules": list(SHAPES)},
        {"r": 2, "lora_alpha": 2, "target_modules": ["gate_proj", "up_proj", "down_proj"]},
        {"r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}]}))
    sum_r = {"q_proj": 28, "k_proj": 24, "v_proj": 28, "o_proj": 24, "gate_proj": 10, "up_proj": 10, "down_proj": 10}
    out = tmp_path / "bench.json"
    rc = main(["bench", "merge", "--json", "--model", str(cfg), "--k", "4", "--layers", "2", "--rounds", "2",
               "--method-layers", "1", "--pool-shapes", str(pool_shapes), "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out.read_text())
    for key in ("useful_gflops", "peak_gflops", "jaxmerge_seconds", "peft_seconds", "speedup_vs_peft"):
        assert res[key] > 0, key
    assert res["peak_gflops"] == max(res["peak_jax_gflops"], res["peak_torch_gflops"])
    # what ran, read from the compiled HLO: by default ("auto") oneDNN on an x86-64 CPU (jaxmerge.xla_cpu), with
    # TIES and TSV (below) in the same process on XLA's default
    assert res["xla_cpu_dot_asked"] == "auto"
    if xla_cpu.dot_options("auto"):
        assert res["xla_cpu_dot"] == "onednn", res["xla_cpu_dot"]
    else:
        assert res["xla_cpu_dot"] in ("ynnpack", "xnnpack", "xla"), res["xla_cpu_dot"]
    assert len(res["fraction_of_peak_per_round"]) == 2
    # useful work is 2·out·in·Σr per module and layer
    assert res["sum_r_per_module"] == sum_r
    expect = 2 * sum(o * d * sum_r[m] for m, (o, d) in SHAPES.items())
    assert abs(res["useful_gflop"] - 2 * expect / 1e9) <= 1e-12
    # float32 merge of random factors: jaxmerge and PEFT agree to rounding
    assert res["peft_max_rel_diff_layer0"] < 1e-5
    for method in ("ties", "tsv"):
        assert res[method]["layers"] == 1 and res[method]["seconds_per_layer"] > 0
    mem = res["memory"]
    assert mem["stack_bytes"] > 0
    assert mem["one_layer_delta_bytes"] == 4 * sum(o * d for o, d in SHAPES.values())
    assert mem["stack_bytes"] == 4 * 2 * sum(sum_r[m] * (o + d) for m, (o, d) in SHAPES.items())
