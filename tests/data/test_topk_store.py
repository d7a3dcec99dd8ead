"""Teacher top-k in binary sidecars: round trip, refs, legacy inline records, errors,
and the curated tfds dataset built from records of both forms."""
import json
import os

import numpy as np
import pytest

from distill_jax.data import topk_store
from distill_jax.data.topk_store import TopKReader, TopKWriter, copy_topk, topk_arrays

HEADER_READ = topk_store._RemoteRows.HEADER_BYTES


def _topk(n, k, seed=0):
    """[n, k] ids and sorted (descending) logprobs in [-30, 0]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 150_000, (n, k), dtype=np.int32)
    logprobs = -np.sort(rng.exponential(3.0, (n, k)), axis=1).clip(0, 30).astype(np.float32)
    return ids, logprobs


def _record(prompt_id, j, **extra):
    return {"prompt_id": prompt_id, "sample_index": j, "prompt": f"question {prompt_id}",
            "response": "<think>\nr", "token_ids": [5, 6, 7], **extra}


@pytest.mark.parametrize("dtype,atol", [("float16", 2 ** -6), ("bfloat16", 2 ** -3),
                                        ("float32", 0.0)])
def test_round_trip_of_two_records_in_one_shard(tmp_path, dtype, atol):
    (ids_a, lp_a), (ids_b, lp_b) = _topk(7, 4, seed=1), _topk(5, 4, seed=2)
    writer = TopKWriter(str(tmp_path), "shard-00000-of-00001", k=4, dtype=dtype)
    ref_a, ref_b = writer.add(ids_a, lp_a), writer.add(ids_b, lp_b)
    assert ref_a == {"file": "shard-00000-of-00001", "row": 0, "rows": 7, "k": 4, "dtype": dtype}
    assert ref_b == {**ref_a, "row": 7, "rows": 5}
    paths = writer.commit()
    assert [os.path.basename(p) for p in paths] == ["shard-00000-of-00001.topk_ids.npy",
                                                    "shard-00000-of-00001.topk_logprobs.npy"]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)
    stored = np.load(paths[1])       # plain numpy, no ml_dtypes needed to open it
    assert stored.shape == (12, 4) and stored.dtype == topk_store.STORED_DTYPES[dtype]
    reader = TopKReader()
    for ref, ids, lp in ((ref_a, ids_a, lp_a), (ref_b, ids_b, lp_b)):
        got_ids, got_lp = topk_arrays(_record("p", 0, top_k=ref), str(tmp_path), reader)
        assert got_ids.dtype == np.int32 and got_lp.dtype == np.float32
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_allclose(got_lp, lp, rtol=0, atol=atol)
    # Copying into another sidecar of the same dtype is lossless.
    copy = TopKWriter(str(tmp_path / "copy"), "curated", k=4, dtype=dtype)
    os.makedirs(tmp_path / "copy")
    ref_c = copy_topk(_record("p", 0, top_k=ref_b), str(tmp_path), copy, reader)
    copy.commit()
    assert ref_c == {**ref_b, "file": "curated", "row": 0}
    for x, y in zip(reader.read(ref_c, str(tmp_path / "copy")), reader.read(ref_b, str(tmp_path))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_bucket_sidecars_are_read_by_ranged_reads_of_the_rows_only(tmp_path, bucket, dtype,
                                                                    monkeypatch):
    from distill_jax import storage
    (ids_a, lp_a), (ids_b, lp_b) = _topk(700, 8, seed=1), _topk(5, 8, seed=2)
    writer = TopKWriter(bucket, "shard", k=8, dtype=dtype)
    writer.add(ids_a, lp_a)
    ref_b = writer.add(ids_b, lp_b)
    writer.commit()
    reads = []
    real = storage.read_range
    monkeypatch.setattr(storage, "read_range",
                        lambda path, start, length: reads.append(length) or real(path, start,
                                                                                 length))
    local_reader, bucket_reader = TopKReader(), TopKReader()
    os.makedirs(tmp_path / "local")
    for name in ("shard.topk_ids.npy", "shard.topk_logprobs.npy"):
        (tmp_path / "local" / name).write_bytes(storage.read_bytes(f"{bucket}/{name}"))
    reads.clear()
    got = bucket_reader.read(ref_b, bucket)
    for x, y in zip(got, local_reader.read(ref_b, str(tmp_path / "local"))):
        np.testing.assert_array_equal(x, y)
    # Two headers, then the 5 rows of each array: nothing else, nothing copied locally.
    itemsize = topk_store.STORED_DTYPES[dtype].itemsize
    assert reads == [HEADER_READ, HEADER_READ, 5 * 8 * 4, 5 * 8 * itemsize]
    assert sorted(os.listdir(tmp_path)) == ["bucket_root", "local"]
    with pytest.raises(ValueError, match=r"top_k rows \[700, 710\) are out of range"):
        bucket_reader.read({**ref_b, "rows": 10}, bucket)


def test_float16_error_over_the_logprob_range(tmp_path):
    lp = np.linspace(-30, 0, 4001, dtype=np.float32).reshape(-1, 1)
    writer = TopKWriter(str(tmp_path), "s", k=1)
    ref = writer.add(np.zeros_like(lp, np.int32), lp)
    writer.commit()
    _, back = TopKReader().read(ref, str(tmp_path))
    err = np.abs(back - lp)
    assert err.max() <= 2 ** -7                     # half a float16 ulp in [-32, -16)
    assert err[lp > -1].max() <= 2 ** -12           # near the top tokens' logprobs


def test_legacy_inline_records_and_records_without_top_k():
    ids, lp = [[1, 2], [3, 4], [5, 6]], [[-0.1, -2.5], [-0.2, -3.0], [-0.3, -1e-6]]
    got_ids, got_lp = topk_arrays(_record("old", 0, top_k_ids=ids, top_k_logprobs=lp), "/nowhere")
    assert got_ids.dtype == np.int32 and got_lp.dtype == np.float32
    assert got_ids.tolist() == ids
    np.testing.assert_array_equal(got_lp, np.asarray(lp, np.float32))
    assert topk_arrays(_record("none", 0), "/nowhere") is None
    assert topk_arrays(_record("empty", 0, top_k_ids=[], top_k_logprobs=[]), "/nowhere") is None
    with pytest.raises(ValueError, match=r"record 'bad' sample 0: inline top_k_ids \[3, 2\] "
                                         r"and top_k_logprobs \[3\]"):
        topk_arrays(_record("bad", 0, top_k_ids=ids, top_k_logprobs=[-1.0] * 3), "/nowhere")


def test_missing_sidecar_names_the_file_and_the_record(tmp_path):
    ref = {"file": "shard-00003-of-00008", "row": 0, "rows": 3, "k": 2, "dtype": "float16"}
    with pytest.raises(FileNotFoundError, match=r"shard-00003-of-00008\.topk_ids\.npy of record "
                                                r"'gsm8k-17' sample 2 does not exist"):
        topk_arrays(_record("gsm8k-17", 2, top_k=ref), str(tmp_path))


def test_bad_refs_are_named(tmp_path):
    writer = TopKWriter(str(tmp_path), "s", k=2)
    ref = writer.add(*_topk(3, 2))
    writer.commit()
    reader = TopKReader()
    with pytest.raises(ValueError, match=r"record 'a' sample 0: top_k rows \[2, 5\) are out of "
                                         r"range of .*s\.topk_ids\.npy \(3 rows\)"):
        topk_arrays(_record("a", 0, top_k={**ref, "row": 2}), str(tmp_path), reader)
    with pytest.raises(ValueError, match=r"top_k ref says k=4, but .*s\.topk_ids\.npy has k=2"):
        topk_arrays(_record("a", 0, top_k={**ref, "k": 4}), str(tmp_path), reader)
    with pytest.raises(ValueError, match=r"ref says dtype bfloat16, but .* holds float16"):
        topk_arrays(_record("a", 0, top_k={**ref, "dtype": "bfloat16"}), str(tmp_path), reader)
    with pytest.raises(ValueError, match=r"malformed top_k ref"):
        topk_arrays(_record("a", 0, top_k={"file": "s"}), str(tmp_path), reader)
    with pytest.raises(ValueError, match=r"expected ids and logprobs of shape \[n, 2\]"):
        TopKWriter(str(tmp_path), "t", k=2).add(*_topk(3, 3))


def test_reader_sees_a_replaced_sidecar(tmp_path):
    """A cached mapping is not served after the file was rewritten (e.g. a forced rerun)."""
    reader = TopKReader()
    for value in (1, 2):
        writer = TopKWriter(str(tmp_path), "s", k=1)
        ref = writer.add([[value]], [[-float(value)]])
        writer.commit()
        assert reader.read(ref, str(tmp_path))[0].tolist() == [[value]]


def test_curated_tfds_from_sidecar_refs_reads_back_the_same_arrays(tmp_path):
    import sys

    import tensorflow_datasets as tfds

    from distill_jax.data.curated_tfds import build_curated_dataset
    (ids_a, lp_a), (ids_b, lp_b) = _topk(3, 2, seed=3), _topk(3, 2, seed=4)
    writer = TopKWriter(str(tmp_path), "curated", k=2)
    records = [_record("a", 0, top_k=writer.add(ids_a, lp_a)),
               _record("b", 1, top_k=writer.add(ids_b, lp_b)),
               _record("c", 0, top_k_ids=ids_a.tolist(), top_k_logprobs=lp_a.tolist()),
               _record("d", 0)]
    writer.commit()                  # the sidecar before the JSONL that refers to it
    with open(tmp_path / "curated.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    build_curated_dataset(str(tmp_path / "curated.jsonl"), str(tmp_path / "tfds"))
    ds = tfds.data_source("curated_traces", data_dir=str(tmp_path / "tfds"), split="train")
    rows = {r["prompt_id"].decode(): r for r in (ds[i] for i in range(len(ds)))}
    assert sorted(rows) == ["a", "b", "c", "d"]
    reader = TopKReader()
    for name, ids, lp in (("a", ids_a, lp_a), ("b", ids_b, lp_b), ("c", ids_a, lp_a)):
        row = rows[name]
        assert row["top_k_ids"].dtype == np.int32 and row["top_k_logprobs"].dtype == np.float16
        np.testing.assert_array_equal(row["top_k_ids"], ids)
        np.testing.assert_allclose(np.asarray(row["top_k_logprobs"], np.float32), lp,
                                   rtol=0, atol=2 ** -6)
        if name != "c":              # exactly what the sidecar holds
            ref = next(r["top_k"] for r in records if r["prompt_id"] == name)
            np.testing.assert_array_equal(np.asarray(row["top_k_logprobs"], np.float32),
                                          reader.read(ref, str(tmp_path))[1])
    assert rows["d"]["top_k_ids"].shape == (0, 0)
    assert "tensorflow" not in sys.modules


def test_one_reader_shared_by_threads_past_its_cache_size(tmp_path):
    """Grain maps records on a pool of threads that share the pipeline's one reader;
    with more sidecars than it keeps open, its evictions ran concurrently and an
    800-sample study crashed with KeyError in the cache. Every read must stay exact."""
    import concurrent.futures

    refs = []
    for s in range(6):
        writer = TopKWriter(str(tmp_path), f"s{s}", k=2)
        refs += [(writer.add([[s, j]] * 3, [[-1.0, -2.0]] * 3), s, j) for j in range(4)]
        writer.commit()
    reader = TopKReader(max_open=2)
    order = np.random.default_rng(0).integers(0, len(refs), 6000)

    def read(i):
        ref, s, j = refs[i]
        ids, _ = reader.read(ref, str(tmp_path))
        return ids.tolist() == [[s, j]] * 3

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, order))
    assert len(reader._open) <= 2


def test_a_shared_reader_parses_one_npy_header_at_a_time(tmp_path, monkeypatch):
    """numpy parses .npy headers with ast.literal_eval, and on CPython 3.11 two
    threads doing so at once can raise "SystemError: AST constructor recursion depth
    mismatch" (python/cpython#106905; it failed the test above once in CI). The
    reader's threads must therefore never be inside a header parse together."""
    import concurrent.futures
    import threading
    import time

    # The module numpy's .npy reader lives in (numpy.lib.format, or _format_impl).
    fmt = np.lib.format.open_memmap.__globals__
    parse, guard, inside, most = fmt["_read_array_header"], threading.Lock(), [0], [0]

    def watched_parse(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)         # widens the window two unserialised parses would share
        try:
            return parse(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setitem(fmt, "_read_array_header", watched_parse)
    refs = []
    for s in range(8):
        writer = TopKWriter(str(tmp_path), f"s{s}", k=2)
        refs.append((writer.add([[s, 0]], [[-1.0, -2.0]]), s))
        writer.commit()
    reader = TopKReader(max_open=1)   # every read of another sidecar reopens it

    def read(i):
        ref, s = refs[i % len(refs)]
        return reader.read(ref, str(tmp_path))[0].tolist() == [[s, 0]]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, range(200)))
    assert most[0] == 1
