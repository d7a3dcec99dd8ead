"""Benchmark readers: GPQA (shuffled options), AIME 2025 layouts, LiveCodeBench and
Codeforces stdin/stdout problems."""
import base64
import json
import pickle
import zlib

import pytest

from distill_jax.data.benchmark_formats import parse_aime, parse_code_io, parse_gpqa
from distill_jax.filters.choice import extract_choice
from distill_jax.filters.io_judge import io_cases_from_reference

WHERE = "gpqa.jsonl:1"


def gpqa_row(k: int, with_id: bool = True) -> dict:
    row = {"Question": f"  Question number {k}?  ", "Correct Answer": f" right {k} ",
           "Incorrect Answer 1": f"wrong {k}a", "Incorrect Answer 2": f"wrong {k}b",
           "Incorrect Answer 3": f"wrong {k}c", "Subdomain": "Physics"}
    if with_id:
        row["Record ID"] = f"rec{k:04d}"
    return row


def test_gpqa_row_to_prompt():
    p = parse_gpqa(gpqa_row(7), WHERE, "gpqa_diamond", 1)
    assert p.id == "rec0007" and p.kind == "choice" and p.source == "gpqa_diamond"
    options, letter = p.reference["options"], p.reference["answer"]
    assert sorted(options) == ["right 7", "wrong 7a", "wrong 7b", "wrong 7c"]   # stripped
    assert options["ABCD".index(letter)] == "right 7"     # the letter points at the answer
    lines = p.problem.split("\n")
    assert lines[0] == "Question number 7?" and lines[1] == ""
    assert lines[2:] == [f"({L}) {o}" for L, o in zip("ABCD", options)]
    # A response choosing the correct letter, or the correct text, is read as that letter.
    assert extract_choice(f"</think>\n\\boxed{{{letter}}}", options) == letter
    assert extract_choice("</think>\nThe answer is right 7.", options) == letter


def test_gpqa_shuffle_is_fixed_per_seed_and_id_and_varies_across_ids():
    rows = [gpqa_row(k) for k in range(20)]
    first = [parse_gpqa(r, WHERE, "g", k + 1) for k, r in enumerate(rows)]
    # Same seed and id: same order, whatever the line number (file order, batch).
    again = [parse_gpqa(r, WHERE, "g", 100 + k) for k, r in enumerate(reversed(rows))][::-1]
    assert [p.reference for p in first] == [p.reference for p in again]
    assert [p.problem for p in first] == [p.problem for p in again]
    letters = [p.reference["answer"] for p in first]
    assert len(set(letters)) > 1                      # the correct letter is not always A
    assert len({tuple(p.reference["options"]) for p in first}) == 20
    for p, r in zip(first, rows):
        assert p.reference["options"]["ABCD".index(p.reference["answer"])] == \
            r["Correct Answer"].strip()
    # Another seed: another fixed order for some problem.
    other = [parse_gpqa(r, WHERE, "g", k + 1, seed=1) for k, r in enumerate(rows)]
    assert [p.reference["answer"] for p in other] != letters
    assert other == [parse_gpqa(r, WHERE, "g", k + 1, seed=1) for k, r in enumerate(rows)]


def test_gpqa_id_falls_back_to_the_line():
    p = parse_gpqa(gpqa_row(3, with_id=False), WHERE, "gpqa_diamond", 5)
    assert p.id == "gpqa_diamond-4"


@pytest.mark.parametrize("field", ["Question", "Correct Answer", "Incorrect Answer 1",
                                   "Incorrect Answer 3"])
def test_gpqa_missing_field_is_named(field):
    row = gpqa_row(1)
    del row[field]
    with pytest.raises(ValueError, match=repr(field).replace("(", r"\(")):
        parse_gpqa(row, WHERE, "g", 1)
    row[field] = "   "
    with pytest.raises(ValueError, match="empty"):
        parse_gpqa(row, WHERE, "g", 1)


def test_aime_layouts():
    # MathArena-style: problem_idx, problem, integer answer.
    p = parse_aime({"problem_idx": 3, "problem": " Find x. ", "answer": 70}, "a:1", "aime25", 1)
    assert (p.id, p.problem, p.kind, p.reference) == ("3", "Find x.", "math", {"answer": "70"})
    # question / answer as text, no id: the line.
    p = parse_aime({"question": "Find y.", "answer": "588"}, "a:4", "aime2025", 4)
    assert (p.id, p.problem, p.reference["answer"]) == ("aime2025-3", "Find y.", "588")
    p = parse_aime({"ID": "2025-I-1", "problem": "Q", "answer": "9"}, "a:1", "s", 1)
    assert p.id == "2025-I-1"
    p = parse_aime({"id": 0, "problem": "Q", "answer": "9"}, "a:1", "s", 1)
    assert p.id == "0"
    with pytest.raises(ValueError, match="'problem'.*'question'"):
        parse_aime({"answer": "1"}, "a:1", "s", 1)
    with pytest.raises(ValueError, match="'answer'"):
        parse_aime({"problem": "Q"}, "a:1", "s", 1)


def _lcb_private(cases):
    """LiveCodeBench's compressed private tests: base64(zlib(pickle(json text)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_livecodebench_row():
    public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]
    row = {"question_title": "Sum", "question_content": "Read a and b; print a+b.",
           "platform": "atcoder", "question_id": "abc001_a", "contest_id": "abc001",
           "starter_code": "", "difficulty": "easy",
           "public_test_cases": json.dumps(public), "private_test_cases": json.dumps(private),
           "metadata": "{}"}
    p = parse_code_io(row, "lcb:1", "lcb", 1)
    assert (p.id, p.kind, p.problem) == ("abc001_a", "code", "Read a and b; print a+b.")
    assert set(p.reference) == {"public_test_cases", "private_test_cases"}
    assert io_cases_from_reference(p.reference) == [{"input": "1 2\n", "output": "3\n"},
                                                    {"input": "5 5\n", "output": "10\n"}]
    row["private_test_cases"] = _lcb_private(private)           # the compressed form
    p = parse_code_io(row, "lcb:1", "lcb", 1)
    assert len(io_cases_from_reference(p.reference)) == 2


def test_codeforces_style_rows():
    row = {"contest_id": 1900, "index": "A", "description": "Print the sum.",
           "io_tests": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]}
    p = parse_code_io(row, "cf:1", "codeforces", 1)
    assert (p.id, p.problem, p.kind) == ("1900A", "Print the sum.", "code")
    assert io_cases_from_reference(p.reference) == row["io_tests"]
    # APPS-style input_output, an explicit problem_id, "statement" text.
    row = {"problem_id": "cf-1", "statement": "S",
           "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    p = parse_code_io(row, "cf:2", "cf", 2)
    assert p.id == "cf-1" and io_cases_from_reference(p.reference) == [
        {"input": "1\n", "output": "1\n"}]
    # No id at all: the line.
    p = parse_code_io({"problem": "P", "io_tests": [{"input": "", "output": "x"}]},
                      "cf:9", "cf", 9)
    assert p.id == "cf-8"


def test_code_rows_refused():
    functional = [{"input": "[1, 2]", "output": "3", "testtype": "functional"}]
    row = {"question_id": "lc1", "question_content": "class Solution: ...",
           "public_test_cases": json.dumps(functional), "private_test_cases": "[]"}
    with pytest.raises(ValueError, match="functional"):
        parse_code_io(row, "lcb:3", "lcb", 3)
    apps_fn = {"problem": "P", "input_output": json.dumps(
        {"fn_name": "f", "inputs": [[1]], "outputs": [1]})}
    with pytest.raises(ValueError, match="functional"):
        parse_code_io(apps_fn, "x:1", "x", 1)
    with pytest.raises(ValueError, match="no stdin/stdout test cases"):
        parse_code_io({"problem": "P"}, "x:1", "x", 1)
    with pytest.raises(ValueError, match="no stdin/stdout test cases"):
        parse_code_io({"problem": "P", "io_tests": []}, "x:1", "x", 1)
    with pytest.raises(ValueError, match="'question_content'"):
        parse_code_io({"io_tests": [{"input": "", "output": ""}]}, "x:1", "x", 1)
    with pytest.raises(ValueError, match="io_tests"):                  # malformed cases
        parse_code_io({"problem": "P", "io_tests": [{"input": "1"}]}, "x:1", "x", 1)


def test_gpqa_files_load_and_score_through_the_evaluation_path(tmp_path):
    """A GPQA file read by `load_prompts`, its responses judged by the correctness
    verifier and voted on: the letter counts, whichever way it is written."""
    from distill_jax.data.prompts import load_prompts
    from distill_jax.evaluation.runner import score_problem, summarize
    path = tmp_path / "gpqa_diamond.jsonl"
    path.write_text("".join(json.dumps(gpqa_row(k)) + "\n" for k in range(2)))
    prompts = load_prompts(str(path), "gpqa")
    assert "letter of your final answer" in prompts[0].user_message()
    results = []
    for p in prompts:
        right = p.reference["answer"]
        wrong = next(L for L in "ABCD" if L != right)
        text = p.reference["options"]["ABCD".index(right)]
        results.append(score_problem(p, [
            f"hmm\n</think>\n\\boxed{{{right}}}", f"x\n</think>\nThe answer is ({wrong}).",
            f"y\n</think>\nThe answer is {text}.", "no choice at all"], ["stop"] * 4))
    assert [r.correct for r in results] == [2, 2]
    assert results[0].verdicts[1:] == ["wrong_answer", "correct", "no_answer"]
    assert all(r.cons_correct for r in results)          # 2 votes for the gold letter vs 1
    assert summarize(results, ks=(1,))["pass@1"] == 0.5
