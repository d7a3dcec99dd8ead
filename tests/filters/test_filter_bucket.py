"""distill-filter with its traces, evaluation sets and output in a bucket (the
`fakebucket://` store): the same files as a local run, no rename, an output that
counts only once committed, and a resume from the bucket after a kill."""
import importlib.util
import json
import os

import pytest

from distill_jax import storage
from distill_jax.fake_bucket import FakeBucket
from distill_jax.filters import decontaminate, judge, rejection, stage_files
from tests.filters import test_filter_streaming as streaming
from tests.filters import test_rejection as end_to_end

# The end-to-end tests' input fixtures, as fixtures of this module.
shards = end_to_end.shards
traces = streaming.traces

ARRAY_RECORD = "tfds/curated_traces/1.1.0/curated_traces-train.array_record-00000-of-00001"


class Killed(Exception):
    pass


def _upload(local_dir, url, names=None):
    storage.upload_tree(str(local_dir), url, names)
    return url


def _records(data_dir):
    """The tfds dataset's examples, decoded: array_record files of equal examples are
    not equal bytes from one process to the next (the serialised examples vary)."""
    import tensorflow_datasets as tfds
    ds = tfds.data_source("curated_traces", data_dir=data_dir, split="train")
    return [{k: v.tolist() if hasattr(v, "tolist") else v for k, v in ds[i].items()}
            for i in range(len(ds))]


def _without_timeout_details(data: bytes) -> list:
    """Audit rows, less the detail of a code timeout: which limit fires first (CPU or
    wall clock) depends on the machine's load, not on where the files are."""
    rows = [json.loads(line) for line in data.splitlines()]
    for r in rows:
        if r.get("reason") == "code_timeout":
            r.pop("detail")
    return rows


def _assert_same_output(local_dir, url, renames, cache_dir):
    """Every file of the local output, with its paths renamed to the bucket's, is in
    the committed bucket output with the same bytes; the report also differs by its
    fingerprint (a hash of those paths)."""
    assert storage.is_committed(url)
    files = storage.walk_files(str(local_dir))
    assert storage.walk_files(url) == sorted(files + [storage.COMMIT_MARKER])
    copy = storage.local_copy(url, str(cache_dir))
    for rel in files:
        with open(os.path.join(local_dir, rel), "rb") as f:
            want = f.read()
        for old, new in renames:
            want = want.replace(old.encode(), new.encode())
        got = storage.read_bytes(storage.join(url, rel))
        if rel == stage_files.REPORT:
            want, got = json.loads(want), json.loads(got)
            want.pop("fingerprint"), got.pop("fingerprint")
        elif rel == "audit/correctness-code_timeout.jsonl":
            want, got = _without_timeout_details(want), _without_timeout_details(got)
        if rel != ARRAY_RECORD:
            assert got == want, rel
    assert ARRAY_RECORD in files
    assert _records(os.path.join(copy, "tfds")) == _records(os.path.join(local_dir, "tfds"))


def test_a_bucket_run_writes_what_a_local_run_writes(shards, shared_data, tmp_path, bucket):
    local_out = tmp_path / "local_out"
    rejection.filter_traces(end_to_end._config(shards, local_out, data_dir=shared_data))
    traces_url = _upload(shards, f"{bucket}/traces")
    c = end_to_end._config(traces_url, f"{bucket}/out", data_dir=f"{bucket}/evals")
    _upload(shared_data, c.decontamination.data_dir,
            [decontaminate.BUILTIN_EVAL_SETS[s][0] for s in c.decontamination.eval_sets])
    report = rejection.filter_traces(c)
    assert report["output"]["tfds"]["data_dir"] == f"{bucket}/out/tfds"
    _assert_same_output(local_out, c.output_dir,
                        [(str(shards), traces_url), (str(local_out), c.output_dir)],
                        tmp_path / "cache")
    assert FakeBucket.moves == 0
    assert storage.listdir(bucket) == ["evals", "out", "traces"]      # no work dir left


def test_a_killed_bucket_run_resumes_and_an_uncommitted_output_is_redone(
        traces, tmp_path, bucket, monkeypatch, capsys):
    reference = tmp_path / "reference"
    rejection.filter_traces(streaming._config(traces, reference, unit_mb=0.002))
    c = streaming._config(_upload(traces, f"{bucket}/traces"), f"{bucket}/out", unit_mb=0.002)
    real_commit = stage_files.WorkDir.commit_unit

    def dying_commit(self, i, *args):
        if i == 3:
            raise Killed
        return real_commit(self, i, *args)

    def dying_marker(path, obj):
        raise Killed

    with monkeypatch.context() as m:           # killed between units
        m.setattr(stage_files.WorkDir, "commit_unit", dying_commit)
        with pytest.raises(Killed):
            rejection.filter_traces(c)
    assert not storage.exists(c.output_dir)
    with monkeypatch.context() as m:           # killed uploading the output, before its marker
        m.setattr(storage, "write_json_atomic", dying_marker)
        with pytest.raises(Killed):
            rejection.filter_traces(c)
    assert storage.exists(storage.join(c.output_dir, stage_files.REPORT))
    assert not storage.is_committed(c.output_dir)
    capsys.readouterr()

    rejection.filter_traces(c)
    out = capsys.readouterr().out
    assert "up to date" not in out and "resuming after" in out
    _assert_same_output(reference, c.output_dir,
                        [(str(traces), f"{bucket}/traces"), (str(reference), c.output_dir)],
                        tmp_path / "cache")
    rejection.filter_traces(c)
    assert "up to date" in capsys.readouterr().out
    assert FakeBucket.moves == 0


def _missing_backend():
    for scheme, package in (("gs", "gcsfs"), ("s3", "s3fs"), ("az", "adlfs")):
        if importlib.util.find_spec(package) is None:
            return scheme, package
    pytest.skip("every object-store backend this test knows is installed")


def test_a_path_without_a_backend_fails_before_any_work(shards, tmp_path):
    scheme, package = _missing_backend()
    url = f"{scheme}://nowhere/x"
    for what, edit in (("input.path", lambda c: setattr(c.input, "path", url)),
                       ("output_dir", lambda c: setattr(c, "output_dir", url)),
                       ("decontamination.eval_sets",
                        lambda c: setattr(c.decontamination, "eval_sets", (f"{url}.jsonl:q",)))):
        c = end_to_end._config(shards, tmp_path / "out")
        edit(c)
        with pytest.raises(ValueError, match=f"{what}: {url}.*{package}"):
            rejection.filter_traces(c)
    assert sorted(os.listdir(tmp_path)) == ["traces"]


def test_the_judge_cache_in_a_bucket_is_rewritten_whole(bucket):
    path = judge.default_cache_path(f"{bucket}/out/")
    assert path == f"{bucket}/out.judge_cache.jsonl"
    with judge.JudgeCache(path, upload_every_s=0) as cache:
        cache.put("k1", "EQUIVALENT", "raw")
        assert json.loads(storage.read_text(path))["key"] == "k1"    # uploaded at once
    with judge.JudgeCache(path, upload_every_s=3600) as cache:
        cache.put("k2", "DIFFERENT", "raw")
        assert storage.read_text(path).count("\n") == 1               # not yet ...
    assert storage.read_text(path).count("\n") == 2                   # ... but on close
    storage.write_text_atomic(path, storage.read_text(path) + '{"key": "k3", "verd')
    cache = judge.JudgeCache(path)
    assert cache.torn_lines == 1 and cache.verdicts == {"k1": "EQUIVALENT", "k2": "DIFFERENT"}
    assert storage.read_text(path).endswith("\n")
    assert FakeBucket.moves == 0
