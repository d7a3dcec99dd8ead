"""A small reader/writer for the safetensors format, built on numpy memmaps.

Why not the `safetensors` package: its numpy backend cannot return bfloat16
(nor FP8: F8_E4M3, F8_E5M2 and the F8_E8M0 scale format are read here as their
`ml_dtypes` types), and going through torch would materialize a full copy.
Here each tensor of a local file is a read-only memmap view, so a loader can
read just the slice a device needs. A file on a bucket (`gs://...`, any URL
`storage` takes) is never downloaded whole: its header is read with two small
ranged reads, and each tensor, or a run of its rows, with one more
(`SafetensorsFile.rows`), since rows of a row-major tensor are contiguous bytes.
Every structural problem (short file, bad header, offsets past the end) raises
a `CheckpointError` naming the file and tensor.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from distill_jax import storage
from distill_jax.fileio import atomic_open

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    # FP8 (DeepSeek-V3/R1 ship their Linear weights as F8_E4M3 plus block scales).
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
FP8_DTYPES = frozenset({np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)})
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be read as asked."""


class SafetensorsFile:
    """Lazily readable safetensors file: `names()`, `shape(name)`, `get(name)` (a memmap
    view locally, the tensor's bytes read by range on a bucket), `rows(name, start, stop)`."""

    def __init__(self, path: str):
        self.path = str(path)
        self.is_local = storage.is_local(self.path)
        try:
            size = os.path.getsize(self.path) if self.is_local else storage.getsize(self.path)
        except OSError as e:
            raise CheckpointError(f"cannot read safetensors file {self.path}: {e}") from e
        if size < 8:
            raise CheckpointError(f"{self.path}: {size} bytes is too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", self._read(0, 8))
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{self.path}: header length {header_len} does not fit in a {size}-byte file "
                "(corrupt or truncated safetensors)")
        raw = self._read(8, header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: unreadable safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self.path}: malformed header entry for tensor {name!r}: "
                                      f"{info!r}") from e
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} {info['dtype']}{list(shape)} needs {nbytes} "
                    f"bytes but its offsets span {end - begin}")
            if end > data_len:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ends at byte {end} of the data section but the "
                    f"file holds only {data_len} (truncated file?)")
            self._entries[name] = (dtype, shape, begin)

    def _read(self, start: int, length: int) -> bytes:
        """Exactly `length` bytes at `start`; a short read (an object replaced or cut
        since its size was taken) is an error, not a silently short tensor."""
        try:
            data = storage.read_range(self.path, start, length)
        except OSError as e:
            raise CheckpointError(f"cannot read safetensors file {self.path}: {e}") from e
        if len(data) != length:
            raise CheckpointError(f"{self.path}: read {len(data)} of {length} bytes at offset "
                                  f"{start} (file truncated or replaced while reading?)")
        return data

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        dtype, shape, begin = self._entries[name]
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        if self.is_local:
            return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin,
                             shape=shape)
        if not shape:
            data = self._read(self._data_start + begin, dtype.itemsize)
            return np.frombuffer(data, dtype).reshape(())
        return self.rows(name, 0, shape[0])

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the tensor's first axis (read-only). On a bucket this is
        one ranged read of just those rows: what a host needs of a row-sharded array."""
        dtype, shape, begin = self._entries[name]
        if self.is_local or not shape:
            return self.get(name)[start:stop] if shape else self.get(name)
        start, stop, _ = slice(start, stop).indices(shape[0])
        out_shape = (max(stop - start, 0),) + shape[1:]
        if math.prod(out_shape) == 0:
            return np.zeros(out_shape, dtype)
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        data = self._read(self._data_start + begin + start * row_bytes, out_shape[0] * row_bytes)
        return np.frombuffer(data, dtype).reshape(out_shape)


def write_safetensors(path: str, tensors: Iterable[tuple[str, np.ndarray]] | None = None, *,
                      specs: list[tuple[str, np.dtype, tuple[int, ...]]] | None = None,
                      arrays: Iterator[np.ndarray] | None = None,
                      metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file atomically (temp file, then rename).

    Either `tensors` (name, array) pairs, or `specs` (name, dtype, shape) plus an
    iterator `arrays` yielding them in order: the second form streams, so only
    one tensor need be in memory at a time.
    """
    if tensors is not None:
        tensors = list(tensors)
        specs = [(n, np.asarray(a).dtype, tuple(np.shape(a))) for n, a in tensors]
        arrays = iter(np.asarray(a) for _, a in tensors)
    assert specs is not None and arrays is not None
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in specs:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise CheckpointError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape in specs:
            arr = np.ascontiguousarray(next(arrays), dtype=dtype)
            if arr.shape != tuple(shape):
                raise CheckpointError(f"tensor {name!r}: got shape {arr.shape}, declared {shape}")
            f.write(arr.tobytes())
