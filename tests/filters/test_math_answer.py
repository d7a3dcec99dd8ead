"""Answer extraction and equivalence, on real GSM8K / MATH-500 and on the policy cases."""
import json
import os
import random
import threading
import time

import pytest

from distill_jax.data.prompts import gsm8k_gold
from distill_jax.filters import extract_answer, math_equal
from distill_jax.filters import math_answer
from distill_jax.filters.math_answer import (LatexConversionError, SymbolicWorkerError,
                                             latex_to_sympy, math_verify_equal)


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_gsm8k_reference_answers_match_their_gold_and_not_others(shared_data):
    rows = _rows(os.path.join(shared_data, "gsm8k_test.jsonl"))
    assert len(rows) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in rows]
    own = [math_equal(g, extract_answer(r["answer"])) for g, r in zip(golds, rows)]
    assert sum(own) == 1319
    # Against a different problem's answer: the next one with a different value.
    wrong_pairs = 0
    for k, r in enumerate(rows):
        other = next(golds[(k + d) % len(rows)] for d in range(1, len(rows))
                     if float(golds[(k + d) % len(rows)]) != float(golds[k]))
        assert not math_equal(other, extract_answer(r["answer"])), (k, other)
        wrong_pairs += 1
    assert wrong_pairs == 1319


def test_math500_boxed_answers_match_answer_field(shared_data):
    rows = _rows(os.path.join(shared_data, "math500_test.jsonl"))
    assert len(rows) == 500
    failures = [(r["unique_id"], r["answer"], extract_answer(r["solution"])) for r in rows
                if not math_equal(r["answer"], extract_answer(r["solution"]))]
    print(f"MATH-500: {500 - len(failures)}/500 equal; failures:")
    for f in failures:
        print("  ", f)
    assert not failures
    # No answer of another problem verifies: each reference against the gold answers of
    # eight random problems whose answer is another value.
    rng = random.Random(0)
    golds = [r["answer"] for r in rows]
    judged_equal = []
    for k, ref in enumerate(extract_answer(r["solution"]) for r in rows):
        others = [j for j in range(500) if not _same_value(golds[j], golds[k])]
        judged_equal += [(golds[j], ref) for j in rng.sample(others, 8)
                         if math_equal(golds[j], ref)]
    assert judged_equal == []


def _same_value(a, b):
    """Two answers that are plainly one value: the same text, or `x=5` and `5`."""
    strip = lambda s: s.replace(" ", "").split("=")[-1]  # noqa: E731
    return strip(a) == strip(b)


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
     "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("nested \\boxed{\\{1, \\{2\\}\\}} done", "\\{1, \\{2\\}\\}"),
    ("\\fbox{42}", "42"),
    ("$\\boxed 5$", "5"),
    ("She pays 3*4=<<3*4=12>>12.\n#### 12", "12"),
    ("Therefore, the final answer is $\\frac{3}{4}$. Done", "\\frac{3}{4}"),
    ("The answer is 17.", "17"),
    ("<think>maybe \\boxed{3}</think>\nSo the result is \\boxed{4}.", "4"),
    ("<think>I think \\boxed{3}</think>\nI am not sure.", "3"),
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# (gold, prediction, equal) — the policy of math_answer's docstring, case by case.
POLICY = [
    ("72", "72", True), ("72", "72.0", True), ("72", "73", False), ("1,000", "1000", True),
    ("10,\\!080", "10080", True), ("\\$32,\\!348", "32348", True), ("-5", "-5", True),
    ("-5", "5", False), ("\\frac{3}{2}", "1.5", True), ("\\dfrac{3}{2}", "3/2", True),
    ("\\frac43", "\\frac{4}{3}", True), ("1\\frac{4}{5}", "9/5", True), ("1/3", "0.3333", False),
    ("1/3", "0.33333333", True), ("50\\%", "50", True), ("50\\%", "0.5", True),
    ("90^\\circ", "90", True), ("90^{\\circ}", "90 degrees", True),
    ("5.4 \\text{ cents}", "5.4", True), ("864 \\mbox{ inches}^2", "864", True),
    ("1.2\\times10^{5}", "120000", True), ("1.2e5", "120000", True), ("3e-2", "0.03", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}", True),
    ("\\pi", "3.14159265358979", True), ("2\\pi", "\\pi", False), ("6 - 5i", "6-5i", True),
    ("6-5i", "6+5i", False), ("x=5", "5", True), ("5", "x = 5", True),
    ("y = 2x + 3", "y=3+2x", True), ("y = 2x + 3", "y = 2x - 3", False),
    ("x^3+3x-6", "3x+x^3-6", True), ("(a+5)(b+2)", "ab+2a+5b+10", True), ("2k+2", "2(k+1)", True),
    ("e^2", "\\exp(2)", True), ("\\text{(C)}", "C", True), ("(B)", "C", False),
    ("\\text{Evelyn}", "Evelyn", True), ("Evelyn", "Navin", False),
    ("(3,4]", "(3,4]", True), ("(3,4]", "(3,4)", False), ("(1,-2)", "(1, -2)", True),
    ("(1,-2)", "(-2,1)", False), ("1,-2", "-2,1", True), ("(1,2)", "1, 2", True),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1-\\sqrt5, 1+\\sqrt{5}", True),
    ("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt2,3+2\\sqrt2", True), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}", False),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", True),
    ("x \\in [-2,7]", "[-2,7]", True), ("[-2,7]", "[-2,8]", False),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
     "\\begin{bmatrix} 1 & 0 \\\\ 0 & 2 \\end{bmatrix}", False),
    ("52_8", "52_{8}", True), ("52_8", "52", False),
    ("7", None, False), (None, "7", False), ("", "", False), ("7", "  ", False),
]


@pytest.mark.parametrize("gold,pred,equal", POLICY)
def test_math_equal_policy(gold, pred, equal):
    assert math_equal(gold, pred) is equal


def test_pathological_input_is_bounded_in_any_thread():
    results = {}

    def work():
        start = time.monotonic()
        results["equal"] = math_equal("2^{10^{10}}", "2^{10^{10}}+1", timeout_s=2.0)
        results["seconds"] = time.monotonic() - start
        # The worker was killed; the next comparison still works.
        results["after"] = math_equal("x^2-1", "(x-1)(x+1)")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert results["equal"] is False
    assert results["seconds"] < 10
    assert results["after"] is True
    # A number far beyond float range never reaches big-integer arithmetic.
    start = time.monotonic()
    assert math_equal("1e1000000000", "1") is False
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("bad", ["__import__('os').system('true')", "\\unknowncmd{1}",
                                 "a; b", "x.__class__", "lambda: 1"])
def test_latex_conversion_rejects_anything_outside_its_alphabet(bad):
    with pytest.raises(LatexConversionError):
        latex_to_sympy(bad)


def test_latex_conversion_splits_unknown_words_into_symbols():
    # A name sympy could resolve to a function becomes a product of one-letter symbols.
    assert latex_to_sympy("open(1)").split() == ["o", "p", "e", "n", "(1)"]


HUGE = 10 ** 400

# Exact where exactness is the answer: integers, fractions and terminating decimals
# compare exactly at any size, on the number path and on the sympy path alike.
EXACT = [
    ("99999999999", "100000000000", False), ("100000000000", "100,000,000,000", True),
    (str(HUGE), str(HUGE + 1), False), (str(HUGE), f"{HUGE:,}", True),
    (str(HUGE), "1e400", True), (str(HUGE), "1.0\\times10^{400}", True),
    ("-" + str(HUGE), str(HUGE), False),
    ("\\frac{" + str(HUGE) + "}{3}", "\\frac{" + str(HUGE + 1) + "}{3}", False),
    ("\\frac{" + str(HUGE) + "}{3}", "\\frac{" + str(2 * HUGE) + "}{6}", True),
    ("1" * 5000, "1" * 5000 + ".0", True), ("1" * 5000, "1" * 4999 + "2", False),
    ("1e99999", "10e99998", True), ("1e99999", "2e99999", False), ("1e-99999", "2e-99999", False),
    ("10^{400}", str(HUGE), True), ("10^{400}", str(HUGE + 1), False),
    ("10^{11}", "99999999999", False), ("10^{11}x", "99999999999x", False),
    ("0.25", "\\frac{1}{4}", True), ("0.25", "0.2500001", False), ("\\frac18", "0.125", True),
    ("\\frac18", "0.1250001", False), ("2.5", "2.4999999", False),
    ("0.3333333", "0.33333333", False), ("333333", "\\frac{1000000}{3}", False),
    ("\\sqrt{4}", "2.0", True), ("\\sqrt{4}", "2.0000001", False),
]


@pytest.mark.parametrize("gold,pred,equal", EXACT)
def test_exact_numbers_compare_exactly_at_any_size(gold, pred, equal):
    assert math_equal(gold, pred) is equal
    assert math_equal(pred, gold) is equal


# A decimal standing for a value no decimal writes exactly: right to about six digits.
APPROXIMATE = [
    ("1/3", "0.333333", True), ("1/3", "0.3333333", True), ("1/3", "0.33333334", True),
    ("1/3", "0.3333", False), ("1/3", "0.333", False), ("\\frac{2}{7}", "0.285714", True),
    ("\\frac{2}{7}", "0.2857", False), ("\\frac23", "0.666667", True),
    ("\\frac23", "0.666666", True),
    ("\\frac23", "0.67", False), ("\\frac{1000000}{3}", "333333.33", True),
    ("33\\frac{1}{3}\\%", "0.333333", True),
    ("\\pi", "3.14159", True), ("\\pi", "3.1416", False), ("\\pi", "3.14", False),
    ("\\sqrt{2}", "1.41421356", True), ("\\sqrt2", "1.4142", False),
    ("\\frac{\\sqrt{2}}{2}", "0.707107", True), ("e", "2.718282", True),
    ("12\\pi", "37.699112", True), ("12\\pi", "37.7", False), ("3.14159x", "\\pi x", True),
]


@pytest.mark.parametrize("gold,pred,equal", APPROXIMATE)
def test_decimals_approximate_only_non_terminating_values(gold, pred, equal):
    assert math_equal(gold, pred) is equal
    assert math_equal(pred, gold) is equal


@pytest.mark.parametrize("pred,equal", [
    ("12π inches per second", True), ("12π", True), ("12 π", True),
    ("12\\pi\\text{ inches per second}", True),
    ("13π inches per second", False), ("12", False),
])
def test_unicode_pi_with_units(pred, equal):
    # Raised AttributeError: `str.isalpha` let `π` into a branch whose ASCII pattern missed it.
    assert math_equal("12\\pi", pred) is equal


@pytest.mark.parametrize("gold,pred", [
    ("2\\pi r", "2πr"), ("2\\pi r", "2 r \\pi"), ("\\sqrt{2}", "√2"), ("x^2", "x²"), ("-5", "−5"),
    ("\\frac{1}{2}", "½"), ("3 \\times 4", "3×4"), ("x \\leq 3", "x≤3"),
])
def test_unicode_math_reads_as_latex(gold, pred):
    assert math_equal(gold, pred) is True


def test_math_verify_is_the_second_opinion_only_where_we_cannot_read():
    # Our LaTeX reader refuses `\log_2 8` and `\lvert x \rvert`; math-verify reads them.
    assert math_equal("3", "\\log_2 8") is True
    assert math_equal("3", "\\log_2 8", second_opinion=False) is False
    assert math_equal("4", "\\log_2 8") is False
    assert math_equal("|x|", "\\lvert x \\rvert") is True
    # Where we have a reading, ours stands: math-verify calls these equal, we do not
    # (a terminating decimal is exact).
    assert math_verify_equal("0.25", "0.2500001") is True
    assert math_equal("0.25", "0.2500001") is False


def test_math_verify_runs_bounded_from_any_thread():
    # Its own timeouts use SIGALRM, which raises outside the main thread; in our worker
    # it needs none.
    out = []
    threads = [threading.Thread(target=lambda: out.append(
        (math_verify_equal("3", "\\log_2 8"), math_equal("3", "\\log_2 8")))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [(True, True)] * 3


def test_a_missing_math_verify_is_an_environment_error(monkeypatch):
    from distill_jax.filters import sympy_worker
    monkeypatch.setattr(sympy_worker, "_MATH_VERIFY", "ModuleNotFoundError: no math_verify")
    assert sympy_worker._math_verify("$1$", "$1$") == {
        "unavailable": "ModuleNotFoundError: no math_verify"}
    monkeypatch.setattr(math_answer, "_ask", lambda request, budget: sympy_worker._reply(request))
    with pytest.raises(SymbolicWorkerError, match="math-verify cannot run"):
        math_equal("3", "\\log_2 8")
    assert math_equal("3", "\\log_2 8", second_opinion=False) is False
