"""Reading and writing the safetensors format with NumPy memory maps (bf16 via ml_dtypes).

Reading maps the file and slices it, so a sharded load copies only each device's part; a header
that points past the end of the file is reported as a truncated file, naming it. Writing is atomic
(temporary file, then rename). Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from .atomic import atomic_file
from .errors import UserError

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsError(UserError, ValueError):
    """A file that is not valid safetensors (truncated, bad header, unknown dtype)."""


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(tensor entries without ``__metadata__``, byte offset where the data starts)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    start = 8 + n
    for key, e in header.items():
        if e.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {key!r} has unsupported dtype {e.get('dtype')!r}")
        end = e["data_offsets"][1]
        if start + end > size:
            raise SafetensorsError(f"{path}: truncated safetensors file: tensor {key!r} ends at byte "
                                   f"{start + end}, file has {size}")
    return header, start


class SafeFile:
    """Lazy access to the tensors of one file: ``f.keys()``, ``f.shape(k)``, ``f[k]`` (a memmap view)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.header, self._start = read_header(self.path)
        self._mm = None

    def keys(self):
        return self.header.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(DTYPES[self.header[key]["dtype"]])

    def __getitem__(self, key: str) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        e = self.header[key]
        lo, hi = e["data_offsets"]
        buf = self._mm[self._start + lo: self._start + hi]
        return buf.view(DTYPES[e["dtype"]]).reshape(e["shape"])


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a file as in-memory NumPy arrays."""
    f = SafeFile(path)
    return {k: np.array(f[k]) for k in f.keys()}


def encode_header(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                  metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The header bytes (length prefix included) of a file holding ``specs`` ``{key: (dtype, shape)}`` in
    sorted key order, and each tensor's (start, end) byte range after the header — for writers that
    stream the data in after it (``jaxmerge.pool.export``)."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset, ranges = 0, {}
    for key in sorted(specs):
        dtype, shape = np.dtype(specs[key][0]), tuple(specs[key][1])
        if dtype not in NAMES:
            raise SafetensorsError(f"cannot save {key!r} of dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[key] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        ranges[key] = (offset, offset + nbytes)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, ranges


def save(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
    """Write tensors atomically, in the format transformers / peft / vLLM read (``format: pt``)."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(tensors[k]) for k in tensors}
    head, _ = encode_header({k: (a.dtype, a.shape) for k, a in arrays.items()}, metadata)
    with atomic_file(path) as f:
        f.write(head)
        for k in sorted(arrays):
            f.write(arrays[k].reshape(-1).view(np.uint8))  # no bytes copy of the array
