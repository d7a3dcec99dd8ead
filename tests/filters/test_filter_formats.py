"""`distill-filter` end to end on every input format (fixtures with the real field
names, Parquet included): one sample per generation, ids stable across reruns,
bad rows counted with file:row, the input's labels reported against our verdict."""
import json

import pytest

from configs import filter_default
from distill_jax.filters import rejection
from tests.data.test_traces import (MOT_ROWS, SGLANG_ROWS, STRATOS_ROWS, VLLM_ROWS,
                                    _distill_rows, _openr1_parquet, _write_jsonl)


def _config(path, out, fmt="auto", **fields):
    c = filter_default.get_config()
    c.input.path = str(path)
    c.input.pattern = "*"
    c.input.format = fmt
    for k, v in fields.items():
        c.input.fields[k] = v
    c.output_dir = str(out)
    c.num_workers = 1
    c.max_per_prompt = 0
    c.filters.order = ("truncated", "think_format", "correctness")
    c.filters.think_format.require_final_answer = False
    c.filters.correctness.unverifiable = "keep"
    return c


def _write(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    if name == "openr1":
        _openr1_parquet(d / "train-00000-of-00001.parquet")
    elif name == "sharegpt":
        (d / "stratos.json").write_text(json.dumps(STRATOS_ROWS))
    elif name == "messages":
        _write_jsonl(d / "mot.jsonl", MOT_ROWS)
    elif name == "vllm":
        _write_jsonl(d / "vllm.jsonl", VLLM_ROWS + SGLANG_ROWS)
    else:
        _write_jsonl(d / "shard-00000-of-00001.jsonl", _distill_rows())
    return d


# (format, generations in the file, rows that cannot be read, kept)
CASES = [("openr1", 2 + 1 + 3, 1, 2), ("sharegpt", 2, 0, 1), ("messages", 2, 0, 2),
         ("vllm", 3, 0, 2), ("distill", 6, 0, 6)]


@pytest.mark.parametrize("name,generations,malformed,kept", CASES)
def test_every_format_filters_end_to_end(tmp_path, name, generations, malformed, kept):
    d = _write(tmp_path, name)
    report = rejection.filter_traces(_config(d, tmp_path / "out"))
    assert report["input"]["format"] == name
    # One sample per generation; the openr1 row whose lists disagree is one bad row.
    bad = 3 if name == "openr1" else 0
    assert report["input"]["samples"] == generations - bad
    assert report["input"]["malformed_lines"] == malformed
    if malformed:
        assert report["input"]["malformed"][0]["where"].endswith(".parquet:row 2")
    assert report["output"]["samples"] == kept
    first = [json.loads(x) for x in open(tmp_path / "out" / "curated.jsonl")]
    # Ids are stable: a second run into another directory keeps the same records.
    rejection.filter_traces(_config(d, tmp_path / "again"))
    second = [json.loads(x) for x in open(tmp_path / "again" / "curated.jsonl")]
    assert [(r["prompt_id"], r["sample_index"]) for r in first] == \
        [(r["prompt_id"], r["sample_index"]) for r in second]
    assert len({(r["prompt_id"], r["sample_index"]) for r in first}) == len(first)
    for r in first:
        assert r["response"].lstrip().startswith("<think>")


def test_openr1_labels_are_reported_against_our_verdict(tmp_path):
    d = _write(tmp_path, "openr1")
    report = rejection.filter_traces(_config(d, tmp_path / "out"))
    table = report["agreement"]["correctness_math_verify"]
    # Row 0: gen 0 correct (both agree), gen 1 truncated and unfinished (both: incorrect);
    # row 1: gold from the solution's box, correct.
    assert table["counts"] == {"false": {"incorrect": 1}, "true": {"correct": 2}}
    assert table["agreement"] == 1.0
    assert report["agreement"]["correctness_llama"]["counts"]["none"] == {"correct": 1}
    kept = [json.loads(x) for x in open(tmp_path / "out" / "curated.jsonl")]
    assert kept[0]["labels"]["correctness_math_verify"] is True


def test_unverifiable_samples_follow_the_policy(tmp_path):
    d = _write(tmp_path, "sharegpt")      # ShareGPT rows carry no gold answer
    c = _config(d, tmp_path / "drop")
    c.filters.correctness.unverifiable = "drop"
    report = rejection.filter_traces(c)
    assert report["output"]["samples"] == 0 and report["unverifiable"]["samples"] == 2
