"""The path layer (distill_jax/storage.py) on local paths and on the fake object
store, and the fake store's own bucket semantics."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from distill_jax import fileio, storage
from distill_jax.fake_bucket import FakeBucket


@pytest.fixture(params=["local", "bucket"])
def base(request, tmp_path, bucket):
    return str(tmp_path / "local") if request.param == "local" else f"{bucket}/run"


def test_the_same_operations_behave_alike_on_a_local_dir_and_a_bucket(base):
    storage.makedirs(base)
    p = storage.join(base, "sub", "x.json")
    storage.makedirs(storage.dirname(p))
    storage.write_json_atomic(p, {"a": 1})
    storage.write_text_atomic(storage.join(base, "t.txt"), "héllo\n")
    storage.write_bytes_atomic(storage.join(base, "b.bin"), bytes(range(10)))
    assert json.loads(storage.read_text(p)) == {"a": 1}
    assert storage.exists(p) and storage.isfile(p) and not storage.isdir(p)
    assert storage.isdir(storage.join(base, "sub"))
    assert storage.listdir(base) == ["b.bin", "sub", "t.txt"]
    assert storage.walk_files(base) == ["b.bin", "sub/x.json", "t.txt"]
    assert storage.getsize(storage.join(base, "t.txt")) == len("héllo\n".encode())
    assert storage.read_range(storage.join(base, "b.bin"), 3, 4) == bytes([3, 4, 5, 6])
    assert [storage.basename(g) for g in storage.glob(storage.join(base, "*", "*.json"))] == \
        ["x.json"]
    storage.remove(p)
    assert not storage.exists(p)
    storage.rmtree(base)
    assert not storage.exists(base)


def test_a_block_that_raises_writes_nothing(base):
    target = storage.join(base, "out.txt")
    storage.makedirs(base)
    with pytest.raises(RuntimeError):
        with storage.atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert not storage.exists(target)
    storage.write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_open(target) as f:
            f.write("new, half")
            raise RuntimeError("killed")
    assert storage.read_text(target) == "old"


def test_jsonl_errors_name_the_bucket_path_and_line(bucket):
    path = f"{bucket}/rows.jsonl"
    storage.write_text_atomic(path, '{"a": 1}\n\n{"a": \n')
    rows = fileio.iter_jsonl(path)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(ValueError, match=r"fakebucket://test-bucket/rows.jsonl:3: malformed"):
        next(rows)
    with pytest.raises(FileNotFoundError, match="fakebucket://test-bucket/nope.jsonl"):
        list(fileio.iter_jsonl(f"{bucket}/nope.jsonl"))


def test_the_bucket_refuses_append_and_stages_are_told_how_to_write(bucket):
    storage.write_text_atomic(f"{bucket}/m.jsonl", "1\n")
    with pytest.raises(ValueError, match="cannot append.*atomic_open"):
        storage.open(f"{bucket}/m.jsonl", "a")


def test_an_object_is_invisible_until_its_writer_closes_it(bucket):
    fs, p = storage.filesystem(f"{bucket}/obj")
    f = fs.open(p, "wb")
    f.write(b"x" * 100)
    f.flush()
    assert not storage.exists(f"{bucket}/obj")
    f.close()
    assert storage.read_bytes(f"{bucket}/obj") == b"x" * 100


def test_a_scheme_without_a_backend_names_the_package_to_install():
    with pytest.raises(ValueError, match=r"gs://b/x: no filesystem backend for 'gs://'.*"
                                         r"pip install gcsfs"):
        storage.exists("gs://b/x")
    with pytest.raises(ValueError, match=r"config.workdir: s3://b/x: .*pip install s3fs"):
        storage.check_path("s3://b/x", "config.workdir")
    storage.check_path("/local/path", "config.workdir")      # local paths always pass
    storage.check_path("", "config.workdir")


def test_a_backend_error_such_as_missing_credentials_names_the_path(bucket, monkeypatch):
    def denied(self, path, *args, **kwargs):
        raise RuntimeError("Anonymous caller does not have storage.objects.get access")
    monkeypatch.setattr(FakeBucket, "_open", denied)
    with pytest.raises(storage.StorageError,
                       match=r"fakebucket://test-bucket/run/x.json: RuntimeError: Anonymous "
                             r"caller does not have storage.objects.get access"):
        storage.read_text(f"{bucket}/run/x.json")


def test_file_urls_are_local_paths(tmp_path):
    storage.write_text_atomic(f"file://{tmp_path}/a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert storage.is_local(f"file://{tmp_path}") and not storage.is_local("gs://b")


def test_a_published_directory_is_committed_whole_and_copied_back_once(bucket, tmp_path):
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "a.bin").write_bytes(b"A" * 10)
    (staging / "b.txt").write_text("B")
    dest = f"{bucket}/dataset"
    assert not storage.is_committed(dest)
    storage.publish_dir(str(staging), dest)
    assert not staging.exists()
    assert storage.is_committed(dest)
    marker = json.loads(storage.read_text(f"{dest}/{storage.COMMIT_MARKER}"))
    assert marker["files"] == {"b.txt": 1, "sub/a.bin": 10} and len(marker["id"]) == 32
    assert not storage.is_being_published(dest)
    assert FakeBucket.moves == 0
    cache = str(tmp_path / "cache")
    local = storage.local_copy(dest, cache)
    assert open(os.path.join(local, "sub", "a.bin"), "rb").read() == b"A" * 10
    # A second call trusts the finished copy and downloads nothing.
    storage.remove(f"{dest}/b.txt")
    assert storage.local_copy(dest, cache) == local
    # A new publication with the same sizes is a new copy; the old one stays for
    # whoever still reads it.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "b.txt").write_text("C")
    storage.publish_dir(str(tmp_path / "again"), dest)
    assert storage.walk_files(dest) == [storage.COMMIT_MARKER, "b.txt", "sub/a.bin"]
    newer = storage.local_copy(dest, cache)
    assert newer != local and open(os.path.join(newer, "b.txt")).read() == "C"
    assert os.path.exists(os.path.join(local, "sub", "a.bin"))


def test_a_publication_killed_halfway_is_untrusted_until_redone(bucket, tmp_path, monkeypatch):
    dest = f"{bucket}/export"
    for content in ("old", "new"):
        (tmp_path / content).mkdir()
        (tmp_path / content / "model.safetensors").write_text(content)
    storage.publish_dir(str(tmp_path / "old"), dest)
    with monkeypatch.context() as m:
        m.setattr(storage, "write_json_atomic", lambda *a: (_ for _ in ()).throw(
            RuntimeError("killed before the marker")))
        with pytest.raises(RuntimeError):
            storage.publish_dir(str(tmp_path / "new"), dest)
    # The new weights are up, the marker is gone and the publishing marker says why.
    assert storage.read_text(f"{dest}/model.safetensors") == "new"
    assert storage.is_being_published(dest) and not storage.is_committed(dest)
    (tmp_path / "new").mkdir(exist_ok=True)
    (tmp_path / "new" / "model.safetensors").write_text("new")
    storage.publish_dir(str(tmp_path / "new"), dest)
    assert storage.is_committed(dest) and not storage.is_being_published(dest)


def test_processes_sharing_a_cache_never_remove_each_others_copy(bucket, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    storage.publish_dir(str(tmp_path / "d"), f"{bucket}/d")
    cache = str(tmp_path / "cache")
    first = storage.local_copy(f"{bucket}/d", cache)
    # Another process finished the same copy while this one was downloading: its
    # rename meets a full directory, and it uses that one instead of failing.
    os.remove(os.path.join(first, storage.COMMIT_MARKER))
    done = os.path.join(first, storage.COMMIT_MARKER)
    real_replace = os.replace

    def racing_replace(src, dst):
        if dst == first:
            open(done, "w").write("{}")        # the other process's finished copy
        return real_replace(src, dst)
    os.replace = racing_replace
    try:
        assert storage.local_copy(f"{bucket}/d", cache) == first
    finally:
        os.replace = real_replace
    assert sorted(os.listdir(os.path.dirname(first))) == [os.path.basename(first)]


def test_an_uncommitted_directory_is_not_trusted(bucket, tmp_path):
    storage.write_text_atomic(f"{bucket}/half/part-0", "x")   # uploaded, marker never written
    assert not storage.is_committed(f"{bucket}/half")
    with pytest.raises(FileNotFoundError, match="not committed"):
        storage.local_copy(f"{bucket}/half", str(tmp_path / "cache"))


def test_locally_publish_dir_is_a_rename(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a").write_text("A")
    storage.publish_dir(str(staging), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["a"]       # no marker locally: as before
    assert storage.is_committed(str(tmp_path / "out"))


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from distill_jax import storage
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "object":
        with storage.atomic_open(path, "w") as f:
            for k in range(10_000):
                f.write(f"line {k}\\n")
                f.flush()
                if k == 100:
                    print("writing", flush=True)
                time.sleep(0.001)
    else:   # a directory of several objects
        import os, tempfile
        staging = tempfile.mkdtemp()
        for k in range(50):
            with open(os.path.join(staging, f"part-{k:03d}"), "w") as f:
                f.write("x" * 1000)
        from distill_jax.fake_bucket import FakeBucket
        original = FakeBucket.put_file
        def slow_put(self, *a, **kw):
            original(self, *a, **kw)
            print("uploaded", flush=True)
            time.sleep(0.05)
        FakeBucket.put_file = slow_put
        storage.publish_dir(staging, path)
    print("done", flush=True)
""")


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_reader_never_sees_a_shard_whose_writer_was_killed_mid_write(where, bucket, tmp_path):
    path = (str(tmp_path / "shard-00000.jsonl") if where == "local"
            else f"{bucket}/gen/shard-00000.jsonl")
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, path, "object"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert writer.stdout.readline().strip() == "writing"
    seen = [storage.exists(path) for _ in range(20) if not time.sleep(0.01)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not any(seen) and not storage.exists(path)
    if where == "bucket":
        assert not storage.exists(bucket)          # no object at all, not even a prefix


def test_a_directory_whose_upload_was_killed_is_not_committed(bucket):
    dest = f"{bucket}/curated"
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, dest, "dir"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    for _ in range(5):
        assert writer.stdout.readline().strip() == "uploaded"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert storage.exists(f"{dest}/part-000")           # some objects made it up ...
    assert not storage.is_committed(dest)                # ... but nobody trusts them
