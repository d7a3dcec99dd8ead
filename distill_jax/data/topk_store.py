"""The teacher's top-k logprobs in binary sidecar files next to a JSONL shard.

As JSON lists the top-k of a trace is ~3x larger than in binary and slow to
parse (800k R1 traces x 6k tokens x k=20 is ~2 TB of JSON text; see
`benchmarks/topk_storage.py`). So a shard `<dir>/<stem>.jsonl` keeps them in two
.npy files beside it,

    <dir>/<stem>.topk_ids.npy        int32   [total_tokens, K]
    <dir>/<stem>.topk_logprobs.npy   float16 [total_tokens, K] (or float32; bfloat16 as a
                                     uint16 view, since np.save of ml_dtypes' bfloat16 is
                                     not portable)

the rows of one record contiguous, in record order, and each record refers to
its rows instead of carrying the lists:

    "top_k": {"file": "<stem>", "row": start, "rows": n, "k": K, "dtype": "float16"}

`file` is relative to the JSONL's directory. Readers (`topk_arrays`) take a
record of either form, so shards written with the old inline
`top_k_ids`/`top_k_logprobs` lists keep working.

Commit order: a writer commits the sidecar *before* the JSONL that refers to it
(each file atomically: a temp name, then a rename). A kill between the two
leaves a sidecar without its shard, which the stage redoes (a shard is done
when its JSONL exists), never a shard pointing at a missing sidecar.

On a bucket (`storage` URLs) each file is one object uploaded whole, in the same
order. A reader reads a bucket sidecar's rows with one ranged request per record
(after one for its .npy header), never copying the file: the sidecars of an 800k-sample
run would fill a local disk. It treats a sidecar as immutable for its own life:
checking each read against the bucket would cost another request per record.
"""
from __future__ import annotations

import collections
import io
import os
import threading
from typing import Any

import numpy as np

from distill_jax import storage
from distill_jax.fileio import atomic_open

IDS_SUFFIX = ".topk_ids.npy"
LOGPROBS_SUFFIX = ".topk_logprobs.npy"
# Name in the ref -> dtype of the stored .npy (bfloat16 is stored as its uint16 bits).
STORED_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16),
                 "float32": np.dtype(np.float32)}
# numpy parses a .npy header with ast.literal_eval. On CPython 3.11 two threads
# building ASTs at once can corrupt the interpreter-wide AST recursion counter
# ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905),
# and one TopKReader serves grain's pool of map threads. So every header parse here
# holds this lock (a local np.load under it only maps the file; a bucket's ranged read
# happens outside it). Opening a sidecar is rare: once per cache miss.
_NPY_HEADER_LOCK = threading.Lock()


def sidecar_paths(directory: str, stem: str) -> tuple[str, str]:
    """(ids path, logprobs path) of the sidecar `stem` in `directory`."""
    base = storage.join(directory, stem)
    return base + IDS_SUFFIX, base + LOGPROBS_SUFFIX


def _check_dtype(dtype: str) -> str:
    if dtype not in STORED_DTYPES:
        raise ValueError(f"top-k dtype {dtype!r} is not one of {', '.join(STORED_DTYPES)}")
    return dtype


def _encode_logprobs(logprobs: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes
        return np.asarray(logprobs, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.asarray(logprobs, np.float32).astype(STORED_DTYPES[dtype])


def _decode_logprobs(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes
        return np.asarray(stored).view(ml_dtypes.bfloat16).astype(np.float32)
    return np.asarray(stored).astype(np.float32)


class TopKWriter:
    """Collects the top-k rows of one shard's records; `commit()` writes the sidecar.

    Memory: the rows of one shard are buffered until `commit()` (in the storage
    dtype: 6 bytes per token and k with float16), a fraction of what the shard's
    records already hold as Python lists; shards are meant to be small.

    Commit the sidecar before writing the JSONL shard whose records carry the
    refs `add` returns: a committed shard then never points at a missing sidecar.
    """

    def __init__(self, directory: str, stem: str, k: int, dtype: str = "float16"):
        if k < 1:
            raise ValueError(f"top-k width must be >= 1, got {k}")
        self.directory, self.stem, self.k = directory, stem, int(k)
        self.dtype = _check_dtype(dtype)
        self._ids: list[np.ndarray] = []
        self._logprobs: list[np.ndarray] = []
        self.num_rows = 0
        self.committed = False

    def add(self, ids, logprobs) -> dict[str, Any]:
        """Appends one record's rows (ids, logprobs: [n, K]); returns its ref."""
        if self.committed:
            raise RuntimeError(f"top-k sidecar {self.stem} is already committed")
        ids = np.asarray(ids, np.int32)
        logprobs = np.asarray(logprobs, np.float32)
        if ids.size == 0 and logprobs.size == 0:      # a record of no tokens: [] lists
            ids, logprobs = ids.reshape(0, self.k), logprobs.reshape(0, self.k)
        if ids.ndim != 2 or ids.shape[1] != self.k or logprobs.shape != ids.shape:
            raise ValueError(f"top-k sidecar {self.stem}: expected ids and logprobs of shape "
                             f"[n, {self.k}], got {ids.shape} and {logprobs.shape}")
        ref = {"file": self.stem, "row": self.num_rows, "rows": int(ids.shape[0]), "k": self.k,
               "dtype": self.dtype}
        self._ids.append(ids)
        self._logprobs.append(_encode_logprobs(logprobs, self.dtype))
        self.num_rows += ids.shape[0]
        return ref

    def commit(self) -> tuple[str, str]:
        """Writes both .npy files atomically; returns their paths."""
        if self.committed:
            raise RuntimeError(f"top-k sidecar {self.stem} is already committed")
        ids = np.concatenate(self._ids) if self._ids else np.zeros((0, self.k), np.int32)
        logprobs = (np.concatenate(self._logprobs) if self._logprobs
                    else np.zeros((0, self.k), STORED_DTYPES[self.dtype]))
        paths = sidecar_paths(self.directory, self.stem)
        for path, array in zip(paths, (ids, logprobs)):
            with atomic_open(path, "wb") as f:
                np.save(f, array, allow_pickle=False)
        self._ids, self._logprobs, self.committed = [], [], True
        return paths


class _RemoteRows:
    """A row-major 2-D .npy object in a bucket, sliced by rows with ranged reads."""

    HEADER_BYTES = 512          # a 2-D array's .npy header is 128 bytes (64-aligned)

    def __init__(self, path: str):
        self.path = path
        prefix = io.BytesIO(storage.read_range(path, 0, self.HEADER_BYTES))
        try:
            version = np.lib.format.read_magic(prefix)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            with _NPY_HEADER_LOCK:
                self.shape, fortran_order, self.dtype = read_header(prefix)
        except ValueError as e:
            raise ValueError(f"top-k sidecar {path}: not a .npy array ({e})") from e
        if fortran_order:
            raise ValueError(f"top-k sidecar {path}: Fortran-ordered; rows are not contiguous")
        self.ndim = len(self.shape)
        self._data_start = prefix.tell()
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        count = max(stop - start, 0)
        data = storage.read_range(self.path, self._data_start + start * self._row_bytes,
                                  count * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise ValueError(f"top-k sidecar {self.path}: truncated (rows [{start}, {stop}) "
                             f"need {count * self._row_bytes} bytes, got {len(data)})")
        return np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:]))


class TopKReader:
    """Reads the rows a ref names, through a small cache of memory-mapped sidecars.

    A cached local file is reopened if it was replaced on disk (another inode or
    mtime), so a long-lived reader never serves a stale mapping. One reader is shared
    by grain's pool of map threads, so the cache is touched only under a lock (without
    it, concurrent evictions raise KeyError); opening a file happens outside it, with
    only its .npy header parse serialised (`_NPY_HEADER_LOCK`).
    """

    def __init__(self, max_open: int = 32):
        self.max_open = max_open
        self._open: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, ids_path: str, stamp):
        """The cached (ids, logprobs) of `ids_path` if opened with `stamp`, else None."""
        with self._lock:
            cached = self._open.get(ids_path)
            if cached is None or cached[0] != stamp:
                return None
            self._open.move_to_end(ids_path)
            return cached[1], cached[2]

    def _arrays(self, directory: str, stem: str, where: str):
        ids_path, lp_path = sidecar_paths(directory, stem)
        if not storage.is_local(ids_path):
            return self._remote_arrays(ids_path, lp_path, where)
        try:
            stat = os.stat(ids_path)
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            raise FileNotFoundError(f"top-k sidecar {ids_path} of {where} does not exist") \
                from None
        cached = self._cached(ids_path, stamp)
        if cached is not None:
            return (*cached, ids_path)
        if not os.path.exists(lp_path):
            raise FileNotFoundError(f"top-k sidecar {lp_path} of {where} does not exist")
        with _NPY_HEADER_LOCK:
            ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
            logprobs = np.load(lp_path, mmap_mode="r", allow_pickle=False)
        return self._cache(ids_path, ids, logprobs, stamp)

    def _remote_arrays(self, ids_path: str, lp_path: str, where: str):
        cached = self._cached(ids_path, None)
        if cached is not None:
            return (*cached, ids_path)
        for path in (ids_path, lp_path):
            if not storage.exists(path):
                raise FileNotFoundError(f"top-k sidecar {path} of {where} does not exist")
        return self._cache(ids_path, _RemoteRows(ids_path), _RemoteRows(lp_path), None)

    def _cache(self, ids_path: str, ids, logprobs, stamp):
        """Checks a pair of sidecar arrays (memory maps, or bucket row readers) and
        keeps them, the least recently used pair dropped past `max_open`."""
        if ids.ndim != 2 or logprobs.shape != ids.shape or ids.dtype != np.int32:
            raise ValueError(f"top-k sidecar {ids_path}: ids {ids.dtype}{list(ids.shape)} and "
                             f"logprobs {logprobs.dtype}{list(logprobs.shape)} do not form a "
                             "pair of [rows, K] arrays")
        with self._lock:
            self._open[ids_path] = (stamp, ids, logprobs)
            self._open.move_to_end(ids_path)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return ids, logprobs, ids_path

    def read(self, ref: dict[str, Any], base_dir: str, where: str = "a record"
             ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [n, K], logprobs float32 [n, K]) of `ref`, whose file is relative
        to `base_dir` (the JSONL's directory); `where` names the record in errors."""
        try:
            stem, row, rows, k = ref["file"], int(ref["row"]), int(ref["rows"]), int(ref["k"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed top_k ref {ref!r} (needs file, row, rows, k, "
                             "dtype)") from e
        dtype = _check_dtype(ref.get("dtype", "float16"))
        ids, logprobs, path = self._arrays(base_dir, stem, where)
        if logprobs.dtype != STORED_DTYPES[dtype]:
            raise ValueError(f"{where}: top_k ref says dtype {dtype}, but {path} holds "
                             f"{logprobs.dtype} logprobs")
        if ids.shape[1] != k:
            raise ValueError(f"{where}: top_k ref says k={k}, but {path} has k={ids.shape[1]}")
        if row < 0 or rows < 0 or row + rows > ids.shape[0]:
            raise ValueError(f"{where}: top_k rows [{row}, {row + rows}) are out of range of "
                             f"{path} ({ids.shape[0]} rows)")
        return (np.array(ids[row:row + rows], np.int32),
                _decode_logprobs(logprobs[row:row + rows], dtype))


def topk_arrays(record: dict[str, Any], base_dir: str, reader: TopKReader | None = None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """A record's teacher top-k as (ids int32 [n, K], logprobs float32 [n, K]).

    From its sidecar ref (`record["top_k"]`, relative to `base_dir`, the directory
    of the JSONL it came from) or the legacy inline `top_k_ids`/`top_k_logprobs`
    lists; None when it has neither (or empty inline lists, whose K is unknown). Pass
    one `reader` for many records, so the sidecars are opened once.
    """
    where = f"record {_text(record.get('prompt_id', '?'))!r}"
    if "sample_index" in record:
        where += f" sample {int(record['sample_index'])}"
    ref = record.get("top_k")
    if ref:
        return (reader or TopKReader(max_open=1)).read(ref, base_dir, where)
    ids, logprobs = record.get("top_k_ids"), record.get("top_k_logprobs")
    if ids is None and logprobs is None:
        return None
    ids = np.asarray(ids if ids is not None else [], np.int32)
    logprobs = np.asarray(logprobs if logprobs is not None else [], np.float32)
    if ids.size == 0 and logprobs.size == 0:
        return None
    if ids.ndim != 2 or logprobs.shape != ids.shape:
        raise ValueError(f"{where}: inline top_k_ids {list(ids.shape)} and top_k_logprobs "
                         f"{list(logprobs.shape)} are not a pair of [num_tokens, K] arrays")
    return ids, logprobs


def copy_topk(record: dict[str, Any], base_dir: str, writer: TopKWriter,
              reader: TopKReader | None = None) -> dict[str, Any] | None:
    """Moves a record's top-k (ref or inline) into `writer` (e.g. the sidecar of a
    stage's own output shard); returns the new ref, or None when it has none.

    Lossless between the same storage dtypes (float16 -> float32 -> float16)."""
    arrays = topk_arrays(record, base_dir, reader)
    if arrays is None:
        return None
    ids, logprobs = arrays
    if ids.size == 0:
        ids, logprobs = ids.reshape(0, writer.k), logprobs.reshape(0, writer.k)
    return writer.add(ids, logprobs)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
