"""``jaxmerge bench export`` end to end on a tiny config: every tool runs in its own process, outputs are
sampled and deleted, and the agreements are the real ones — jaxmerge's bf16 output equals the PEFT
merge_utils oracle exactly; PEFT's and mergekit's (which compute in bf16) within bf16 rounding."""

from __future__ import annotations

import json

from jaxmerge.cli import main


def test_bench_export_json(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                               "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "rms_norm_eps": 1e-5,
                               "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": False}))
    out = tmp_path / "bench.json"
    assert main(["bench", "export", "--json", "--model", str(cfg), "--layers", "2", "--k", "3", "--mergekit-k", "2",
                 "--methods", "linear", "--delta-std", "0.05", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out.read_text())
    e = res["methods"]["linear"]
    assert set(e["runs"]) == {"jaxmerge_k3", "peft_k3", "jaxmerge_k2", "mergekit_k2"}
    for r in e["runs"].values():
        assert r["seconds"] > 0 and 50 << 20 < r["peak_rss_bytes"] < 4 << 30
    ag = e["agreement"]
    assert ag["jaxmerge_k3_vs_oracle"] == 0.0 and ag["jaxmerge_k2_vs_oracle"] == 0.0
    for name in ("peft_k3_vs_oracle", "mergekit_k2_vs_oracle", "jaxmerge_vs_peft_k3", "jaxmerge_vs_mergekit_k2"):
        assert 0 < ag[name] < 1e-2, (name, ag)
    assert e["speedup_vs_peft_k3"] > 0 and e["memory_ratio_vs_mergekit_k2"] > 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["scratch"]  # inputs deleted
    assert not [p for p in (tmp_path / "w" / "scratch").iterdir() if p.is_dir()]  # outputs deleted
