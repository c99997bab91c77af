"""Checkpoints as safetensors shards, read and written tensor by tensor, so that nothing holds a whole model.

A ``Plan`` lists every output tensor (key, dtype, shape) in the order it is produced and cuts it into
shards of at most ``shard_bytes`` (transformers' ``model-0000i-of-0000n.safetensors`` names, or one
``model.safetensors``). Each shard's header is known up front, so ``StreamWriter`` writes every tensor
straight to its offset; ``checkpoint()`` fsyncs and records the keys done in ``progress.json``; a shard
is renamed to its final name when complete. Reopened on the same plan and fingerprint (``job.json``)
after a kill, the writer keeps what was recorded and the rest is written again — so the streaming merge
(``jaxmerge.merge.stream``) resumes at layer granularity; with another fingerprint it starts over.
``Checkpoint`` reads a folder's tensors by key, one mapped tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import numpy as np

from ..atomic import read_json, write_json
from ..errors import UserError
from ..hf_write import SHARD_BYTES
from ..models.schema import module_path
from ..params import hf_key
from ..safetensors_io import SafeFile, encode_header

COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
INDEX = "model.safetensors.index.json"


def weight_key(module: str, layer: int) -> str:
    """transformers' key of a projection's weight in one layer."""
    return hf_key(module_path(module), layer)


class Checkpoint:
    """The safetensors tensors of a checkpoint folder by key (index or single file). ``ckpt[key]`` maps
    the tensor from a file opened for that call alone, so its pages are unmapped once the array is
    dropped: reading a whole checkpoint tensor by tensor keeps one tensor resident, not the files."""

    def __init__(self, folder: str):
        index = os.path.join(folder, INDEX)
        if os.path.exists(index):
            files = dict.fromkeys(read_json(index)["weight_map"].values())
        elif os.path.exists(os.path.join(folder, "model.safetensors")):
            files = {"model.safetensors": None}
        else:
            raise UserError(f"{folder}: no model.safetensors or {INDEX} (safetensors checkpoints only)")
        self.files = {}
        for name in files:
            f = SafeFile(os.path.join(folder, name))
            self.files.update({k: f for k in f.keys()})

    def keys(self) -> list[str]:
        return list(self.files)

    def spec(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        return self.files[key].dtype(key), self.files[key].shape(key)

    def __getitem__(self, key: str) -> np.ndarray:
        return SafeFile(self.files[key].path)[key]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Output tensors ``entries [(key, dtype, shape)]`` in production order, cut into ``shards``
    ``[(file name, keys)]``."""
    entries: tuple
    shards: tuple

    @staticmethod
    def make(entries: Iterable[tuple[str, np.dtype, tuple]], shard_bytes: int = SHARD_BYTES,
             single: str | None = None) -> "Plan":
        """Shards filled in order up to ``shard_bytes``; ``single``: one file of that name, never sharded."""
        entries = tuple((k, np.dtype(d), tuple(int(x) for x in s)) for k, d, s in entries)
        groups, size = [[]], 0
        for k, d, s in entries:
            nbytes = int(np.prod(s, dtype=np.int64)) * d.itemsize
            if single is None and groups[-1] and size + nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += nbytes
        n = len(groups)
        names = [single or "model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                                  for i in range(n)]
        return Plan(entries, tuple(zip(names, map(tuple, groups))))


class StreamWriter:
    """Writes a ``Plan`` into ``folder``, any tensor at any time, resumable (see the module docstring)."""

    def __init__(self, folder: str, plan: Plan, fingerprint: Mapping | None):
        """``fingerprint``: what determines the output (JSON); None never resumes (in-memory exports)."""
        self.folder, self.plan = folder, plan
        self._specs = specs = {k: (d, s) for k, d, s in plan.entries}
        self._shard = {}
        self._heads = {}
        for name, keys in plan.shards:
            head, ranges = encode_header({k: specs[k] for k in keys})
            self._heads[name] = (head, len(head) + (max(e for _, e in ranges.values()) if ranges else 0))
            self._shard.update({k: (name, len(head) + lo, hi - lo) for k, (lo, hi) in ranges.items()})
        job = {"fingerprint": fingerprint, "plan": [list(s) for s in plan.shards]}
        jpath, ppath = os.path.join(folder, "job.json"), os.path.join(folder, "progress.json")
        same = fingerprint is not None and read_json(jpath) == json.loads(json.dumps(job))
        self.done = set(read_json(ppath, {}).get("done", [])) if same else set()
        self.resumed = bool(self.done)
        if not same:
            for entry in os.listdir(folder):
                p = os.path.join(folder, entry)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            write_json(jpath, job)
        self._open = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stream-writer")
        self._pending: list = []
        self._pending_ckpt: list = []  # checkpoints queued on the writer thread
        self._closed = {name for name, _ in plan.shards if os.path.exists(self._path(name, True))}
        self._slots = threading.BoundedSemaphore(2)  # at most two tensors waiting to be written

    def _path(self, name: str, final: bool) -> str:
        return os.path.join(self.folder, name if final else f".{name}.partial")

    def _fd(self, name: str) -> int:
        if name not in self._open:
            path = self._path(name, False)
            head, size = self._heads[name]
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(head)
                    f.truncate(size)
            fd = os.open(path, os.O_RDWR)
            if os.pread(fd, len(head), 0) != head:
                os.close(fd)
                raise UserError(f"{path}: its header does not match the plan; delete {self.folder} and rerun")
            self._open[name] = fd
        return self._open[name]

    def is_done(self, key: str) -> bool:
        return key in self.done

    def write(self, key: str, array: np.ndarray) -> None:
        """Write one tensor (any float dtype, a memory map included), cast to the plan's dtype in row blocks
        of ≤ 64 MiB (so a pass-through copy never holds the whole tensor). The write runs on a background
        thread while the caller computes the next tensor (at most two wait); ``checkpoint`` waits for it."""
        name, offset, _ = self._shard[key]
        if os.path.exists(self._path(name, True)):
            self.done.add(key)
            return  # its shard is complete already
        dtype, shape = self._specs[key]
        a = np.asarray(array)
        if a.shape != shape:
            raise ValueError(f"{key}: got shape {list(a.shape)}, the plan says {list(shape)}")
        fd = self._fd(name)
        self._slots.acquire()
        self._pending.append((key, self._pool.submit(self._write_now, fd, offset, a, dtype)))

    def _write_now(self, fd: int, offset: int, a: np.ndarray, dtype: np.dtype) -> None:
        try:
            rows = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
            step = max(1, (64 << 20) // max(1, rows.shape[1] * max(a.dtype.itemsize, dtype.itemsize)))
            for i in range(0, rows.shape[0], step):
                block = np.ascontiguousarray(rows[i:i + step]).astype(dtype, copy=False).reshape(-1).view(np.uint8)
                view = memoryview(block)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
        finally:
            self._slots.release()

    def checkpoint(self, on_durable=None) -> None:
        """Make what was written durable, record it, and close (rename) every completed shard — on the
        writer thread, after the writes queued so far, so that the disk flush of one window overlaps the
        computation of the next. ``on_durable()`` runs there once the window is recorded (tests kill
        the process from it); a failed write or flush raises at the next ``checkpoint`` or ``finish``."""
        pending, self._pending = self._pending, []
        done = self.done | {k for k, _ in pending}
        complete = [name for name, keys in self.plan.shards
                    if name not in self._closed and all(k in done for k in keys)]
        for name in complete:  # (a shard recorded complete by a killed run may still be unrenamed and unopened)
            self._fd(name)
        flush = dict(self._open)
        for name in complete:
            del self._open[name]  # the caller never writes a complete shard again
            self._closed.add(name)
        self._pending_ckpt.append(self._pool.submit(self._record, pending, done, flush, complete, on_durable))
        ready, self._pending_ckpt = [f for f in self._pending_ckpt if f.done()], [f for f in self._pending_ckpt if not f.done()]
        for f in ready:
            f.result()
        self.done = done

    def _record(self, pending, done, flush, complete, on_durable) -> None:
        for _, fut in pending:
            fut.result()  # FIFO on one thread: every queued write has finished; a failed one raises here
        for fd in flush.values():
            os.fsync(fd)
        write_json(os.path.join(self.folder, "progress.json"), {"done": sorted(done)})
        for name in complete:
            os.close(flush[name])
            os.replace(self._path(name, False), self._path(name, True))
        if on_durable is not None:
            on_durable()

    def _wait(self) -> None:
        pending, self._pending_ckpt = self._pending_ckpt, []
        for f in pending:
            f.result()

    def finish(self) -> None:
        """Every tensor written: close the last shards and write the index (when sharded)."""
        self.checkpoint()
        self._wait()
        missing = [k for k, _, _ in self.plan.entries if k not in self.done]
        if missing:
            raise RuntimeError(f"StreamWriter.finish: {len(missing)} tensors never written, e.g. {missing[0]}")
        if len(self.plan.shards) > 1:
            total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, d, s in self.plan.entries)
            write_json(os.path.join(self.folder, INDEX), {"metadata": {"total_size": total},
                       "weight_map": {k: name for name, keys in self.plan.shards for k in keys}}, indent=2)
        for extra in ("progress.json", "job.json"):
            os.remove(os.path.join(self.folder, extra))
        self._pool.shutdown()


def copy_side_files(base_folder: str, out_dir: str, dtype=None) -> None:
    """config.json, generation config and tokenizer files of the base, as they are — except that with
    ``dtype`` (the written tensors' dtype, when not the base's) config.json says so."""
    for fname in COPY_FILES:
        src = os.path.join(base_folder, fname)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, fname))
    cfg_path = os.path.join(out_dir, "config.json")
    if dtype is not None and os.path.exists(cfg_path):
        cfg = read_json(cfg_path)
        for k in [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]:
            cfg[k] = np.dtype(dtype).name
        write_json(cfg_path, cfg, indent=2)
