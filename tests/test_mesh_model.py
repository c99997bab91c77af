"""Sharded load + forward + generate on a simulated 8-device CPU mesh equal one device."""

import json
import os
import subprocess
import sys

from helpers import hf_llama, mesh_env

HERE = os.path.dirname(__file__)


def run_on_8_devices(script, *args):
    env = mesh_env(8)
    out = subprocess.run([sys.executable, os.path.join(HERE, "mesh", script), *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_equals_single_device(tmp_path):
    hf_llama(tmp_path, seed=11, num_attention_heads=8, head_dim=8, num_key_value_heads=4)
    r = run_on_8_devices("model_on_mesh.py", tmp_path)
    assert r["bad"] == []
    # q_proj [L, heads·K, D] is split 4-way over heads (tensor) and 2-way over D (data/fsdp).
    assert r["q_shard_shape"] == [r["q_shape"][0], r["q_shape"][1] // 4, r["q_shape"][2] // 2]
    assert r["max_diff"] < 1e-5
    assert r["gen_equal"]
