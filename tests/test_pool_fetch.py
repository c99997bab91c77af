"""Pool manifests and ``jaxmerge pool fetch`` against a local fake hub (``helpers.FakeHub``, spoken to by
huggingface_hub's own client; never the network): allow-listed files only, every failure kind reported
without stopping the rest, resumable, then the fetched pool loads offline — and an adapter whose config
disagrees with the manifest is reported, not merged."""

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import HUB_LICENSE, FakeHub, folder_files, hf_llama, online_hub, use_hub_cache, write_adapter
from jaxmerge.pool import manifest
from jaxmerge.pool.fetch import fetch



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, adapters of every kind as hub repos, and a manifest naming them."""
    root = tmp_path_factory.mktemp("fetch")
    model = hf_llama(root / "base", seed=2)
    repos, entries = {}, []
    for name, r in (("good", 4), ("other", 8), ("mismatch", 4)):
        write_adapter(model, root / name, seed=r, r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        files = folder_files(root / name)
        files.update({"README.md": HUB_LICENSE, "training_args.bin": b"pickle", "extra/notes.txt": b"not fetched"})
        repos[f"org/{name}"] = files
        recorded = 8 if name == "mismatch" else r  # the manifest says r=8, the adapter has r=4
        entries.append({"id": f"org/{name}", "r": recorded, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"]})
    bin_only = {k: v for k, v in repos["org/good"].items() if k != "adapter_model.safetensors"}
    bin_only["adapter_model.bin"] = b"pickle"
    repos["org/pickled"] = bin_only
    repos["org/gated"] = repos["org/good"]
    repos["org/not-a-lora"] = {"config.json": b"{}"}
    entries += [{"id": f"org/{n}"} for n in ("pickled", "gated", "not-a-lora", "vanished")]
    path = root / "pool.json"
    path.write_text(json.dumps({"name": "toy", "base_model": "org/base", "adapters": entries}))
    return root, repos, str(path)


def _hub(repos):
    hub = FakeHub()
    for repo_id, files in repos.items():
        hub.add(repo_id, files, gated=repo_id == "org/gated")
    return hub


def test_shipped_manifests():
    assert manifest.names() == ["paper-llama31-8b", "paper-qwen3-4b"]
    llama, qwen = manifest.load("paper-llama31-8b"), manifest.load("paper-qwen3-4b")
    assert len(llama.entries) == 960 and sum(e.recorded for e in llama.entries) == 955
    assert llama.base_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert len(qwen.entries) == 1956 and qwen.base_model == "Qwen/Qwen3-4B-Instruct-2507"
    assert len({e.id for e in llama.entries}) == 960
    e = llama.entries[0]
    assert (e.id, e.r, e.lora_alpha) == ("GaetanMichelet/Llama-31-8B_task-3_60-samples_config-1_auto", 16, 16.0)


def test_benchmark_shapes_derive_from_the_shipped_manifest():
    from jaxmerge import shapes
    all_shapes, source = shapes.load_shapes()
    assert source.startswith("manifest paper-llama31-8b") and len(all_shapes) == 955
    assert sum(s.r == 16 for s in all_shapes) == 285 and sum(s.r == 8 for s in all_shapes) == 274


def test_fetch_reports_every_kind_and_resumes(world, tmp_path):
    root, repos, path = world
    cache = str(tmp_path / "hub")
    with _hub(repos) as hub, online_hub(hub.url):
        dry = fetch([path], cache_dir=cache, dry_run=True, endpoint=hub.url, progress=False)
        assert {r["status"] for r in dry.rows} == {"would fetch"} and hub.requests == []  # no network
        report = fetch([path], cache_dir=cache, endpoint=hub.url, progress=False)
        status = {r["id"]: r["status"] for r in report.rows}
        assert status == {"org/good": "fetched", "org/other": "fetched", "org/mismatch": "config mismatch",
                          "org/pickled": "pickle-only", "org/gated": "gated", "org/not-a-lora": "missing",
                          "org/vanished": "missing"}
        why = {r["id"]: r["reason"] for r in report.rows}
        assert why["org/mismatch"] == "r 4 (recorded 8)"
        # exactly the allow-listed files were downloaded: no .bin, no notes
        for r in report.rows:
            if r["folder"]:
                assert sorted(os.listdir(r["folder"])) == ["README.md", "adapter_config.json",
                                                           "adapter_model.safetensors"], r
        assert not any(".bin" in p for _, p in hub.requests)
        hub.requests.clear()
        again = fetch([path], cache_dir=cache, endpoint=hub.url, progress=False)
        assert {r["id"]: r["status"] for r in again.rows}["org/good"] == "cached"
        assert not any("/org/good/" in p or "/org/other/" in p for _, p in hub.requests)  # resumed: not contacted


def test_fetched_pool_loads_offline_and_mismatch_is_not_merged(world, tmp_path, monkeypatch):
    import jaxmerge
    root, repos, path = world
    cache = tmp_path / "hub"
    with _hub(repos) as hub, online_hub(hub.url):
        fetch([path], cache_dir=str(cache), endpoint=hub.url, progress=False)
    use_hub_cache(monkeypatch, cache)  # offline from here on
    base = jaxmerge.load_base(str(root / "base"), dtype="float32")
    pool, report = jaxmerge.load_pool([path], base.config, progress=False)
    assert pool.names == ("org/good", "org/other")
    rows = {r["source"]: r["reason"] for r in report.rows}
    assert rows["org/mismatch"] == "config disagrees with the manifest: r 4 (recorded 8)"
    assert "HF_HUB_OFFLINE=1" in rows["org/vanished"] and "'org/vanished'" in rows["org/vanished"]


def test_fetch_cli(world, tmp_path):
    root, repos, path = world
    cache = tmp_path / "hub"
    with _hub(repos) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        out = subprocess.run([sys.executable, "-m", "jaxmerge", "pool", "fetch", path, "org/good", "--cache-dir",
                              str(cache), "--report", str(tmp_path / "r.json"), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr  # some failed; the others were still fetched
    assert "8 adapters: 3 fetched, 1 config mismatch, 1 pickle-only, 1 gated, 2 missing" in out.stderr
    assert re.search(r"\n  gated +org/gated: gated repository", out.stderr), out.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["adapters"]
    assert [r["status"] for r in rows][-1] == "fetched"  # the id given after the manifest
    dry = subprocess.run([sys.executable, "-m", "jaxmerge", "pool", "fetch", "paper-llama31-8b", "--dry-run",
                          "--quiet", "--cache-dir", str(cache)], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert len(lines) == 960 and lines[0].split() == [
        "would", "fetch", "GaetanMichelet/Llama-31-8B_task-3_60-samples_config-1_auto", "README.md",
        "adapter_config.json", "adapter_model.safetensors"]
