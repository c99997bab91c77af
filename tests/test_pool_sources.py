"""Pool sources fail loudly: a mistyped path is a one-line error naming it (``load_pool``, ``pool stats``,
``pool filter``), never a silently smaller pool; ``pool stats`` lists corrupt adapters as unreadable
instead of counting them."""

import json
import os

import pytest

import jaxmerge
from helpers import hf_llama, write_adapter
from jaxmerge.cli import main
from jaxmerge.pool.sources import SourceError


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    model = hf_llama(root / "base", seed=3)
    write_adapter(model, root / "ads" / "good", seed=1, r=4)
    write_adapter(model, root / "ads" / "corrupt", seed=2, r=4)
    f = root / "ads" / "corrupt" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:200])  # truncated: the header points past the end
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("typo,why", [
    ("ads/goood", "no such file or folder (ads/ exists, so it is not read as a hub id)"),
    ("no/such/place", "no such file or folder, not a pool manifest (paper-llama31-8b, paper-qwen3-4b)"),
    ("empty", "a folder with no adapter folders under it"),
])
def test_mistyped_source_is_an_error_naming_it(pool_dir, monkeypatch, capsys, typo, why):
    monkeypatch.chdir(pool_dir)
    base = jaxmerge.load_base("base", dtype="float32")
    with pytest.raises(SourceError, match=f"pool source {typo}: ") as e:
        jaxmerge.load_pool(["ads/good", typo], base.config, progress=False)
    assert why in str(e.value)
    for cmd in (["pool", "stats", "ads/good", typo], ["pool", "filter", typo, "--base", "base", "--out", "f"]):
        with pytest.raises(SystemExit) as ex:
            main(cmd)
        err = capsys.readouterr().err
        assert ex.value.code == 2 and err.count("\n") == 1 and f"pool source {typo}: {why}" in err, err
    assert not os.path.exists("f")


def test_stats_do_not_count_corrupt_adapters(pool_dir, capsys):
    assert main(["pool", "stats", str(pool_dir / "ads"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_adapters"] == 1 and stats["ranks"] == {"4": 1}
    (bad,) = stats["unreadable"]
    assert bad["source"].endswith("corrupt") and "truncated" in bad["reason"]
