"""End-to-end distill-filter on synthetic shards whose every sample has a known fate."""
import json
import os

import pytest

from configs import filter_default
from distill_jax.filters import rejection

# A long, well-formed correct solution (long enough for near-duplicate detection).
STEPS = " ".join(f"Step {k}: we keep track of the apples carefully and count them again." for k in
                 range(20))
GOOD = f"{STEPS}\nSo 3 + 4 = 7.\n</think>\nTom has \\boxed{{7}} apples."
GOOD_2 = "Three apples plus four apples makes seven apples.\n</think>\nThe answer is \\boxed{7}."
GOOD_3 = "Count: 3, then 4 more, which gives 7 in all.\n</think>\n\\boxed{7}"
NEAR_DUP = GOOD.replace("Step 7: we keep", "Step 7: we still keep")
LOOP = "Let me think. " + "I need to recount the apples. " * 12 + "\n</think>\n\\boxed{7}"

ADD_PROBLEM = 'def add_numbers(a, b):\n    """Add two integers and give back their total."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def _rec(prompt_id, j, text, problem, reference, kind="math", finish="stop", source="synthetic",
         num_tokens=50):
    return {"prompt_id": prompt_id, "sample_index": j, "text": text, "finish_reason": finish,
            "problem": problem, "reference": reference, "kind": kind, "source": source,
            "prompt": "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n<think>\n",
            "num_tokens": num_tokens, "token_ids": [1, 2, 3], "teacher_id": "t0",
            "top_k_ids": [[1, 2]] * 3, "top_k_logprobs": [[-0.1, -2.5]] * 3}


@pytest.fixture()
def shards(tmp_path, shared_data):
    with open(os.path.join(shared_data, "gsm8k_test.jsonl")) as f:
        contaminated_problem = json.loads(f.readline())["question"]
    apples = "Tom has 3 apples and buys 4 more at the market. How many apples does Tom have now?"
    p1 = [
        _rec("apples", 0, GOOD, apples, {"answer": "7"}),                    # kept
        _rec("apples", 1, GOOD.replace("{7}", "{8}"), apples, {"answer": "7"}),   # wrong
        _rec("apples", 2, GOOD, apples, {"answer": "7"}),                    # exact duplicate
        _rec("apples", 3, STEPS, apples, {"answer": "7"}, finish="length"),  # truncated
        _rec("apples", 4, "我们先数苹果，三个加四个等于七个苹果。所以答案是七。\n</think>\n\\boxed{7}",
             apples, {"answer": "7"}),                                       # mixed language
        _rec("apples", 5, NEAR_DUP, apples, {"answer": "7"}),                # near duplicate
        _rec("apples", 6, GOOD_2, apples, {"answer": "7"}),                  # kept
        _rec("apples", 7, LOOP, apples, {"answer": "7"}),                    # looping
        _rec("apples", 8, "3 + 4 = 7 so the answer is \\boxed{7}", apples, {"answer": "7"}),  # no </think>
        _rec("apples", 9, GOOD_3, apples, {"answer": "7"}),                  # over the cap of 2
        _rec("apples", 10, "Seven.\n</think>\n\\boxed{7}", apples, {"answer": "7"},
             num_tokens=4),                                                  # too short
    ]
    p2 = [_rec("leak", j, GOOD_2, contaminated_problem, {"answer": "18"}) for j in range(2)]
    p3 = [_rec("nogold", 0, GOOD_2, "Count the seven apples on the kitchen table twice.",
               {"answer": ""})]
    code_ok = ("I will add them.\n</think>\n```python\ndef add_numbers(a, b):\n    return a + b\n```")
    code_bad = ("I will subtract.\n</think>\n```python\ndef add_numbers(a, b):\n    return a - b\n```")
    code_loop = ("Loop.\n</think>\n```python\ndef add_numbers(a, b):\n    while True:\n"
                 "        pass\n```")
    ref = {"test": ADD_TEST, "entry_point": "add_numbers"}
    p4 = [_rec("add", 0, code_ok, ADD_PROBLEM, ref, kind="code"),
          _rec("add", 1, code_bad, ADD_PROBLEM, ref, kind="code"),
          _rec("add", 2, code_loop, ADD_PROBLEM, ref, kind="code")]
    d = tmp_path / "traces"
    d.mkdir()
    lines0 = [json.dumps(r, ensure_ascii=False) for r in p1]
    lines1 = [json.dumps(r) for r in p2 + p3] + ["{not json", json.dumps(
        {"prompt_id": "x", "sample_index": 0, "finish_reason": "stop"})] + [
        json.dumps(r) for r in p4]
    (d / "shard-00000-of-00002.jsonl").write_text("\n".join(lines0) + "\n")
    (d / "shard-00001-of-00002.jsonl").write_text("\n".join(lines1) + "\n")
    return d


def _config(shards, out, workers=1, data_dir=""):
    c = filter_default.get_config()
    c.input.path = str(shards)
    c.output_dir = str(out)
    c.num_workers = workers
    c.max_per_prompt = 2
    c.filters.correctness.code_wall_time_s = 3.0
    c.filters.correctness.code_cpu_time_s = 2.0
    c.decontamination.data_dir = str(data_dir)
    return c


def test_filter_end_to_end(shards, tmp_path, shared_data):
    out = tmp_path / "curated"
    c = _config(shards, out, data_dir=shared_data)
    report = rejection.filter_traces(c)

    with open(out / "curated.jsonl") as f:
        kept = [json.loads(line) for line in f]
    assert [(r["prompt_id"], r["sample_index"]) for r in kept] == [
        ("apples", 0), ("apples", 6), ("add", 0)]
    assert kept[0]["response"].startswith("<think>\n") and kept[0]["final_answer"] == "7"
    assert kept[2]["final_answer"].startswith("def add_numbers")

    stages = {s["name"]: s for s in report["stages"]}
    assert stages["decontaminate"]["rejected"] == {"contaminated_gsm8k_test": 2}
    assert stages["truncated"]["rejected"] == {"truncated": 1}
    assert stages["think_format"]["rejected"] == {"missing_think_close": 1}
    assert stages["language"]["rejected"] == {"mixed_language": 1}
    assert stages["length"]["rejected"] == {"too_short": 1}
    assert stages["repetition"]["rejected"] == {"repeated_ngrams": 1}
    assert stages["correctness"]["rejected"] == {
        "code_failed": 1, "code_timeout": 1, "gold_unparseable": 1, "wrong_answer": 1}
    assert stages["dedup"]["rejected"] == {"duplicate": 1, "near_duplicate": 1}
    assert stages["max_per_prompt"]["rejected"] == {"over_limit": 1}
    assert stages["decontaminate"]["in"] == 17 and stages["max_per_prompt"]["out"] == 3
    # Each stage's output is the next one's input.
    for a, b in zip(report["stages"], report["stages"][1:]):
        assert a["out"] == b["in"]

    shard1 = str(shards / "shard-00001-of-00002.jsonl")
    assert report["input"]["malformed_lines"] == 2
    assert [m["where"] for m in report["input"]["malformed"]] == [f"{shard1}:4", f"{shard1}:5"]
    assert "missing field 'text'" in report["input"]["malformed"][1]["error"]

    rows = [json.loads(line) for line in open(out / report["per_prompt_file"])]
    per_prompt = {p["prompt_id"]: p for p in rows}
    assert list(per_prompt) == ["apples", "leak", "nogold", "add"]
    # Correct whatever the other filters say: all apples samples but the wrong and the
    # truncated one; leak's answer 7 is not its gold 18; nogold has no gold.
    assert per_prompt["apples"] == {"prompt_id": "apples", "source": "synthetic", "samples": 11,
                                    "passed_filters": 5, "kept": 2,
                                    "acceptance_rate": round(2 / 11, 6), "correct": 9}
    assert [per_prompt[p]["correct"] for p in ("leak", "nogold", "add")] == [0, 0, 1]
    assert report["teacher"]["pass_at_k"]["1"] == pytest.approx((9 / 11 + 0 + 0 + 1 / 3) / 4)
    assert report["teacher"]["pass_at_k"].keys() == {"1"}    # nogold has a single sample
    assert report["acceptance"]["prompts_with_kept_samples"] == 2
    assert report["acceptance"]["mean_rate_per_prompt"] == pytest.approx((2 / 11 + 1 / 3) / 4,
                                                                         abs=1e-6)

    audit = out / "audit"
    wrong = [json.loads(line) for line in open(audit / "correctness-wrong_answer.jsonl")]
    assert [(a["prompt_id"], a["sample_index"]) for a in wrong] == [("apples", 1)]
    assert "answer '8', gold '7'" in wrong[0]["detail"]
    assert wrong[0]["where"] == f"{shards / 'shard-00000-of-00002.jsonl'}:2"
    assert sum(report["audit_files"].values()) == 14 + 2   # 14 rejected samples + 2 malformed
    assert len(open(audit / "malformed.jsonl").readlines()) == 2


def test_tfds_dataset_reads_back_without_tensorflow(shards, tmp_path, shared_data):
    import sys
    import tensorflow_datasets as tfds
    out = tmp_path / "curated"
    c = _config(shards, out, data_dir=shared_data)
    rejection.filter_traces(c)
    ds = tfds.data_source("curated_traces", data_dir=str(out / "tfds"), split="train")
    rows = sorted((ds[k] for k in range(len(ds))), key=lambda r: (r["prompt_id"],
                                                                  int(r["sample_index"])))
    assert [(r["prompt_id"].decode(), int(r["sample_index"])) for r in rows] == [
        ("add", 0), ("apples", 0), ("apples", 6)]
    apples = rows[1]
    assert apples["final_answer"] == b"7" and apples["source"] == b"synthetic"
    assert apples["response"].decode() == "<think>\n" + GOOD
    assert apples["top_k_ids"].tolist() == [[1, 2]] * 3
    assert apples["top_k_logprobs"].shape == (3, 2)
    assert "tensorflow" not in sys.modules


def test_rerun_is_skipped_and_parallel_matches(shards, tmp_path, shared_data, capsys):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    c1 = _config(shards, out1, data_dir=shared_data)
    r1 = rejection.filter_traces(c1)
    mtime = os.path.getmtime(out1 / "report.json")
    capsys.readouterr()
    assert rejection.filter_traces(c1) == r1
    assert "up to date" in capsys.readouterr().out
    assert os.path.getmtime(out1 / "report.json") == mtime

    c2 = _config(shards, out2, workers=2, data_dir=shared_data)
    rejection.filter_traces(c2)
    assert (out1 / "curated.jsonl").read_text() == (out2 / "curated.jsonl").read_text()
    assert not [p for p in os.listdir(tmp_path)
                if ".staging-" in p or ".old-" in p or ".work-" in p]


def test_bad_config_and_missing_input_fail_before_work(tmp_path, shared_data):
    c = _config(tmp_path / "nothing", tmp_path / "out", data_dir=shared_data)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rejection.filter_traces(c)
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "shard-0.jsonl").write_text("")
    c = _config(tmp_path / "traces", tmp_path / "out", data_dir=shared_data)
    c.filters.order = ("truncated", "no_such_filter")
    with pytest.raises(ValueError, match="no_such_filter"):
        rejection.filter_traces(c)
    c = _config(tmp_path / "traces", tmp_path / "out", data_dir=shared_data)
    c.decontamination.eval_sets = ("not_a_set",)
    with pytest.raises(ValueError, match="not_a_set"):
        rejection.filter_traces(c)


def test_a_record_that_makes_a_verifier_raise_is_rejected_and_the_run_goes_on(tmp_path):
    """A verifier bug or an odd record from another tool costs that record, not the run:
    it is audited as verifier_error with its file:line and the exception."""
    apples = "Tom has 3 apples and buys 4 more at the market. How many apples does Tom have now?"
    odd_reference = {"test": ADD_TEST, "entry_point": 5}          # not a name: re.escape raises
    code_ok = "I will add them.\n</think>\n```python\ndef add_numbers(a, b):\n    return a + b\n```"
    records = [_rec("apples", 0, GOOD, apples, {"answer": "7"}),
               _rec("odd", 0, code_ok, ADD_PROBLEM, odd_reference, kind="code"),
               _rec("pi", 0, "Speed.\n</think>\n\\boxed{12π inches per second}",
                    "How fast does the point move?", {"answer": "12\\pi"})]
    d = tmp_path / "traces"
    d.mkdir()
    (d / "shard-00000-of-00001.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    c = _config(d, tmp_path / "curated")
    c.filters.order = ("correctness",)
    report = rejection.filter_traces(c)
    assert report["output"]["samples"] >= 1                       # the good record is kept
    audit = tmp_path / "curated" / "audit" / "correctness-verifier_error.jsonl"
    errors = [json.loads(line) for line in audit.read_text().splitlines()]
    odd = [e for e in errors if e["prompt_id"] == "odd"]
    assert len(odd) == 1
    assert odd[0]["where"].endswith("shard-00000-of-00001.jsonl:2")
    assert "shard-00000-of-00001.jsonl:2: TypeError" in odd[0]["detail"]
