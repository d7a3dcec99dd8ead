"""One path layer for every file a stage reads or writes: local paths, or URLs
(`gs://bucket/key`, `s3://`, any fsspec backend, the test store `fakebucket://`).

Local paths go through `os` exactly as before this layer existed (a temp name, fsync
and rename for atomic writes). A URL goes through fsspec, with object-store rules,
because a bucket has no rename and no append:

- **Whole objects.** `atomic_open` writes to a local spool file and uploads it in one
  call when the block ends; on an exception (or a kill) nothing is uploaded. A GCS or S3
  object becomes visible only when its upload is finalised, so a reader sees the old
  object, the whole new one, or none, never a prefix.
- **Commit markers for directories.** A stage that produces several objects (an
  exported checkpoint, the curated dataset) uploads them all and then the marker
  `COMMIT_MARKER` naming them (`publish_dir`); readers and resume trust a remote
  directory only once its marker exists (`is_committed`). Locally the directory is
  renamed into place whole, as before, and needs no marker.
- **No append.** Append-mode writers (the metrics log) keep their lines and rewrite the
  whole object (`training/metrics.py`).

Backends are fsspec's: `gs://` needs `gcsfs`, `s3://` needs `s3fs`; a scheme without
an installed backend is an error naming the package to install, raised when the path
is first used (config checks call `check_path` before any expensive work). Missing
credentials surface as the backend's own error on the first access, wrapped in a
`StorageError` that names the URL.
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import IO, Any, Iterator

COMMIT_MARKER = "_COMMITTED.json"

# The package that provides each well-known scheme's fsspec backend.
_BACKEND_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs",
                     "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}


def scheme(path: str) -> str:
    """'gs' for 'gs://b/k'; '' for a local path (and for file://, which is local)."""
    path = os.fspath(path)
    if "://" not in path:
        return ""
    s = path.split("://", 1)[0]
    return "" if s == "file" else s


def is_local(path: str) -> bool:
    return scheme(path) == ""


def _local(path: str) -> str:
    path = os.fspath(path)
    return path[len("file://"):] if path.startswith("file://") else path


class StorageError(OSError):
    """A backend's own error (missing credentials, access denied, a network failure),
    with the URL it happened on: gcsfs and s3fs often leave the path out."""


# Errors that already say what is wrong in the caller's terms, passed through as they are.
_OWN_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               NotImplementedError, ValueError, StorageError)


class _NamingErrors:
    """An fsspec filesystem whose calls re-raise a backend's errors as StorageError
    naming `url`."""

    def __init__(self, fs, url: str):
        self._fs, self._url = fs, url

    def __getattr__(self, name):
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except _OWN_ERRORS:
                raise
            except Exception as e:
                raise StorageError(f"{self._url}: {type(e).__name__}: {e}") from e
        return call


def filesystem(path: str):
    """(fsspec filesystem, the path as that filesystem names it) for a URL; the
    backend's errors come back as StorageError naming the URL."""
    s = scheme(path)
    if s == "fakebucket":
        from distill_jax import fake_bucket    # registers the scheme with fsspec
        fake_bucket.register()
    import fsspec
    try:
        fs = fsspec.filesystem(s)
    except (ImportError, ValueError) as e:
        package = _BACKEND_PACKAGES.get(s)
        hint = f"pip install {package}" if package else "install the fsspec backend for it"
        raise ValueError(f"{path}: no filesystem backend for '{s}://' is installed "
                         f"({hint}); or use a local path") from e
    return _NamingErrors(fs, path), fs._strip_protocol(path)


def check_path(path: str, what: str = "path") -> None:
    """Fails now, naming `what` and the package to install, if `path`'s scheme has no
    backend; local paths always pass. Called by config checks before expensive work."""
    if path and not is_local(path):
        try:
            filesystem(path)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


def dirname(path: str) -> str:
    if is_local(path):
        return os.path.dirname(path)
    s, rest = path.split("://", 1)
    return f"{s}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(path: str) -> str:
    return os.path.basename(path) if is_local(path) else posixpath.basename(path.rstrip("/"))


def _url(path: str, fs_path: str) -> str:
    """fsspec names objects without the scheme; callers get URLs back."""
    return f"{scheme(path)}://{fs_path}"


def _ask(path: str, local, method: str):
    """`local(path)` for a local path, else the fsspec filesystem's `method`."""
    if is_local(path):
        return local(_local(path))
    fs, p = filesystem(path)
    return getattr(fs, method)(p)


def exists(path: str) -> bool:
    return _ask(path, os.path.exists, "exists")


def isfile(path: str) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def isdir(path: str) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def getsize(path: str) -> int:
    return int(_ask(path, os.path.getsize, "size"))


# Fields of fsspec's `info` that change when an object is rewritten: GCS's generation,
# S3's ETag, the others' modification times.
_VERSION_FIELDS = ("generation", "etag", "ETag", "md5Hash", "updated", "LastModified", "mtime")


def object_stamp(path: str) -> dict[str, Any]:
    """What says a bucket object is unchanged without reading it: its size and the
    backend's version fields (resume and cache keys use it; reading every byte of
    20 GB of traces to hash them would cost minutes)."""
    fs, p = filesystem(path)
    info = fs.info(p)
    return {"size": int(info["size"]), **{k: str(info[k]) for k in _VERSION_FIELDS if k in info}}


def listdir(path: str) -> list[str]:
    """Names (not paths) under a directory, sorted. A directory of an object store is
    a key prefix: it exists while something is under it."""
    if is_local(path):
        return sorted(os.listdir(_local(path)))
    fs, p = filesystem(path)
    if not fs.isdir(p):
        raise FileNotFoundError(f"{path}: no such directory")
    return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)
                  if e.rstrip("/") != p.rstrip("/"))


def walk_files(path: str) -> list[str]:
    """Every file under `path`, as paths relative to it, sorted."""
    if is_local(path):
        root = _local(path)
        out = []
        for d, _, names in os.walk(root):
            out += [os.path.relpath(os.path.join(d, n), root) for n in names]
        return sorted(out)
    fs, p = filesystem(path)
    return sorted(posixpath.relpath(f, p) for f in fs.find(p))


def glob(pattern: str) -> list[str]:
    if is_local(pattern):
        import glob as glob_module
        return sorted(glob_module.glob(_local(pattern)))
    fs, p = filesystem(pattern)
    return sorted(_url(pattern, m) for m in fs.glob(p))


def makedirs(path: str) -> None:
    """Locally os.makedirs; nothing on an object store (a prefix needs no creating)."""
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
    else:
        fs, p = filesystem(path)
        fs.makedirs(p, exist_ok=True)


def remove(path: str) -> None:
    if is_local(path):
        os.remove(_local(path))
    else:
        fs, p = filesystem(path)
        fs.rm_file(p)


def rmtree(path: str) -> None:
    """Removes a directory and everything under it, if it exists."""
    if is_local(path):
        shutil.rmtree(_local(path), ignore_errors=True)
    else:
        fs, p = filesystem(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)


def open(path: str, mode: str = "r", **kwargs) -> IO:  # noqa: A001 (the layer's open)
    """Opens for reading (any mode) or, on an object store, for a whole-object write
    that is uploaded on close; prefer `atomic_open` for writes, which uploads nothing
    when the block raises."""
    if is_local(path):
        return builtins.open(_local(path), mode, **kwargs)
    if "a" in mode or "+" in mode:
        raise ValueError(f"{path}: an object store cannot append or update in place "
                         f"(mode {mode!r}); write the whole object with atomic_open")
    fs, p = filesystem(path)
    return fs.open(p, mode, **kwargs)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Like open(path, mode) for writing, but the file appears only on success, whole:
    locally a temp name, fsync and rename; on an object store a local spool file
    uploaded in one call after the block (nothing is uploaded if it raises)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes whole files; got mode {mode!r}")
    if is_local(path):
        path = _local(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with builtins.open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, p = filesystem(path)
    fd, spool = tempfile.mkstemp(prefix="distill_jax-upload-")
    os.close(fd)
    try:
        with builtins.open(spool, mode, **kwargs) as f:
            yield f
        fs.put_file(spool, p)
    finally:
        os.remove(spool)


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_range(path: str, start: int, length: int) -> bytes:
    """`length` bytes from `start`: one ranged read on an object store (a tensor of a
    safetensors file), a seek and read locally."""
    if is_local(path):
        with builtins.open(_local(path), "rb") as f:
            f.seek(start)
            return f.read(length)
    fs, p = filesystem(path)
    return fs.cat_file(p, start=start, end=start + length)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --- directories made of several objects --------------------------------------

# On a bucket, while `publish_dir` replaces a directory: readers refuse it (an export
# half old and half new would load without any error, its shapes being the same).
PUBLISHING_MARKER = "_PUBLISHING"


def publish_dir(local_dir: str, dest: str) -> None:
    """Makes the finished directory `local_dir` appear at `dest`, whole.

    Locally: a rename (the directory appears at once; `dest` must not exist). On an
    object store: `PUBLISHING_MARKER`, every file, then the commit marker (the files,
    their sizes and an id of this publication, so a cache of an earlier one is not
    mistaken for it), then the publishing marker removed; `is_committed(dest)` is true
    only after that. An earlier publication at `dest` is withdrawn first. `local_dir`
    is removed either way."""
    if is_local(dest):
        os.replace(local_dir, _local(dest))
        return
    withdraw_dir(dest, keep_objects=True)
    write_text_atomic(join(dest, PUBLISHING_MARKER), "")
    files = upload_tree(local_dir, dest)
    write_json_atomic(join(dest, COMMIT_MARKER), {
        "id": uuid.uuid4().hex,
        "files": {rel: os.path.getsize(os.path.join(local_dir, rel)) for rel in files}})
    remove(join(dest, PUBLISHING_MARKER))
    shutil.rmtree(local_dir)


def withdraw_dir(path: str, keep_objects: bool = False) -> None:
    """Makes a published bucket directory untrusted, its commit marker removed first
    (a kill halfway leaves objects nobody trusts, never a marker over missing files),
    then its objects unless `keep_objects` (they are about to be overwritten)."""
    if is_local(path):
        shutil.rmtree(_local(path), ignore_errors=True)
        return
    marker = join(path, COMMIT_MARKER)
    if exists(marker):
        remove(marker)
    if not keep_objects:
        rmtree(path)


def is_committed(path: str) -> bool:
    """A directory published whole: locally it exists; on an object store its commit
    marker does and no publication is under way (objects uploaded before a kill,
    without the marker, do not count)."""
    if is_local(path):
        return os.path.isdir(_local(path))
    return exists(join(path, COMMIT_MARKER)) and not is_being_published(path)


def is_being_published(path: str) -> bool:
    """Whether `publish_dir` is writing (or was killed writing) the bucket directory."""
    return not is_local(path) and exists(join(path, PUBLISHING_MARKER))


def local_copy(path: str, cache_dir: str) -> str:
    """A local directory holding the committed remote directory `path`, for readers
    that need POSIX files (array_record, sentencepiece): `path` itself when local, else
    a copy under `cache_dir`, one per publication (its marker's id), downloaded once.
    Processes sharing `cache_dir` never remove a copy another one may be reading."""
    if is_local(path):
        return _local(path)
    if not is_committed(path):
        raise FileNotFoundError(f"{path}: not committed (no {COMMIT_MARKER}): it is "
                                "missing or its writer did not finish")
    text = read_text(join(path, COMMIT_MARKER))
    marker = json.loads(text)
    version = marker.get("id") or hashlib.sha256(text.encode()).hexdigest()[:32]
    s, rest = path.split("://", 1)
    target = os.path.join(cache_dir, s, rest.strip("/"), version)
    if os.path.exists(os.path.join(target, COMMIT_MARKER)):
        return target
    fs, p = filesystem(path)
    staging = f"{target}.partial.{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        for rel in marker["files"]:
            os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
            fs.get_file(posixpath.join(p, rel), os.path.join(staging, rel))
        with builtins.open(os.path.join(staging, COMMIT_MARKER), "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.replace(staging, target)
        except OSError:       # another process finished the same copy first: use it
            if not os.path.exists(os.path.join(target, COMMIT_MARKER)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def upload_file(local: str, url: str) -> None:
    """One local file to `url` as one whole object (locally: an atomic copy)."""
    if is_local(url):
        with builtins.open(local, "rb") as src, atomic_open(url, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    fs, p = filesystem(url)
    fs.put_file(local, p)


def upload_tree(local_dir: str, url: str, names: list[str] | None = None) -> list[str]:
    """Every file under `local_dir` (or just `names`, relative to it) to the same
    relative keys under `url`, one whole object each and no commit marker, as
    `gsutil cp -r` would; returns the relative names. `publish_dir` adds the marker."""
    names = walk_files(local_dir) if names is None else list(names)
    for rel in names:
        upload_file(os.path.join(local_dir, rel), join(url, rel))
    return names


def absolute(path: str) -> str:
    """A local path made absolute (reports and manifests have always shown them so);
    a URL as it is, without a trailing slash."""
    if is_local(path):
        return os.path.abspath(_local(path))
    return path.rstrip("/")


def local_file(path: str, cache_dir: str) -> str:
    """A local path with `path`'s bytes, for libraries that take only file names: the
    path itself when local, else a copy under `cache_dir` (the caller keys it by the
    object's version)."""
    if is_local(path):
        return _local(path)
    s, rest = path.split("://", 1)
    target = os.path.join(cache_dir, s, rest.strip("/"))
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs, p = filesystem(path)
        tmp = f"{target}.tmp.{os.getpid()}"
        try:
            fs.get_file(p, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return target
