"""Shared fixtures: tiny real Llamas written by transformers' own ``save_pretrained``.

Everything here is offline: models are random-initialised from a config, saved to a temp dir in the
hub's format, and loaded back by jaxmerge.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the tests' subprocesses import ``helpers`` (this folder) like the tests do
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests never touch the user's caches: one fresh jaxmerge cache (worlds, references, registry downloads)
# and one fresh Hugging Face home for the whole session, made by the first process (the xdist controller,
# or a plain run) and inherited by workers and subprocesses; removed at its exit. The user's own jaxmerge
# cache stays readable as JAXMERGE_USER_CACHE, for the marked tests that use a world already built there.
if "JAXMERGE_TEST_CACHE" not in os.environ:
    os.environ.setdefault("JAXMERGE_USER_CACHE", os.environ.get("JAXMERGE_CACHE")
                          or os.path.join(os.path.expanduser("~"), ".cache", "jaxmerge"))
    os.environ["JAXMERGE_TEST_CACHE"] = tempfile.mkdtemp(prefix="jaxmerge-test-cache-")
    atexit.register(shutil.rmtree, os.environ["JAXMERGE_TEST_CACHE"], True)
    os.environ["HF_HOME"] = os.path.join(os.environ["JAXMERGE_TEST_CACHE"], "hf-home")
os.environ["JAXMERGE_CACHE"] = os.environ["JAXMERGE_TEST_CACHE"]

# Compilation is most of the suite's CPU time (the models are tiny), so, before JAX starts and for
# every subprocess a test spawns (they inherit os.environ): LLVM at -O0 for XLA's generated kernels
# (matmuls still go to XLA:CPU's library GEMM). No persistent compilation cache: the suite ran faster
# without it (827 → 509 s), and both CI worker crashes were inside its writes (an executable's
# serialisation; most likely a worker at the memory-mapping limit that ``_bounded_memory_mappings`` now
# keeps workers under — not proven; BUILD_NOTES, "Session 14").
XLA_FLAGS_FAST_COMPILE = "--xla_backend_optimization_level=0"
if XLA_FLAGS_FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):  # a nested pytest inherits it already set
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_FLAGS_FAST_COMPILE).strip()
for _var in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE"):
    os.environ.pop(_var, None)  # nor a user's own one

# Under pytest-xdist (``-n auto`` in pyproject's addopts) each worker gets its own share of the CPUs, before
# JAX starts: XLA sizes its thread pools from the affinity mask, so two workers never oversubscribe the
# machine with two pools of every core (BUILD_NOTES, "Test suite").
# Once per worker: its subprocesses inherit both the mask and this environment (and some import conftest).
_WORKER, _WORKERS = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if (_WORKER.startswith("gw") and _WORKERS > 1 and hasattr(os, "sched_setaffinity")
        and os.environ.get("JAXMERGE_TEST_PINNED") != _WORKER):
    _cpus, _i = sorted(os.sched_getaffinity(0)), int(_WORKER[2:])
    # more workers than CPUs (-n 4 on 2): workers share a CPU rather than each spreading over all of them
    os.sched_setaffinity(0, _cpus[_i % _WORKERS::_WORKERS] if len(_cpus) >= _WORKERS else [_cpus[_i % len(_cpus)]])
    os.environ["JAXMERGE_TEST_PINNED"] = _WORKER

import pytest  # noqa: E402

from helpers import hf_llama  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` if set, else one worker per CPU
    this process may use, at most 4 (each worker holds its own JAX, torch and compiled programs)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 4))




# A Llama 3.1-style tiny config: GQA, llama3 rope scaling with a short original context so that
# the tests reach positions beyond it, untied embeddings.




@pytest.fixture(autouse=True)
def _bounded_memory_mappings():
    """A worker compiles hundreds of programs; each holds ~200 memory mappings until dropped, and at the
    kernel's limit (vm.max_map_count) LLVM's next allocation fails and the worker dies. After each test,
    drop JAX's compiled programs once the worker holds over half the limit (``jaxmerge.compiles``)."""
    yield
    from jaxmerge.compiles import release_compiled
    release_compiled()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """(path, torch model) of the default tiny Llama 3.1-style checkpoint (float32)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    model = hf_llama(path)
    return str(path), model
