"""Quality filters, decontamination and pass@k, one behaviour per test."""
import json
import math
import os

import pytest

from distill_jax.evaluation.metrics import pass_at_k
from distill_jax.filters import decontaminate, text_quality, verify
from distill_jax.filters.sample import make_sample

PROMPT = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"


def sample(text, problem="How many apples are there?", kind="math", finish="stop", **extra):
    record = {"prompt_id": "p", "sample_index": 0, "text": text, "finish_reason": finish,
              "problem": problem, "kind": kind, "prompt": PROMPT, "reference": {"answer": "7"}}
    record.update(extra)
    return make_sample(record, "test.jsonl:1")


def test_sample_puts_back_the_assistant_prefix():
    s = sample("reasoning\n</think>\n\\boxed{7}")
    assert s.response == "<think>\nreasoning\n</think>\n\\boxed{7}"
    assert s.reasoning == "\nreasoning\n" and s.answer == "\n\\boxed{7}"
    explicit = sample("x</think>y", assistant_prefix="")
    assert explicit.response == "x</think>y"
    with pytest.raises(KeyError, match="finish_reason"):
        make_sample({"prompt_id": "p", "sample_index": 0, "text": "t"}, "f:1")
    with pytest.raises(TypeError, match="sample_index"):
        make_sample({"prompt_id": "p", "sample_index": "0", "text": "t", "finish_reason": "stop"},
                    "f:1")


@pytest.mark.parametrize("text,kind,reason", [
    ("fine\n</think>\n\\boxed{7}", "math", ""),
    ("never closed \\boxed{7}", "math", "missing_think_close"),
    ("a</think>b<think>c</think>\\boxed{7}", "math", "multiple_think_blocks"),
    ("   \n</think>\n\\boxed{7}", "math", "empty_reasoning"),
    ("thinking\n</think>\n   ", "math", "empty_answer"),
    ("thinking\n</think>\nseven apples", "math", "no_final_answer"),
    ("thinking\n</think>\n```python\ndef f():\n    pass\n```", "code", ""),
    ("thinking\n</think>\ndef f(): pass", "code", "no_code_block"),
])
def test_think_format(text, kind, reason):
    v = text_quality.ThinkFormat()(sample(text, kind=kind))
    assert v.accepted == (reason == "") and v.reason == reason
    no_prefix = text_quality.ThinkFormat()(sample("x\n</think>\n\\boxed{7}", assistant_prefix=""))
    assert no_prefix.reason == "missing_think_open"


def test_truncated_and_length():
    assert text_quality.Truncated()(sample("a", finish="length")).reason == "truncated"
    assert text_quality.Truncated()(sample("a", finish="stop")).accepted
    f = text_quality.Length(min_tokens=3, max_tokens=5)
    assert f(sample("a", num_tokens=2)).reason == "too_short"
    assert f(sample("a", num_tokens=6)).reason == "too_long"
    assert f(sample("a", num_tokens=4)).accepted
    assert f(sample("one two three four")).accepted        # no token count: words


def test_language_mixing():
    f = text_quality.Language(max_foreign_fraction=0.02)
    english = "First we count the apples on the table, then we add the new ones."
    assert f(sample(english + "\n</think>\n\\boxed{7}")).accepted
    mixed = english + " 所以我们得到七个苹果。" + "\n</think>\n\\boxed{7}"
    v = f(sample(mixed))
    assert v.reason == "mixed_language" and "CJK in a LATIN prompt" in v.detail
    # Math notation and Greek letters are not a language switch.
    assert f(sample("Let $\\alpha = \\frac{x}{y}$ and θ = π/2, so the angle is right."
                    "\n</think>\n\\boxed{7}")).accepted
    chinese = sample("我们先数苹果，三个加四个等于七个。设 x 为苹果数。\n</think>\n\\boxed{7}",
                     problem="桌子上有多少个苹果？")
    assert f(chinese).accepted
    assert f(sample("We count three and four apples, which is seven in total.\n</think>\n"
                    "\\boxed{7}", problem="桌子上有多少个苹果？")).reason == "mixed_language"


def test_repetition():
    f = text_quality.Repetition()
    normal = " ".join(f"Step {k}: add {k} apples to the basket of size {k * 3}." for k in range(30))
    assert f(sample(normal + "\n</think>\n\\boxed{7}")).accepted
    loop_tail = "We count. " + "Wait, let me recount. " * 6
    assert f(sample(loop_tail)).reason == "looping_tail"
    repeated = ("I will check the sum of the apples once more to be sure. " * 8
                + "\n</think>\n\\boxed{7}")
    assert f(sample(repeated)).reason == "repeated_ngrams"


def test_readability():
    f = text_quality.Readability(max_paragraph_chars=100)
    assert f(sample("short.\n\nalso short.\n</think>\n\\boxed{7}")).accepted
    assert f(sample("x" * 150 + "\n</think>\n\\boxed{7}")).reason == "overlong_paragraph"
    code = "Let me compute:\n```python\nprint(3+4)\n```\n</think>\n\\boxed{7}"
    assert f(sample(code)).reason == "code_in_reasoning"
    assert f(sample(code, kind="code")).accepted


def test_decontamination_index(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"q": "Natalia sold clips to 48 of her friends in April and then "
                                     "she sold half as many clips in May."}) + "\n"
                    + json.dumps({"q": "Compute 7 times 8."}) + "\n")
    index = decontaminate.load_eval_index([f"{path}:q"], data_dir="", n=8)
    f = decontaminate.Decontaminate(index)
    hit = f(sample("x", problem="NATALIA sold clips to 48 of her friends in April, how many?"))
    assert hit.reason == "contaminated_eval" and "natalia sold clips to 48 of her friends" in hit.detail
    assert f(sample("x", problem="Natalia sold clips to 47 of her friends in April.")).accepted
    # Shorter than n words: the whole text is one gram.
    assert not f(sample("x", problem="Please compute 7 times 8. Show work.")).accepted
    assert f(sample("x", problem="Please compute 7 times 9.")).accepted
    with pytest.raises(ValueError, match="unknown evaluation set"):
        decontaminate.load_eval_index(["nope"], data_dir="")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "fine"}\n{oops\n')
    with pytest.raises(ValueError, match=f"{bad}:2"):
        decontaminate.load_eval_index([f"{bad}:q"], data_dir="")


def test_builtin_eval_sets_catch_their_own_problems(shared_data):
    index = decontaminate.load_eval_index(list(decontaminate.BUILTIN_EVAL_SETS), str(shared_data))
    f = decontaminate.Decontaminate(index)
    for name, (filename, field) in decontaminate.BUILTIN_EVAL_SETS.items():
        with open(os.path.join(shared_data, filename)) as fh:
            rows = [json.loads(line) for line in fh]
        caught = sum(not f(sample("x", problem=r[field])).accepted for r in rows)
        assert caught == len(rows), name
    # GSM8K train problems are not test problems, but share stock phrases with them.
    with open(os.path.join(shared_data, "gsm8k_train.jsonl")) as fh:
        train = [json.loads(line)["question"] for line in fh]
    strict = sum(not f(sample("x", problem=q)).accepted for q in train)
    assert strict == 94                     # the number the module docstring states
    lenient = decontaminate.Decontaminate(index, min_overlap_fraction=0.25)
    flagged = [q for q in train if not lenient(sample("x", problem=q)).accepted]
    assert len(flagged) == 3


def test_correctness_gold_unparseable_is_a_rejection_not_a_crash():
    c = verify.Correctness()
    for gold in ("", None, "\\frac{1}{2"):
        s = sample("r\n</think>\n\\boxed{7}", reference={"answer": gold})
        v = c(s)
        assert not v.accepted and v.reason == "gold_unparseable"
    assert c(sample("r\n</think>\n\\boxed{7}")).accepted
    assert c(sample("r\n</think>\n\\boxed{8}")).reason == "wrong_answer"
    assert c(sample("r\n</think>\nno idea")).reason == "no_answer"


def test_correctness_runs_code_against_tests():
    c = verify.Correctness()
    ref = {"test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "double"}
    problem = "def double(x):\n    \"\"\"Twice x.\"\"\"\n"
    full = sample("t\n</think>\n```python\ndef double(x):\n    return 2 * x\n```", kind="code",
                  problem=problem, reference=ref)
    body_only = sample("t\n</think>\n```python\n    return x + x\n```", kind="code",
                       problem=problem, reference=ref)
    wrong = sample("t\n</think>\n```python\ndef double(x):\n    return x\n```", kind="code",
                   problem=problem, reference=ref)
    assert c(full).accepted and c(body_only).accepted
    assert c(wrong).reason == "code_failed"


def test_pass_at_k_matches_the_closed_form():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 3), (8, 7, 2), (20, 1, 20)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
