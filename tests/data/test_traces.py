"""Trace readers: every format becomes records the filters accept, ids are stable,
units split files without changing what is read, and bad input is named."""
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill_jax.data import traces
from distill_jax.data.traces import Malformed, normalise_response, open_traces
from distill_jax.filters.sample import make_sample

STRATOS_SYSTEM = ("Your role as an assistant involves thoroughly exploring questions through a "
                  "systematic long thinking process before providing the final precise and "
                  "accurate solutions.")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _all(ts):
    return list(ts.records())


def _records(items):
    return [r for _, r in items if not isinstance(r, Malformed)]


def _malformed(items):
    return [r for _, r in items if isinstance(r, Malformed)]


# ---------------------------------------------------------------- fixtures (real field names)

OPENR1_ROWS = [
    {"problem": "Find $x$ if $2x + 3 = 11$.", "solution": "$2x = 8$, so $x = \\boxed{4}$.",
     "answer": "4", "problem_type": "Algebra", "question_type": "math-word-problem",
     "source": "olympiads", "uuid": "0a1b-4", "is_reasoning_complete": [True, False],
     "generations": ["<think>\nSubtract 3: 2x = 8, x = 4.\n</think>\n\nThe answer is $\\boxed{4}$.",
                     "<think>\nLet me think about 2x + 3 = 11. Subtracting"],
     "correctness_math_verify": [True, False], "correctness_llama": [None, False],
     "finish_reasons": ["stop", "length"], "correctness_count": 1,
     "messages": [{"role": "user", "content": "Find $x$ ..."}]},
    # No answer: the gold comes from the solution's box. No finish_reasons: "stop".
    {"problem": "Compute $3 \\cdot 5$.", "solution": "It is $\\boxed{15}$.", "answer": "",
     "problem_type": "Algebra", "question_type": "math-word-problem", "source": "cn_contest",
     "uuid": "0a1b-15", "is_reasoning_complete": [True],
     "generations": ["Multiply.\n</think>\n\n$\\boxed{15}$"],
     "correctness_math_verify": [True], "correctness_llama": [True], "finish_reasons": None,
     "correctness_count": 1, "messages": []},
    # Three generations, two finish reasons: one Malformed entry for the row.
    {"problem": "What is $1+1$?", "solution": "$\\boxed{2}$", "answer": "2",
     "problem_type": "Algebra", "question_type": "math-word-problem", "source": "olympiads",
     "uuid": "0a1b-2", "is_reasoning_complete": [True, True, True],
     "generations": ["<think>\n1+1=2\n</think>\n\n2", "<think>\nTwo.\n</think>\n\n2",
                     "<think>\n2\n</think>\n\n2"],
     "correctness_math_verify": [True, True, True], "correctness_llama": [True, True, True],
     "finish_reasons": ["stop", "stop"], "correctness_count": 3, "messages": []},
]


def _openr1_parquet(path, rows=OPENR1_ROWS, row_group_size=1):
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return str(path)


STRATOS_ROWS = [
    {"system": STRATOS_SYSTEM, "conversations": [
        {"from": "user", "value": "Return your final response within \\boxed{}. What is 6/2?"},
        {"from": "assistant", "value":
            "<|begin_of_thought|>\n\nOkay, 6 divided by 2.\n\nThat is 3.\n\n<|end_of_thought|>"
            "\n\n<|begin_of_solution|>\n\nThe answer is $\\boxed{3}$.\n\n<|end_of_solution|>"}]},
    {"system": STRATOS_SYSTEM, "conversations": [
        {"from": "human", "value": "Say hi."},
        {"from": "gpt", "value": "Hi!"}]},
]

MOT_ROWS = [
    {"messages": [{"role": "system", "content": "You are a careful solver."},
                  {"role": "user", "content": "What is 7 * 6?"},
                  {"role": "assistant", "content": "<think>\n7*6 = 42\n</think>\n\n**42**"}],
     "num_tokens": 812, "source": "open-r1/OpenR1-Math-220k"},
    {"messages": [{"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi, how can I help?"},
                  {"role": "user", "content": "What is 2 + 5?"},
                  {"role": "assistant", "content": "2 + 5 = 7.\n</think>\n\n$\\boxed{7}$"}],
     "num_tokens": 300, "source": "open-r1/OpenR1-Math-220k"},
]

VLLM_ROWS = [
    {"request_id": "0", "prompt": "<|User|>What is 2+2?<|Assistant|><think>\n",
     "prompt_token_ids": [0, 5, 6], "finished": True, "answer": "4",
     "outputs": [{"index": 0, "text": "2+2=4.\n</think>\n\n$\\boxed{4}$", "token_ids": [7, 8, 9],
                  "cumulative_logprob": -1.5, "finish_reason": "stop", "stop_reason": None},
                 {"index": 1, "text": "2+2 is", "token_ids": [7, 10],
                  "cumulative_logprob": -0.9, "finish_reason": "length", "stop_reason": None}]},
]

SGLANG_ROWS = [
    {"prompt": "What is 9-3?", "text": "9-3=6.\n</think>\n\n6",
     "meta_info": {"id": "ab12", "finish_reason": {"type": "stop", "matched": 1},
                   "prompt_tokens": 9, "completion_tokens": 7}},
]


def _distill_rows(n=3):
    return [{"prompt_id": f"gsm8k-{i}", "sample_index": j,
             "text": f"{i} + {j}\n</think>\n\n\\boxed{{{i + j}}}", "finish_reason": "stop",
             "problem": f"What is {i} + {j}?", "reference": {"answer": str(i + j)},
             "kind": "math", "source": "gsm8k", "prompt": "p", "user_message": "u",
             "assistant_prefix": "<think>\n", "num_tokens": 9, "token_ids": list(range(9)),
             "teacher_id": "tiny"} for i in range(n) for j in range(2)]


# ---------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw,want", [
    # Bespoke-Stratos / OpenThoughts markers.
    ("<|begin_of_thought|>\n\nLet me see.\n\nIt is 3.\n\n<|end_of_thought|>\n\n"
     "<|begin_of_solution|>\n\nThe answer is 3.\n\n<|end_of_solution|>",
     "<think>\nLet me see.\n\nIt is 3.\n</think>\n\nThe answer is 3."),
    ("<|begin_of_thought|>x<|end_of_thought|>y", "<think>\nx\n</think>\n\ny"),
    ("<|begin_of_solution|>\n42\n<|end_of_solution|>\n", "42"),
    # An unfinished thought stays unfinished.
    ("<|begin_of_thought|>\n\nhmm, so", "<think>\nhmm, so"),
    # The opener was in the prompt.
    ("Let me think.\n</think>\n\n42", "<think>\nLet me think.\n</think>\n\n42"),
    ("\nLet me think.\n</think>\n\n42", "<think>\nLet me think.\n</think>\n\n42"),
    ("<|begin_of_solution|>x<|end_of_solution|> then </think> y", "<think>\nx\n\nthen </think> y"),
    # Already normal, or no markers at all: unchanged (nothing else is rewritten).
    ("<think>\n  a  \n</think>\n\n42  ", "<think>\n  a  \n</think>\n\n42  "),
    ("  just an answer, 42  ", "  just an answer, 42  "),
    ("<think>\nstill thinking", "<think>\nstill thinking"),
    ("", ""),
])
def test_normalise_response(raw, want):
    assert normalise_response(raw) == want
    assert normalise_response(want) == want          # idempotent


# ---------------------------------------------------------------- formats

def test_openr1_parquet_one_record_per_generation(tmp_path):
    path = _openr1_parquet(tmp_path / "train-00000-of-00001.parquet")
    ts = open_traces(path)
    assert ts.format == "openr1"
    items = _all(ts)
    records, bad = _records(items), _malformed(items)
    assert len(records) == 3                          # 2 + 1 generations; the bad row yields none
    assert [(r["prompt_id"], r["sample_index"]) for r in records] == [
        ("0a1b-4", 0), ("0a1b-4", 1), ("0a1b-15", 0)]
    first, second, third = records
    assert first["labels"] == {"correctness_math_verify": True, "correctness_llama": None,
                               "is_reasoning_complete": True}
    assert second["labels"] == {"correctness_math_verify": False, "correctness_llama": False,
                                "is_reasoning_complete": False}
    assert (first["finish_reason"], second["finish_reason"], third["finish_reason"]) == (
        "stop", "length", "stop")
    assert first["reference"] == {"answer": "4"}
    assert third["reference"] == {"answer": "15"}     # from the solution's \boxed{}
    assert third["text"].startswith("<think>\nMultiply.")
    assert first["source"] == "olympiads" and first["kind"] == "math"
    assert first["problem"] == first["user_message"] == OPENR1_ROWS[0]["problem"]
    assert first["format"] == "openr1" and first["assistant_prefix"] == ""
    assert "num_tokens" not in first and "token_ids" not in first
    assert [w for w, r in items if not isinstance(r, Malformed)] == [
        f"{path}:row 0", f"{path}:row 0", f"{path}:row 1"]
    assert len(bad) == 1 and bad[0].where == f"{path}:row 2"
    assert "3 generations but finish_reasons has 2" in bad[0].error
    assert "0a1b-2" in bad[0].line
    for where, r in items:
        if not isinstance(r, Malformed):
            make_sample(r, where)


def test_parquet_units_are_row_groups(tmp_path):
    path = _openr1_parquet(tmp_path / "t.parquet", row_group_size=1)
    small = open_traces(path, max_unit_bytes=1)
    big = open_traces(path)
    assert [u.key for u in small.units] == [f"t.parquet:rowgroups={g}-{g + 1}" for g in range(3)]
    assert [u.key for u in big.units] == ["t.parquet:rowgroups=0-3"]
    assert _all(small) == _all(big)


def test_parquet_missing_column_is_named_up_front(tmp_path):
    rows = [{k: v for k, v in OPENR1_ROWS[0].items() if k != "problem"}]
    path = _openr1_parquet(tmp_path / "noproblem.parquet", rows)
    with pytest.raises(ValueError, match=r"noproblem\.parquet.*'problem'.*columns present.*uuid"):
        open_traces(path, format="openr1")
    good = _openr1_parquet(tmp_path / "good.parquet")
    with pytest.raises(ValueError, match=r"good\.parquet.*'question'"):
        open_traces(good, fields={"problem": "question"})


def test_sharegpt_json(tmp_path):
    (tmp_path / "stratos.json").write_text(json.dumps(STRATOS_ROWS))
    ts = open_traces(str(tmp_path / "stratos.json"))
    assert ts.format == "sharegpt" and [u.key for u in ts.units] == ["stratos.json:all"]
    items = _all(ts)
    assert not _malformed(items) and len(items) == 2
    (w0, r0), (w1, r1) = items
    assert w0.endswith("stratos.json:row 0") and w1.endswith("stratos.json:row 1")
    assert r0["prompt_id"] == "stratos.json:row 0" and r1["prompt_id"] == "stratos.json:row 1"
    assert r0["text"] == "<think>\nOkay, 6 divided by 2.\n\nThat is 3.\n</think>\n\n" \
                         "The answer is $\\boxed{3}$."
    assert r0["system"] == STRATOS_SYSTEM
    assert r0["problem"].endswith("What is 6/2?")
    assert r0["reference"] == {} and r0["labels"] == {}     # no gold in the file
    assert r1["text"] == "Hi!" and r1["source"] == "sharegpt"
    sample = make_sample(r0, w0)
    assert sample.reasoning.strip() == "Okay, 6 divided by 2.\n\nThat is 3."
    # The same rows under "data", with a field mapping for the gold.
    rows = [dict(r, gold="3") for r in STRATOS_ROWS]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    r = _records(_all(open_traces(str(tmp_path / "wrapped.json"), fields={"answer": "gold"},
                                  source="stratos")))
    assert r[0]["reference"] == {"answer": "3"} and r[0]["source"] == "stratos"


def test_messages_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "mot.jsonl", MOT_ROWS)
    items = _all(open_traces(path))
    (w0, r0), (w1, r1) = items
    assert (w0, w1) == (f"{path}:1", f"{path}:2")
    assert r0["format"] == "messages" and r0["system"] == "You are a careful solver."
    assert r0["problem"] == "What is 7 * 6?" and r0["text"].endswith("**42**")
    assert "num_tokens" not in r0                # the row's count is the whole conversation's
    assert r0["source"] == "open-r1/OpenR1-Math-220k"
    assert r1["problem"] == "What is 2 + 5?" and r1["text"].startswith("<think>\n2 + 5 = 7.")
    assert r1["history"] == [{"role": "user", "content": "Hello"},
                             {"role": "assistant", "content": "Hi, how can I help?"}]
    assert r1["prompt_id"] == "mot.jsonl:2"


def test_vllm_and_sglang(tmp_path):
    path = _write_jsonl(tmp_path / "vllm.jsonl", VLLM_ROWS)
    r0, r1 = _records(_all(open_traces(path)))
    assert r0["format"] == "vllm" and (r0["sample_index"], r1["sample_index"]) == (0, 1)
    assert r0["token_ids"] == [7, 8, 9] and r0["num_tokens"] == 3 and r1["num_tokens"] == 2
    assert (r0["finish_reason"], r1["finish_reason"]) == ("stop", "length")
    assert r0["text"] == "<think>\n2+2=4.\n</think>\n\n$\\boxed{4}$"
    assert r0["reference"] == {"answer": "4"} and r0["prompt"] == VLLM_ROWS[0]["prompt"]
    assert r0["prompt_id"] == r1["prompt_id"] == "vllm.jsonl:1"   # request_id is not an id
    path = _write_jsonl(tmp_path / "sglang.jsonl", SGLANG_ROWS)
    (r,) = _records(_all(open_traces(path)))
    assert r["format"] == "vllm" and r["finish_reason"] == "stop" and r["num_tokens"] == 7
    assert r["problem"] == "What is 9-3?" and r["text"].startswith("<think>\n9-3=6.")


def test_distill_shards_pass_through(tmp_path):
    rows = _distill_rows()
    path = _write_jsonl(tmp_path / "shard-00000-of-00001.jsonl", rows)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "summary.json").write_text("{}")
    ts = open_traces(str(tmp_path))                  # the sidecar files are not traces
    assert ts.format == "distill" and ts.files == [path]
    assert _records(_all(ts)) == rows


def test_every_record_satisfies_make_sample(tmp_path):
    _openr1_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.json").write_text(json.dumps(STRATOS_ROWS))
    paths = {"openr1": str(tmp_path / "a.parquet"), "sharegpt": str(tmp_path / "b.json"),
             "messages": _write_jsonl(tmp_path / "c.jsonl", MOT_ROWS),
             "vllm": _write_jsonl(tmp_path / "d.jsonl", VLLM_ROWS + SGLANG_ROWS),
             "distill": _write_jsonl(tmp_path / "e.jsonl", _distill_rows(1))}
    for fmt, path in paths.items():
        ts = open_traces(path)
        assert ts.format == fmt
        pairs = _records_with_where(ts)
        assert pairs
        for where, r in pairs:
            make_sample(r, where)
            if fmt != "distill":
                assert isinstance(r["prompt_id"], str) and isinstance(r["labels"], dict)


def _records_with_where(ts):
    return [(w, r) for w, r in ts.records() if not isinstance(r, Malformed)]


# ---------------------------------------------------------------- ids, units

def test_ids_stable_and_unique(tmp_path):
    _openr1_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.json").write_text(json.dumps(STRATOS_ROWS))
    _write_jsonl(tmp_path / "c.jsonl", MOT_ROWS * 3)
    for name in ("a.parquet", "b.json", "c.jsonl"):
        def keys():
            return [(r["prompt_id"], r["sample_index"])
                    for _, r in _records_with_where(open_traces(str(tmp_path / name)))]
        first = keys()
        assert first == keys()
        assert len(set(first)) == len(first) > 0


def test_jsonl_units_read_the_same_records(tmp_path):
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": "x" * rng.randint(0, 300)}]}
            for i in range(40)]
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(7, "")                              # blank lines count as lines
    lines.insert(20, "{not json")
    path.write_text("\n".join(lines) + "\n")
    whole = open_traces(str(path))
    assert len(whole.units) == 1
    expected = _all(whole)
    assert len(_records(expected)) == 40 and len(_malformed(expected)) == 1
    for size in (1, 100, 777, 5000):
        split = open_traces(str(path), max_unit_bytes=size)
        assert _all(split) == expected
        keys = [u.key for u in split.units]
        assert len(set(keys)) == len(keys)
        assert split.units[0].start == 0 and split.units[-1].stop == os.path.getsize(path)
        assert all(a.stop == b.start for a, b in zip(split.units, split.units[1:]))
        if size == 1:                                # one line per unit
            assert len(split.units) == len(lines)
    unit = open_traces(str(path), max_unit_bytes=1).units[30]
    (where, _), = list(unit.records())
    assert where == f"{path}:31" and unit.key == f"m.jsonl:bytes={unit.start}-{unit.stop}"


def test_split_jsonl_matches_line_starts(tmp_path):
    rng = random.Random(1)
    data = b"".join(b"a" * rng.randint(0, 50) + b"\n" for _ in range(300)) + b"tail"
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    for size in (1, 7, 64, 1000, 10 ** 6):
        units = traces._split_jsonl(str(path), size)
        assert units[0][0] == 0 and units[-1][1] == len(data)
        for (start, stop, line), nxt in zip(units, units[1:] + [None]):
            assert start in starts and line == starts.index(start) + 1
            assert stop - start >= min(size, len(data) - start) or nxt is None
            if nxt is not None:
                assert nxt[0] == stop


# ---------------------------------------------------------------- paths and detection

def test_paths_directory_glob_and_list(tmp_path):
    (tmp_path / "sub").mkdir()
    a = _write_jsonl(tmp_path / "sub" / "a.jsonl", MOT_ROWS)
    b = _write_jsonl(tmp_path / "sub" / "b.jsonl", MOT_ROWS)
    (tmp_path / "sub" / "notes.txt").write_text("not traces")
    assert open_traces(str(tmp_path / "sub")).files == [a, b]
    assert open_traces(str(tmp_path / "sub"), pattern="b*.jsonl").files == [b]
    ts = open_traces(str(tmp_path / "s*" / "*.jsonl"))
    assert ts.files == [a, b] and ts.units[0].key.startswith("sub/a.jsonl:")
    assert open_traces(f"{b}, {a}").files == [b, a]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        open_traces(str(tmp_path / "nothing-here"))
    with pytest.raises(FileNotFoundError, match=r"\*\.parquet"):
        open_traces(str(tmp_path / "sub" / "*.parquet"))
    with pytest.raises(ValueError, match="unsupported file type"):
        open_traces(str(tmp_path / "sub" / "*.txt"))


def test_auto_detection_error_names_fields_and_formats(tmp_path):
    path = _write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(ValueError) as e:
        open_traces(path)
    msg = str(e.value)
    assert "odd.jsonl" in msg and "'question', 'response'" in msg
    for fmt, key in (("openr1", "generations"), ("sharegpt", "conversations"),
                     ("messages", "messages"), ("vllm", "outputs"), ("distill", "prompt_id")):
        assert f"{fmt} (" in msg and key in msg
    # A file with other column names, read through a mapping.
    path2 = _write_jsonl(tmp_path / "mapped.jsonl",
                         [{"question": "q", "responses": ["a</think>b"], "gold": "b",
                           "domain": "code", "dataset": "mine", "qid": 17}])
    (r,) = _records(_all(open_traces(path2, fields={
        "problem": "question", "generations": "responses", "answer": "gold", "kind": "domain",
        "source": "dataset", "id": "qid"})))
    assert (r["format"], r["problem"], r["reference"], r["kind"], r["source"], r["prompt_id"]) \
        == ("openr1", "q", {"answer": "b"}, "code", "mine", "17")


def test_bad_config(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", MOT_ROWS)
    with pytest.raises(ValueError, match="known: auto, distill, openr1, sharegpt, messages, vllm"):
        open_traces(path, format="alpaca")
    with pytest.raises(ValueError, match="unknown field name.*'prolbem'"):
        open_traces(path, fields={"prolbem": "question"})
    with pytest.raises(ValueError, match="unknown field name.*'generations'.*'messages'"):
        open_traces(path, fields={"generations": "x"})
    with pytest.raises(ValueError, match="none of openr1's key fields"):
        open_traces(path, format="openr1")


def test_malformed_rows_are_named_not_raised(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(MOT_ROWS[0])
    path.write_text("\n".join([good, "{\"messages\": [", "[1, 2]", good,
                               json.dumps({"messages": [{"role": "user", "content": "q"}]}),
                               json.dumps({"messages": [{"role": "robot", "content": "q"}]})])
                    + "\n")
    items = _all(open_traces(str(path), format="messages"))
    assert len(_records(items)) == 2
    bad = {m.where: m for m in _malformed(items)}
    assert set(bad) == {f"{path}:{n}" for n in (2, 3, 5, 6)}
    assert bad[f"{path}:2"].error.startswith("malformed JSON")
    assert bad[f"{path}:2"].line == "{\"messages\": ["
    assert "expected a JSON object" in bad[f"{path}:3"].error
    assert "no assistant turn" in bad[f"{path}:5"].error
    assert "'robot'" in bad[f"{path}:6"].error and "robot" in bad[f"{path}:6"].line


def test_json_file_in_json_lines(tmp_path):
    path = _write_jsonl(tmp_path / "hf_to_json.json", MOT_ROWS)   # what Dataset.to_json writes
    ts = open_traces(path)
    assert ts.format == "messages" and ts.units[0].container == "jsonl"
    assert [w for w, _ in ts.records()] == [f"{path}:1", f"{path}:2"]


def test_units_pickle(tmp_path):
    import pickle
    _openr1_parquet(tmp_path / "a.parquet")
    unit = open_traces(str(tmp_path / "a.parquet")).units[0]
    again = pickle.loads(pickle.dumps(unit))
    assert again.key == unit.key and list(again.records()) == list(unit.records())
