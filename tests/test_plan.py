"""Memory plans: compiled bytes agree with a real run; the CLI reports the documented keys on a
simulated multi-device mesh."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(__file__)
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def test_planned_bytes_match_a_measured_run():
    out = subprocess.run([sys.executable, os.path.join(HERE, "mesh", "plan_vs_run.py")], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    plan = r["plan"]
    assert abs(plan["arguments"] - r["argument_bytes"]) <= 64  # the same arrays (scalar padding aside)
    planned_new = plan["temporaries"] + plan["outputs"]
    assert planned_new > 500e6  # large enough that allocator noise is small against it
    # Stated margin: the measured peak RSS growth during the step is within 15 % of the plan.
    assert r["measured"]["memory_source"].startswith("process peak RSS")
    assert abs(r["measured"]["peak_growth_bytes"] - planned_new) / planned_new < 0.15, r
    assert r["measured"]["step_seconds"] > 0 and r["measured"]["loss"] > 0


def test_plan_cli_on_simulated_mesh(tmp_path):
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-m", "jaxmerge", "plan", "--model", str(tmp_path / "config.json"),
                          "--k", "12", "--devices", "4", "--batch", "4", "--seq", "32", "--measure", "2", "--json"], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    for key in ("per_device_bytes", "flops_per_step", "devices", "k"):
        assert key in r
    assert r["devices"] == 4 and r["k"] == 12 and r["mesh"] == {"data": 4, "tensor": 1}
    assert r["per_device_bytes"]["arguments"] > 0 and r["flops_per_step"] > 0
    m = r["measured"]  # two steps on random arrays of the planned shapes, sharded over the 4 devices
    assert m["steps"] == 2 and m["step_seconds"] > 0 and m["tflops_per_device"] > 0 and m["loss"] > 0
