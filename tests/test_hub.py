"""Hub loading proven offline: caches written in huggingface_hub's own layout (``helpers.hub_cache``,
by its own ``snapshot_download`` from a local ``FakeHub``), read back with ``HF_HUB_OFFLINE=1``."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmerge
from helpers import HUB_LICENSE, hf_llama, hub_cache, use_hub_cache, write_adapter


def test_hub_cache_is_huggingface_hubs_own_layout(tmp_path):
    from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"a": 1}')
    (src / "model.safetensors").write_bytes(b"\0" * 1000)
    cache = tmp_path / "hub"
    snaps = hub_cache(cache, {"org/name": src})
    snaps.update(hub_cache(cache, {"org/ds": {"data/train.json": b"[]"}}, repo_type="dataset"))
    repos = {(r.repo_id, r.repo_type): r for r in scan_cache_dir(cache).repos}
    assert set(repos) == {("org/name", "model"), ("org/ds", "dataset")}
    (rev,) = repos[("org/name", "model")].revisions
    assert rev.refs == frozenset({"main"}) and {f.file_name for f in rev.files} == {"config.json", "model.safetensors"}
    assert all(os.path.islink(f.file_path) and f.blob_path.parent.name == "blobs" for f in rev.files)
    # offline (the suite's HF_HUB_OFFLINE=1), huggingface_hub resolves them from the cache alone
    assert snapshot_download("org/name", cache_dir=cache) == snaps["org/name"]
    p = hf_hub_download("org/ds", "data/train.json", repo_type="dataset", cache_dir=cache)
    assert open(p).read() == "[]"
    from huggingface_hub.errors import LocalEntryNotFoundError
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("org/absent", cache_dir=cache)


# --- load_base, merge and pools from hub ids, offline --------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A base and two adapters as local folders, and the same as hub repos in a cache."""
    root = tmp_path_factory.mktemp("hub")
    model = hf_llama(root / "base", seed=4)
    for name, seed in (("a", 1), ("b", 2)):
        write_adapter(model, root / name, seed=seed, r=4, lora_alpha=8)
        (root / name / "README.md").write_text(HUB_LICENSE)  # hub adapters need a licence (the paper's filter)
    cache = root / "cache"
    hub_cache(cache, {"someone/tiny-llama": root / "base"})
    hub_cache(cache, {f"someone/lora-{n}": root / n for n in ("a", "b")})
    return root, cache


def _logits(base):
    tok = jnp.asarray(np.random.RandomState(0).randint(3, 128, (1, 12)))
    return np.asarray(jaxmerge.forward(base.params, tok, base.config))


def test_load_base_from_a_hub_id_offline(hub, monkeypatch):
    root, cache = hub
    use_hub_cache(monkeypatch, cache)
    base = jaxmerge.load_base("someone/tiny-llama", dtype="float32")
    assert os.path.realpath(base.path).startswith(os.path.realpath(cache / "models--someone--tiny-llama" / "snapshots"))
    np.testing.assert_array_equal(_logits(base), _logits(jaxmerge.load_base(str(root / "base"), dtype="float32")))


def test_absent_hub_id_names_it_and_the_offline_mode(hub, monkeypatch):
    _, cache = hub
    use_hub_cache(monkeypatch, cache)
    from huggingface_hub.errors import LocalEntryNotFoundError
    with pytest.raises(jaxmerge.params.NotFound) as e:
        jaxmerge.load_base("someone/not-cached")
    assert not isinstance(e.value, LocalEntryNotFoundError)
    msg = str(e.value)
    assert "'someone/not-cached'" in msg and "HF_HUB_OFFLINE=1" in msg and str(cache) in msg and "\n" not in msg


def test_merge_cli_with_hub_ids_offline(hub, tmp_path):
    root, cache = hub
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = lambda *args: subprocess.run([sys.executable, "-m", "jaxmerge", "merge", *args], env=env,
                                       capture_output=True, text=True, timeout=600)
    out = run("--base", "someone/tiny-llama", "--adapters", "someone/lora-a", "someone/lora-b", "--method",
              "average", "--out", str(tmp_path / "hub"), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    local = run("--base", str(root / "base"), "--adapters", str(root / "a"), str(root / "b"), "--method", "average",
                "--out", str(tmp_path / "local"), "--quiet")
    assert local.returncode == 0, local.stderr[-3000:]
    kept = [r["source"] for r in json.loads((tmp_path / "hub" / "report.json").read_text())["adapters"] if r["kept"]]
    assert kept == ["someone/lora-a", "someone/lora-b"]
    a = jaxmerge.load_base(str(tmp_path / "hub"), dtype="float32")
    b = jaxmerge.load_base(str(tmp_path / "local"), dtype="float32")
    np.testing.assert_array_equal(_logits(a), _logits(b))
    assert np.abs(_logits(a) - _logits(jaxmerge.load_base(str(root / "base"), dtype="float32"))).max() > 1e-3
    # a base that is not cached: one line naming it and the offline mode, before any adapter is read
    bad = run("--base", "someone/not-cached", "--adapters", "someone/lora-a", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert "'someone/not-cached'" in bad.stderr and "HF_HUB_OFFLINE=1" in bad.stderr


# --- a registry task's hub dataset, offline ------------------------------------------------------------
def _arc_parquet(n, offset):
    import io
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"id": f"q{i}", "question": f"Which number follows {i}?",
             "choices": {"text": [str(i + 1), str(i + 5), str(i - 1)], "label": ["A", "B", "C"]},
             "answerKey": "A"} for i in range(offset, offset + n)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


ARC_README = b"""---
configs:
- config_name: ARC-Easy
  data_files:
  - split: train
    path: ARC-Easy/train-*
  - split: test
    path: ARC-Easy/test-*
- config_name: ARC-Challenge
  data_files:
  - split: train
    path: ARC-Challenge/train-*
---
"""


def test_registry_hub_task_reads_the_hub_cache_offline(tmp_path, monkeypatch):
    """``--task arc_easy`` with HF_HUB_OFFLINE=1 and an empty datasets cache: the dataset repo's snapshot in
    huggingface_hub's cache (allenai/ai2_arc's layout: parquet per config, README configs) is what is read;
    ``tasks list --offline`` says so; without the snapshot it is one error naming the dataset and the mode."""
    import datasets
    from jaxmerge.tasks import TaskError, load_task
    from jaxmerge.tasks.cli import rows
    cache = tmp_path / "hub"
    use_hub_cache(monkeypatch, cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(TaskError, match=r"dataset allenai/ai2_arc \(ARC-Easy\) is not cached .*HF_HUB_OFFLINE=1"):
        load_task("arc_easy")
    hub_cache(cache, {"allenai/ai2_arc": {"README.md": ARC_README,
                                          "ARC-Easy/train-00000-of-00001.parquet": _arc_parquet(150, 0),
                                          "ARC-Easy/test-00000-of-00001.parquet": _arc_parquet(40, 1000),
                                          "ARC-Challenge/train-00000-of-00001.parquet": _arc_parquet(120, 5000)}},
              repo_type="dataset")
    data = load_task("arc_easy")
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, 40)
    ex = data.test[0]
    n = int(ex["prompt"].split("follows ")[1].split("?")[0])
    assert 1000 <= n < 1040 and ex["answer"] == "A" and f"A. {n + 1}" in ex["prompt"]
    assert {e["prompt"] for e in data.train}.isdisjoint(e["prompt"] for e in data.validation)
    listed = {r["task"]: r["offline"] for r in rows()}
    assert listed["arc_easy"].startswith("yes") and listed["arc_challenge"].startswith("yes")
