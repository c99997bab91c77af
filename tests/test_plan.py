"""Memory plans: compiled bytes agree with a real run; the CLI reports the documented keys on a
simulated multi-device mesh."""

import json
import os
import subprocess
import sys

import pytest

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


def _config(tmp_path, **changes):
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rope_theta": 500000.0}
    cfg.update(changes)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path / "config.json")


def test_plan_is_strict_about_sharding(tmp_path):
    """A model dim the mesh does not divide is an error naming every such weight, not a replicated plan."""
    path = _config(tmp_path, hidden_size=66, num_attention_heads=6, num_key_value_heads=3)
    out = subprocess.run([sys.executable, "-m", "jaxmerge", "plan", "--model", path, "--k", "4", "--devices", "4",
                          "--batch", "4", "--seq", "16"], env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "would be replicated on mesh {'data': 4, 'tensor': 1}" in out.stderr
    assert "['embed_tokens']: dim 1 ('embed', size 66) is not divisible by mesh axes ('data',) (4)" in out.stderr
    assert "Traceback" not in out.stderr


def test_plan_unknown_model_lists_the_known_ones():
    out = subprocess.run([sys.executable, "-m", "jaxmerge", "plan", "--model", "llama-3.1-70b"], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "'llama-3.1-70b' is neither a known model (llama-3.1-8b, llama-3.2-1b, qwen3-4b)" in out.stderr


def _plan_json(path: str, *args: str) -> dict:
    """``jaxmerge plan --json`` in a child process: the compile runs in a fresh process, not in the test worker
    that has already compiled hundreds of programs (CI once lost a worker to a crash inside this compile)."""
    out = subprocess.run([sys.executable, "-m", "jaxmerge", "plan", "--model", path, "--json", *args], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_plan_of_a_tied_base(tmp_path, family):
    """Tied embeddings (no lm_head; Llama-3.2's and Qwen3-4B's) compile and count no head weights twice."""
    extra = {"head_dim": 32, "architectures": ["Qwen3ForCausalLM"], "num_key_value_heads": 2} if family == "qwen3" else {}
    args = ("--k", "4", "--devices", "1", "--batch", "2", "--seq", "16", "--dtype", "float32")
    tied = _plan_json(_config(tmp_path / "tied", model_type=family, tie_word_embeddings=True, **extra), *args)
    untied = _plan_json(_config(tmp_path / "untied", model_type=family, tie_word_embeddings=False, **extra), *args)
    head = 512 * 64 * 4  # the vocab × hidden float32 head
    assert untied["per_device_bytes"]["arguments"] - tied["per_device_bytes"]["arguments"] == head
