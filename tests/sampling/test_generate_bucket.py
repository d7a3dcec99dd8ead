"""distill-generate with its prompts and output on an object store (the fake bucket,
`distill_jax/fake_bucket.py`): the same bytes as on a local disk, no renames, resume
after a crash mid-upload, hosts that share only the bucket, a missing backend refused
before any model work, and the trace readers on bucket paths."""
import importlib.util
import json
import types

import pytest

from distill_jax import storage
from distill_jax.data.traces import Malformed, open_traces
from distill_jax.fake_bucket import FakeBucket
from distill_jax.sampling import generate
from distill_jax.sampling.generate import generate_traces, shard_name
from tests.data.test_traces import (MOT_ROWS, STRATOS_ROWS, _distill_rows, _openr1_parquet,
                                    _write_jsonl)
from tests.sampling import test_generate
from tests.sampling.test_generate import _config

teacher = test_generate.teacher      # the tiny teacher fixture, reused rather than copied

NUM_SHARDS = 4        # _config: 10 prompts, 3 per shard


@pytest.fixture
def moves():
    """FakeBucket.moves is per process and cumulative: a test checks its own count."""
    before = FakeBucket.moves
    return lambda: FakeBucket.moves - before


@pytest.fixture(scope="module")
def reference(teacher, shared_data, tmp_path_factory):
    """An uninterrupted run on a local disk: what every bucket run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "traces"
    generate_traces(_config(teacher, shared_data, out))
    return str(out), str(shared_data / "gsm8k_test.jsonl")


def _upload_prompts(shared_data, bucket, limit=10):
    """The first prompts of the GSM8K file under its own name (prompt ids are the
    file's stem and line)."""
    with open(shared_data / "gsm8k_test.jsonl", encoding="utf-8") as f:
        head = "".join(line for _, line in zip(range(limit), f))
    url = f"{bucket}/prompts/gsm8k_test.jsonl"
    storage.write_text_atomic(url, head)
    return url


def _bucket_config(teacher, shared_data, bucket, out, **overrides):
    return _config(teacher, shared_data, out, **{
        "prompts.path": _upload_prompts(shared_data, bucket), **overrides})


def _files(base):
    """Everything a run wrote but its summary (which holds timings): name -> bytes."""
    return {name: storage.read_bytes(storage.join(base, name))
            for name in storage.listdir(base) if name != generate.SUMMARY}


def _assert_same_as_reference(out, prompts_url, reference):
    local_out, local_prompts = reference
    assert storage.listdir(out) == storage.listdir(local_out)
    ours, theirs = _files(out), _files(local_out)
    # The manifest names the prompt file it read; nothing else may differ.
    ours[generate.MANIFEST] = ours[generate.MANIFEST].replace(
        prompts_url.encode(), local_prompts.encode())
    assert ours == theirs
    assert sum(name.endswith(".npy") for name in ours) == 2 * NUM_SHARDS


def test_a_bucket_run_writes_the_local_run_bytes_without_renames(
        teacher, shared_data, bucket, moves, reference):
    out = f"{bucket}/traces"
    config = _bucket_config(teacher, shared_data, bucket, out)
    summary = generate_traces(config)
    assert summary["complete_shards"] == NUM_SHARDS and summary["samples"] == 20
    _assert_same_as_reference(out, config.prompts.path, reference)
    assert moves() == 0
    assert json.loads(storage.read_text(f"{out}/summary.json"))["samples"] == 20
    # The filter stage's reader takes the bucket directory as it takes a local one.
    local, remote = (open_traces(p) for p in (reference[0], out))
    assert [u.key for u in remote.units] == [u.key for u in local.units]
    assert [r for _, r in remote.records()] == [r for _, r in local.records()]


class _Killed(Exception):
    pass


def test_a_crash_mid_upload_then_resume_equals_an_uninterrupted_run(
        teacher, shared_data, bucket, moves, reference, monkeypatch):
    """The second shard's upload dies half-written, after its top-k sidecar was
    committed: nothing of that shard's JSONL may appear, and the reruns redo it."""
    out = f"{bucket}/traces"
    config = _bucket_config(teacher, shared_data, bucket, out)
    real_write, written = generate.write_text_atomic, []

    def write_then_die(path, text):
        if written:
            with storage.atomic_open(path, "w", encoding="utf-8") as f:
                f.write(text[:len(text) // 2])
                raise _Killed(path)
        real_write(path, text)
        written.append(path)

    monkeypatch.setattr(generate, "write_text_atomic", write_then_die)
    with pytest.raises(_Killed):
        generate_traces(config)
    monkeypatch.setattr(generate, "write_text_atomic", real_write)
    names = storage.listdir(out)
    assert [n for n in names if n.endswith(".jsonl")] == [shard_name(0, NUM_SHARDS)]
    assert "shard-00001-of-00004.topk_ids.npy" in names     # committed before the crash
    again = generate_traces(_bucket_config(teacher, shared_data, bucket, out, max_shards=1))
    assert again["complete_shards"] == 2 and again["shards_written_this_run"] == 1
    generate_traces(config)
    _assert_same_as_reference(out, config.prompts.path, reference)
    assert moves() == 0


def test_hosts_sharing_only_a_bucket_write_disjoint_shards(
        teacher, shared_data, bucket, moves, reference, monkeypatch):
    """Two hosts, one after the other in this process (generate's view of the process
    index and count patched): each finds its own shards by listing the bucket, skips
    and keeps the other's, and together they write the single-host bytes."""
    out = f"{bucket}/traces"
    config = _bucket_config(teacher, shared_data, bucket, out)
    owned = {}
    for host in (1, 0):
        monkeypatch.setattr(generate, "jax", types.SimpleNamespace(
            process_index=lambda host=host: host, process_count=lambda: 2))
        summary = generate_traces(config)
        owned[host] = summary["shards_written_this_run"]
        mine = {shard_name(k, NUM_SHARDS) for k in range(host, NUM_SHARDS, 2)}
        assert mine <= set(storage.listdir(out))
    assert owned == {1: 2, 0: 2} and summary["complete_shards"] == NUM_SHARDS
    _assert_same_as_reference(out, config.prompts.path, reference)
    assert moves() == 0


@pytest.mark.parametrize("key,path,package", [("output_dir", "gs://b/traces", "gcsfs"),
                                              ("prompts.path", "s3://b/p.jsonl", "s3fs")])
def test_a_scheme_without_its_backend_fails_before_any_model_work(
        teacher, shared_data, tmp_path, monkeypatch, key, path, package):
    if importlib.util.find_spec(package):
        pytest.skip(f"{package} is installed here")

    def no_model_work(*args, **kwargs):
        raise AssertionError("the path should have been refused before the tokenizer loads")

    monkeypatch.setattr(generate, "load_tokenizer", no_model_work)
    monkeypatch.setattr(generate, "load_prompts_from_config", no_model_work)
    config = _config(teacher, shared_data, tmp_path / "out", **{key: path})
    with pytest.raises(ValueError, match=rf"config\.{key}: {path}: .*pip install {package}"):
        generate_traces(config)


def _read(path, **kwargs):
    ts = open_traces(path, **kwargs)
    return ts, [(where, r) for where, r in ts.records() if not isinstance(r, Malformed)]


@pytest.mark.parametrize("name", ["a.parquet", "b.json", "c.jsonl", "shards",
                                  "s*/*.jsonl", "shards/shard-*.jsonl"])
def test_traces_read_from_a_bucket_as_from_a_local_dir(bucket, tmp_path, name):
    """Each container (Parquet by ranged reads, JSON, JSON Lines cut into byte-range
    units), a directory with generate's sidecar files, and globs."""
    local = tmp_path / "local"
    (local / "shards").mkdir(parents=True)
    _openr1_parquet(local / "a.parquet", row_group_size=1)
    (local / "b.json").write_text(json.dumps(STRATOS_ROWS))
    _write_jsonl(local / "c.jsonl", MOT_ROWS * 5)
    _write_jsonl(local / "shards" / "shard-00000-of-00001.jsonl", _distill_rows(4))
    (local / "shards" / "manifest.json").write_text("{}")
    url = f"{bucket}/in"
    storage.upload_tree(str(local), url)
    local_set, local_items = _read(str(local / name), max_unit_bytes=300)
    remote_set, remote_items = _read(f"{url}/{name}", max_unit_bytes=300)
    assert remote_set.format == local_set.format
    assert remote_set.files == [f.replace(str(local), url) for f in local_set.files]
    assert [u.key for u in remote_set.units] == [u.key for u in local_set.units]
    assert len(local_set.units) > 1 or name == "b.json"
    assert remote_items == [(w.replace(str(local), url), r) for w, r in local_items]
    assert remote_items
