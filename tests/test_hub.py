"""Hub loading proven offline: caches written in huggingface_hub's own layout (``helpers.hub_cache``,
by its own ``snapshot_download`` from a local ``FakeHub``), read back with ``HF_HUB_OFFLINE=1``."""

import os

import pytest

from helpers import hub_cache


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
