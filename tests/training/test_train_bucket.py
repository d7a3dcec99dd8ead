"""distill-train with its data, work directory and export on a bucket (the fake object
store `fakebucket://`): the same files as a local run, no renames, kill-and-resume,
bucket data sources (JSONL with top-k sidecars, a committed tfds directory), and
unknown schemes refused before any work."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from distill_jax import storage
from distill_jax.fake_bucket import ROOT_ENV, FakeBucket
from distill_jax.training.run import train
from tests.compile_cache import compile_cache_env
from tests.training.conftest import write_traces
from tests.training.kill_after_step import train_cli
from tests.training.test_run import _config

BUCKET = "fakebucket://bucket"
# Wall-clock rates: they differ between any two runs, local or not.
TIMING_KEYS = ("tokens_per_s", "mfu", "step_seconds")
# One config for the in-process runs and the CLI's: the same programs, the same losses.
COMMON = {"train.num_epochs": 2, "train.batch_size": 4, "train.checkpoint_every": 2,
          "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def _rows(path):
    """metrics.jsonl's rows without the timing keys."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in storage.read_text(path).splitlines()]


@pytest.fixture(scope="module")
def runs(module_bucket_root, tokenizer_path, tmp_path_factory):
    """The same training run twice: everything local under `root`, and data, work
    directory and export under BUCKET (the same layout); and the bucket's moves."""
    root = tmp_path_factory.mktemp("local")
    os.makedirs(root / "data")
    write_traces(root / "data" / "t.jsonl", 24)
    storage.upload_file(str(root / "data" / "t.jsonl"), f"{BUCKET}/data/t.jsonl")
    summaries, moves = {}, FakeBucket.moves
    for base in (str(root), BUCKET):
        c = _config(root, tokenizer_path, f"{base}/data/t.jsonl", **COMMON, **{
            "workdir": f"{base}/run", "train.export_dir": f"{base}/export"})
        summaries[base] = train(c)
    return root, summaries, FakeBucket.moves - moves


def test_a_bucket_run_writes_what_a_local_run_writes(runs):
    root, summaries, moves = runs
    assert moves == 0                                  # nothing renamed on the bucket
    local_rows = _rows(os.path.join(root, "run", "metrics.jsonl"))
    assert len(local_rows) >= 4
    assert _rows(f"{BUCKET}/run/metrics.jsonl") == local_rows
    # summary.json names its data and export paths: equal once the roots are swapped.
    local_summary = (root / "run" / "summary.json").read_text()
    assert storage.read_text(f"{BUCKET}/run/summary.json") == \
        local_summary.replace(str(root), BUCKET)
    assert summaries[BUCKET]["export"]["path"] == f"{BUCKET}/export"
    # The export: the same bytes, published under one commit marker.
    files = storage.walk_files(str(root / "export"))
    assert "tokenizer.model" in files and "generation_config.json" in files
    assert storage.is_committed(f"{BUCKET}/export")
    assert storage.walk_files(f"{BUCKET}/export") == sorted(files + [storage.COMMIT_MARKER])
    for name in files:
        assert storage.read_bytes(f"{BUCKET}/export/{name}") == \
            (root / "export" / name).read_bytes(), name


def test_a_bucket_run_keeps_checkpoints_caches_and_events_there(runs):
    root, _, _ = runs
    steps = sorted(n for n in os.listdir(root / "run" / "checkpoints") if n.isdigit())
    remote = f"{BUCKET}/run/checkpoints"
    assert [n for n in storage.listdir(remote) if n.isdigit()] == steps
    assert all(storage.is_committed(f"{remote}/{s}") for s in steps)
    caches = storage.listdir(f"{BUCKET}/run/data_cache")
    for prefix in ("index-", "lengths-", "batches-"):
        assert any(n.startswith(prefix) for n in caches), (prefix, caches)
    events = storage.listdir(f"{BUCKET}/run/tensorboard")
    assert events and all(storage.getsize(f"{BUCKET}/run/tensorboard/{n}") > 0 for n in events)


@pytest.mark.slow
def test_kill_and_resume_on_the_bucket_equals_the_uninterrupted_run(runs, module_bucket_root,
                                                                     tokenizer_path, tmp_path):
    root, _, _ = runs
    env = {ROOT_ENV: str(module_bucket_root), **compile_cache_env(tmp_path / "jax_cache")}
    args = {**COMMON, "data.path": f"{BUCKET}/data/t.jsonl",
            "data.tokenizer_path": tokenizer_path, "workdir": f"{BUCKET}/resumed"}
    killed = train_cli(args, env, check=False, kill_after_step=3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # The log on the bucket was last rewritten at the step-2 checkpoint.
    assert [r["step"] for r in _rows(f"{BUCKET}/resumed/metrics.jsonl")] == [1, 2]
    resumed = train_cli(args, env)
    assert "resumed from step 2" in resumed.stdout
    assert _rows(f"{BUCKET}/resumed/metrics.jsonl") == \
        _rows(os.path.join(root, "run", "metrics.jsonl"))


def test_unknown_schemes_fail_before_any_work(tmp_path, tokenizer_path):
    for key in ("workdir", "data.path", "train.export_dir", "train.checkpoint_dir"):
        c = _config(tmp_path, tokenizer_path, tmp_path / "missing.jsonl",
                    **{key: "nosuchscheme://b/x"})
        with pytest.raises(ValueError, match=r"no filesystem backend for 'nosuchscheme://'"):
            train(c)
    assert not os.path.exists(tmp_path / "run")       # nothing was written, not even workdir


def test_staged_checkpoints_refuse_several_processes(monkeypatch, module_bucket_root):
    from distill_jax.training import checkpoint
    checkpoint.check_directory(f"{BUCKET}/ckpt")      # one process: staged locally
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match=r"orbax cannot write fakebucket:// itself.*one "
                                         r"process only \(this run has 2\)"):
        checkpoint.check_directory(f"{BUCKET}/ckpt")
    checkpoint.check_directory("/shared/ckpt")        # orbax writes these itself


def test_a_jsonl_with_topk_sidecars_reads_the_same_from_the_bucket(module_bucket_root, tmp_path,
                                                                  tokenizer):
    from distill_jax.data.sources import JsonlSource
    from distill_jax.data.topk_store import TopKWriter, topk_arrays
    rows = write_traces(tmp_path / "inline.jsonl", 3, tokenizer=tokenizer, topk=2)
    inline = [(r.pop("top_k_ids"), r.pop("top_k_logprobs")) for r in rows]
    for base in (str(tmp_path / "local"), f"{BUCKET}/topk"):
        storage.makedirs(base)
        writer = TopKWriter(base, "t", k=2, dtype="float32")
        refs = [writer.add(ids, logprobs) for ids, logprobs in inline]
        writer.commit()
        storage.write_text_atomic(storage.join(base, "t.jsonl"), "".join(
            json.dumps(dict(r, top_k=ref)) + "\n" for r, ref in zip(rows, refs)))
    local = JsonlSource(str(tmp_path / "local" / "t.jsonl"), str(tmp_path / "cache"))
    remote = JsonlSource(f"{BUCKET}/topk/t.jsonl", f"{BUCKET}/topk/cache")
    assert storage.listdir(f"{BUCKET}/topk/cache")    # the line index, as one object
    assert len(remote) == len(local) == 3
    for k in range(3):
        a, b = local[k], remote[k]
        assert b["top_k"]["file"] == f"{BUCKET}/topk/t"
        for x, y in zip(topk_arrays(a, ""), topk_arrays(b, "")):
            np.testing.assert_array_equal(x, y)


def test_a_tfds_dataset_on_the_bucket_is_read_once_committed(module_bucket_root, tmp_path):
    from distill_jax.data.curated_tfds import build_curated_dataset
    from distill_jax.data.sources import open_source
    write_traces(tmp_path / "curated.jsonl", 4)
    build_curated_dataset(str(tmp_path / "curated.jsonl"), str(tmp_path / "tfds"))
    local = open_source(str(tmp_path / "tfds"))
    url = f"{BUCKET}/curated/tfds"
    storage.upload_tree(str(tmp_path / "tfds"), url)          # uploaded, not committed
    with pytest.raises(FileNotFoundError, match="not committed"):
        open_source(url, str(tmp_path / "cache"))
    storage.rmtree(url)
    shutil.copytree(tmp_path / "tfds", tmp_path / "publish")
    storage.publish_dir(str(tmp_path / "publish"), url)
    remote = open_source(url, str(tmp_path / "cache"))
    assert len(remote) == len(local) == 4
    assert [r["prompt"] for r in remote] == [r["prompt"] for r in local]
