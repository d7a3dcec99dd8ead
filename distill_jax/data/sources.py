"""Where training examples come from: random-access sources (a JSONL file read
through a byte-offset index of its lines, or the curated tfds dataset) and the
validated `data.sources` entries of a mixture.

A JSONL record that keeps its teacher top-k in a binary sidecar (data/topk_store.py)
has the ref's file made absolute here, since only the source knows which directory
the ref is relative to; the pipeline reads the arrays from it.

Bucket paths (`gs://...`, any `storage` URL). Training reads its records at random,
many times over, so a JSONL on a bucket is copied once to a local file (under
`download_dir`, keyed by the object's identity: a changed object is copied again) and
read from there; a tfds directory must be committed (`storage.publish_dir`) and is
copied the same way (`storage.local_copy`), since array_record reads local files only.
The caches under `cache_dir` (line index, lengths, batch count) are small whole objects
wherever `cache_dir` is, so a resume on a fresh machine finds them on the bucket;
locally each host writes its own temp name and renames, on a bucket host 0 alone
writes a shared one (the others computed the same bytes, and GCS limits how often
one object may be rewritten).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import mmap
import os
import re
import tempfile
import threading
from typing import IO, Any, Callable, Mapping, Sequence

import numpy as np

from distill_jax import storage
from distill_jax.fileio import atomic_open


_BLANK = np.frombuffer(b" \t\r\n\x0b\x0c", np.uint8)
_INDEX_CHUNK = 1 << 26


def _line_index(path: str, chunk: int = _INDEX_CHUNK) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray | None]:
    """(byte offset, byte length, line number) of every non-blank line: the file is
    memory-mapped and scanned for newlines in chunks (numpy, disk speed); only lines
    that are empty or start with whitespace are looked at one by one. Line numbers
    are None when no line is blank (then record k is line k + 1)."""
    size = os.path.getsize(path)
    if size == 0:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64), None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        data = np.frombuffer(mm, np.uint8)
        newlines = np.concatenate([np.flatnonzero(data[o:o + chunk] == 10) + o
                                   for o in range(0, size, chunk)]).astype(np.int64)
        starts = np.concatenate([np.zeros((1,), np.int64), newlines + 1])
        ends = np.concatenate([newlines, np.asarray([size], np.int64)])
        if starts[-1] == size:            # the file ends with a newline
            starts, ends = starts[:-1], ends[:-1]
        lengths = ends - starts
        suspect = lengths == 0
        filled = np.flatnonzero(~suspect)
        suspect[filled] = np.isin(data[starts[filled]], _BLANK)
        del data                          # (the map closes only without live views)
        blank = [int(i) for i in np.flatnonzero(suspect)
                 if not mm[int(starts[i]):int(ends[i])].strip()]
    if not blank:
        return starts, lengths, None
    keep = np.ones((len(starts),), bool)
    keep[blank] = False
    return starts[keep], lengths[keep], np.flatnonzero(keep).astype(np.int64) + 1


def file_identity(path: str) -> dict[str, Any]:
    """What says a file (or a directory of files) is unchanged: path, sizes, mtimes
    (on a bucket: size and the backend's version fields; a committed directory, its
    commit marker)."""
    if not storage.is_local(path):
        return _remote_identity(path)
    path = os.path.abspath(path)
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                files.append([os.path.relpath(os.path.join(root, name), path), st.st_size,
                              st.st_mtime_ns])
        return {"path": path, "files": hashlib.sha256(json.dumps(files).encode()).hexdigest()}
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remote_identity(path: str) -> dict[str, Any]:
    if storage.isdir(path):
        listing = storage.read_text(storage.join(path, storage.COMMIT_MARKER)) \
            if storage.is_committed(path) else json.dumps(storage.walk_files(path))
        return {"path": path, "files": hashlib.sha256(listing.encode()).hexdigest()}
    return {"path": path, **storage.object_stamp(path)}


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def download_dir(cache_dir: str | None) -> str:
    """Where bucket files are copied for readers that need local ones: `cache_dir`
    when it is local, else a directory under the system's temp directory."""
    if cache_dir and storage.is_local(cache_dir):
        return os.path.join(cache_dir, "downloads")
    return os.path.join(tempfile.gettempdir(), "distill_jax-downloads")


def local_data_file(path: str, downloads: str) -> str:
    """`path` itself when local, else its local copy (a new one when it changed)."""
    if storage.is_local(path):
        return path
    return storage.local_file(path, os.path.join(downloads, fingerprint(file_identity(path))))


def write_cache(path: str, host: int, write: Callable[[IO], None], shared: bool = True) -> None:
    """Writes a cache file whole with `write(binary file)`. Locally through a per-host
    name (hosts may share the directory), renamed into place; on a bucket straight to
    its key, by host 0 alone when the object is `shared` by every host."""
    if storage.is_local(path):
        staged = f"{path}.host{host}"
        with atomic_open(staged, "wb") as f:
            write(f)
        os.replace(staged, path)
    elif host == 0 or not shared:
        with atomic_open(path, "wb") as f:
            write(f)


def save_npz_atomic(path: str, host: int = 0, **arrays) -> None:
    """np.savez to `path`, whole (see `write_cache`)."""
    write_cache(path, host, lambda f: np.savez(f, **arrays))


def load_npz(path: str):
    """np.load of a cache file, local or on a bucket (read in one request)."""
    if storage.is_local(path):
        return np.load(path)
    return np.load(io.BytesIO(storage.read_bytes(path)))


class JsonlSource:
    """Random access over a JSONL file (the curated export) through a byte-offset
    index of its non-blank lines (numpy int64; one vectorised pass over the bytes,
    cached under `cache_dir` when given). Records are never held: each read parses
    its line, and a line that is not a JSON object with `prompt` and `response` is
    an error naming `path:line` — found by the first run's length pass before
    training starts (see SFTPipeline), or when the line is read."""

    REQUIRED = ("prompt", "response")

    def __init__(self, path: str, cache_dir: str | None = None, host: int = 0,
                 downloads: str | None = None):
        if not storage.exists(path):
            raise FileNotFoundError(f"training data {path} does not exist")
        self.path = path
        # Sidecar refs' base: the JSONL's own directory, on the bucket when it is there.
        self.directory = os.path.dirname(os.path.abspath(path)) if storage.is_local(path) \
            else storage.dirname(path)
        self.identity = file_identity(path)
        self._read_path = local_data_file(path, downloads or download_dir(cache_dir))
        index = None
        cached = storage.join(cache_dir, f"index-{slug(path)}-{fingerprint(self.identity)}.npz") \
            if cache_dir else None
        if cached and storage.exists(cached):
            with load_npz(cached) as z:
                index = (z["starts"], z["lengths"], z["lines"] if "lines" in z else None)
        if index is None:
            index = _line_index(self._read_path)
            if cached:
                storage.makedirs(cache_dir)
                extra = {} if index[2] is None else {"lines": index[2]}
                save_npz_atomic(cached, host, starts=index[0], lengths=index[1], **extra)
        self._starts, self._lengths, self._lines = index
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._starts)

    def line_number(self, index: int) -> int:
        return int(self._lines[index]) if self._lines is not None else index + 1

    def _file(self):
        f = getattr(self._local, "file", None)
        if f is None or getattr(self._local, "pid", None) != os.getpid():
            f = self._local.file = open(self._read_path, "rb")
            self._local.pid = os.getpid()
        return f

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: record {index} of {len(self)}")
        index %= len(self)
        f = self._file()
        f.seek(int(self._starts[index]))
        line = f.read(int(self._lengths[index]))
        where = f"{self.path}:{self.line_number(index)}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{where}: malformed JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object")
        for field in self.REQUIRED:
            if field not in record:
                raise ValueError(f"{where}: missing field {field!r}")
        ref = record.get("top_k")
        if isinstance(ref, dict) and "file" in ref:
            record["top_k"] = dict(ref, file=storage.join(self.directory, str(ref["file"])))
        return record

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def open_source(spec: str, cache_dir: str | None = None, host: int = 0):
    """`path.jsonl`, or a tfds data dir of the curated dataset (`.../tfds`); on a
    bucket, read through a local copy (see the module docstring)."""
    downloads = download_dir(cache_dir)
    if spec.endswith(".jsonl"):
        return JsonlSource(spec, cache_dir, host, downloads)
    import tensorflow_datasets as tfds
    if not storage.isdir(spec):
        raise FileNotFoundError(f"training data {spec} is neither a .jsonl file nor a directory")
    if not storage.is_local(spec):
        spec = storage.local_copy(spec, os.path.join(downloads, fingerprint(file_identity(spec))))
    return tfds.data_source("curated_traces", data_dir=spec, split="train")


SOURCE_KEYS = ("path", "weight", "name", "chat_template", "system_prompt", "seq_len")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One validated entry of `data.sources`."""
    path: str
    weight: float = 1.0
    name: str = ""
    chat_template: str = ""          # "" = data.chat_template
    system_prompt: str = ""          # "" = data.system_prompt
    seq_len: int = 0                 # 0 = data.seq_len


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "data"


def source_name(path: str) -> str:
    """A source's default name: its file name without .jsonl, or for a tfds data dir
    (`.../math/tfds`) the directory above it."""
    parts = [p for p in os.path.normpath(path).split(os.sep) if p]
    name = parts[-1] if parts else "data"
    if name == "tfds" and len(parts) > 1:
        name = parts[-2]
    if name.endswith(".jsonl"):
        name = name[:-len(".jsonl")]
    return slug(name)


def parse_sources(entries: Sequence[Any], seq_len: int,
                  check_paths: bool = True) -> list[SourceConfig]:
    """`data.sources` entries -> SourceConfigs; every problem is a ValueError naming the
    entry, before any data is read."""
    out = []
    for k, entry in enumerate(entries):
        label = f"data.sources[{k}]"
        if hasattr(entry, "to_dict"):
            entry = entry.to_dict()
        if not isinstance(entry, Mapping):
            raise ValueError(f"{label}: expected a dict with 'path' and 'weight', got {entry!r}")
        if not entry:
            raise ValueError(f"{label} is empty: give at least its 'path'")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{label}: 'path' must be a non-empty string, got {path!r}")
        label = f"{label} ({path})"
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"{label}: unknown keys {unknown} (known: {list(SOURCE_KEYS)})")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{label}: weight must be a finite number > 0, got {weight!r}")
        name = entry.get("name") or source_name(path)
        if not isinstance(name, str) or slug(name) != name:
            raise ValueError(f"{label}: name {name!r} must be letters, digits, '_', '.', '-'")
        max_len = entry.get("seq_len", 0) or 0
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
            raise ValueError(f"{label}: seq_len must be a positive integer, got {max_len!r}")
        if max_len > seq_len:
            raise ValueError(f"{label}: seq_len={max_len} exceeds data.seq_len={seq_len} (a "
                             "source may only cut its examples shorter than the rows)")
        for key in ("chat_template", "system_prompt"):
            if not isinstance(entry.get(key, ""), str):
                raise ValueError(f"{label}: {key} must be a string")
        if check_paths:
            storage.check_path(path, label)
            if not storage.exists(path):
                raise ValueError(f"{label}: {path} does not exist")
            if not path.endswith(".jsonl") and not storage.isdir(path):
                raise ValueError(f"{label}: {path} is neither a .jsonl file nor a tfds data "
                                 "directory")
        out.append(SourceConfig(path, float(weight), name, entry.get("chat_template", ""),
                                entry.get("system_prompt", ""), max_len))
    names = [s.name for s in out]
    for k, s in enumerate(out):
        if names.index(s.name) != k:
            raise ValueError(f"data.sources[{k}] ({s.path}): name {s.name!r} is already "
                             f"data.sources[{names.index(s.name)}]'s; give each source a "
                             "distinct 'name'")
    return out
