"""`fakebucket://bucket/key`: a local object store with a bucket's semantics, for
tests and offline dry runs of a `gs://` configuration.

Objects live under the directory `$DISTILL_FAKE_BUCKET_ROOT` (shared by every process
that sets it, as a bucket is shared by a pod's hosts). What it keeps from GCS, on
purpose, because our code must cope with it:

- **Whole-object writes.** A file opened for writing goes to a private staging name
  and is published when it is closed (GCS finalises an upload the same way); a writer
  killed before that leaves no object. Closing publishes whatever was written, as
  gcsfs does, so a writer must not close a half-written file (`storage.atomic_open`).
- **No append, no rename.** Append mode raises; `mv` copies then deletes, object by
  object, not atomically (what gcsfs does), and counts itself in `FakeBucket.moves` so
  tests can assert that a stage never relied on it.
- **Directories are key prefixes.** `mkdir` does nothing; a directory exists while an
  object is under it.
"""
from __future__ import annotations

import os
import shutil
import uuid

from fsspec import AbstractFileSystem, register_implementation

ROOT_ENV = "DISTILL_FAKE_BUCKET_ROOT"


def _root() -> str:
    root = os.environ.get(ROOT_ENV)
    if not root:
        raise ValueError(f"fakebucket:// paths need ${ROOT_ENV}: the local directory "
                         "that holds the fake buckets")
    return root


class _StagedWrite:
    """A file being uploaded: bytes go to a staging file, published on close."""

    def __init__(self, fs: "FakeBucket", path: str):
        self._final = fs._os_path(path)
        staging = os.path.join(_root(), ".staging")
        os.makedirs(staging, exist_ok=True)
        self._staged = os.path.join(staging, uuid.uuid4().hex)
        self._f = open(self._staged, "wb")
        self.closed = False

    def write(self, data) -> int:
        return self._f.write(data)

    def flush(self) -> None:           # an upload is not visible before it is finalised
        self._f.flush()

    def close(self) -> None:
        if self.closed:
            return
        self._f.close()
        os.makedirs(os.path.dirname(self._final), exist_ok=True)
        os.replace(self._staged, self._final)
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeBucket(AbstractFileSystem):
    protocol = "fakebucket"
    root_marker = ""
    cachable = False
    moves = 0          # mv calls, in this process (a stage should make none)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("fakebucket://"):
            path = path[len("fakebucket://"):]
        return path.strip("/")

    def _os_path(self, path: str) -> str:
        return os.path.join(_root(), self._strip_protocol(path))

    def _has_objects(self, os_path: str) -> bool:
        for _, _, names in os.walk(os_path):
            if names:
                return True
        return False

    def info(self, path, **kwargs):
        p = self._strip_protocol(path)
        local = self._os_path(p)
        if os.path.isfile(local):
            st = os.stat(local)      # mtime: the version a real store reports
            return {"name": p, "size": st.st_size, "type": "file", "mtime": st.st_mtime_ns}
        if os.path.isdir(local) and self._has_objects(local):
            return {"name": p, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path, detail=True, **kwargs):
        p = self._strip_protocol(path)
        info = self.info(p)
        if info["type"] == "file":
            entries = [info]
        else:
            local = self._os_path(p)
            entries = []
            for name in sorted(os.listdir(local)):
                try:
                    entries.append(self.info(f"{p}/{name}"))
                except FileNotFoundError:      # an empty prefix: not there
                    pass
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode or "+" in mode:
            raise NotImplementedError(f"fakebucket://{path}: objects cannot be appended "
                                      f"to or updated (mode {mode!r})")
        if "w" in mode or "x" in mode:
            return _StagedWrite(self, path)
        local = self._os_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"fakebucket://{self._strip_protocol(path)}")
        return open(local, "rb")

    def mkdir(self, path, create_parents=True, **kwargs):
        pass

    def makedirs(self, path, exist_ok=False):
        pass

    def rm_file(self, path):
        local = self._os_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"fakebucket://{self._strip_protocol(path)}")
        os.remove(local)

    def _rm(self, path):
        if os.path.isfile(self._os_path(path)):
            self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        local = self._os_path(path)
        if os.path.isdir(local):
            if not recursive:
                raise IsADirectoryError(path)
            shutil.rmtree(local)
        else:
            self.rm_file(path)

    def cp_file(self, path1, path2, **kwargs):
        with self._open(path1, "rb") as src, self._open(path2, "wb") as dst:
            shutil.copyfileobj(src, dst)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        type(self).moves += 1
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def created(self, path):
        raise NotImplementedError

    def modified(self, path):
        raise NotImplementedError


def register() -> None:
    register_implementation("fakebucket", FakeBucket, clobber=True)
