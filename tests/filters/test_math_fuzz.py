"""Fuzzing the math verifier: `math_equal` and `extract_answer` return a verdict for any
string, in bounded time.

Seeded random strings from LaTeX-ish fragments (balanced and unbalanced braces,
`\\frac`, `\\sqrt`, `\\boxed{`, unicode math, huge numbers, units, percent). Every
test runs with `math_answer.STRICT = True`, so the outer guard in `math_equal`
re-raises instead of answering "not equal": an exception anywhere inside fails
here, and the root causes fixed in math_answer.py (non-ASCII letters in
`latex_to_sympy`, unbounded recursion on nested groups, quadratic regexes and
brace scans, float overflow on huge exponents) stay fixed rather than hidden by
the guard.
"""
import random
import time

import pytest

from distill_jax.filters import extract_answer, math_answer, math_equal
from distill_jax.filters.math_answer import LatexConversionError, latex_to_sympy

TIMEOUT_S = 0.3          # sympy seconds per math_equal call (the whole call, not each check)
# A call may also pay for restarting the sympy worker after an earlier timeout.
PER_CALL_LIMIT_S = 8.0
# The in-process scans are bounded in this process's CPU seconds, not wall seconds:
# the pathologies they guard against cost 5-30 s, and CPU time does not grow when the
# suite's other workers (or anything else) share the cores, as wall time does.
SCAN_CPU_LIMIT_S = 1.0

HUGE = str(10 ** 400)
FRAGMENTS = [
    # LaTeX structure, balanced and not
    "\\frac", "\\frac{", "\\dfrac", "\\tfrac", "\\sqrt", "\\sqrt{", "\\sqrt[", "\\sqrt[3]{",
    "{", "}", "{", "}", "(", ")", "[", "]", "\\{", "\\}", "^", "_", "^{", "_{", "^2", "_8",
    "\\boxed{", "\\boxed ", "\\fbox{", "\\left(", "\\right)", "\\left[", "\\right]", "\\left.",
    "\\pi", "\\infty", "\\cdot", "\\times", "\\div", "\\pm", "\\cup", "\\in", "\\le", "\\geq",
    "\\ne", "\\circ", "^\\circ", "^{\\circ}", "\\text{", "\\text{ cm}", "\\mbox{", "\\mathrm{",
    "\\%", "%", "$", "\\$", "\\", "\\\\", "&", "\\!", "\\,", "\\quad", "\\begin{pmatrix}",
    "\\end{pmatrix}", "\\begin{bmatrix}", "\\end{bmatrix}", "\\ln", "\\sin", "\\log", "\\exp",
    "\\binom", "\\alpha", "\\theta", "\\unknown", "|", "<", ">", "=", ",", ".", ";", "!",
    # unicode math and other non-ASCII
    "π", "√", "×", "−", "≤", "≥", "∞", "²", "³", "·", "÷", "±", "½", "°", "θ", "∑", "é",
    "٣", "\u00a0", "\u200b", "😀", "\ud800",
    # numbers
    "0", "1", "2", "3", "7", "9", "12", "-", "+", "*", "/", "-1", "0.25", "3.14159", "0.3333",
    "0.333333", "1,000", "58,500", "1e5", "1.2e5", "2e-3", "1e400", "1e99999", "1.2\\times10^{5}",
    "99999999999", "100000000000", HUGE, str(10 ** 400 + 1), "0." + "3" * 60, "9" * 40, "50\\%",
    # letters, words, units, answer markers
    "x", "y", "i", "e", "E", "k", "(C)", "C", " ", " ", "\n", "inches", "per second", "cm",
    "degrees", "dollars", "meters^2", "square feet", "units", "####", "the answer is",
    "final answer:", "</think>", "<think>",
    # the forms of issue 21's families: relations, chains, joiners, decimal commas, labels
    "\\approx", "≈", "\\leqslant", "\\lt", "!=", "<=", " and ", " or ", ";", "0,111", "1000,99",
    " percent", "per cent", "\\ ", "~", "\\begin{array}{cc}", "\\end{array}", "\\hline", "|AB|",
    "f(x)", "(p,q)", "\\angle ", "**Answer:**", "Answer: ", "\\log_2", "\\lvert",
]
# Costly for sympy by design (the worker times out and restarts); a few cases only.
PATHOLOGICAL = ["2^{10^{10}}", "10^{10^{10}}", "9^{9^{9^{9}}}", "100000!", "x^{10^{9}}"]
UNITS = ["", "", "", " inches", " cm", "\\text{ cents}", " degrees", "^\\circ", "\\%",
         " inches per second", " square feet", " dollars"]


def _junk(rng, max_parts=14):
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, max_parts)))


def _number(rng):
    """A number in one of the written forms the verifier reads (or nearly)."""
    n = rng.randint(0, 10 ** rng.randint(1, 15))
    kind = rng.randrange(14)
    if kind == 0:
        text = str(n)
    elif kind == 1:
        text = str(10 ** 400 + rng.randint(-2, 2))
    elif kind == 2:
        text = f"{n}.{rng.randint(0, 10 ** 6):06d}"
    elif kind == 3:
        text = "0." + rng.choice("3678") * rng.randint(1, 12)
    elif kind == 4:
        text = f"\\frac{{{rng.randint(-20, 99)}}}{{{rng.randint(0, 30)}}}"
    elif kind == 5:
        text = f"{rng.randint(1, 99)}/{rng.randint(0, 30)}"
    elif kind == 6:
        text = f"{rng.randint(1, 9)}\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(1, 9)}}}"
    elif kind == 7:
        text = f"{n:,}"
    elif kind == 8:
        text = f"{rng.randint(1, 99) / 10}e{rng.randint(-500, 500)}"
    elif kind == 9:
        text = f"{rng.randint(1, 99) / 10}\\times10^{{{rng.randint(-5, 5)}}}"
    elif kind == 10:
        text = rng.choice(["\\pi", "π", "2\\pi", "12π", "\\sqrt{2}", "√2", "\\frac{\\sqrt3}{2}",
                           "3.14159", "3.1416", "1.41421356", "e", "0.707107", "3²", "½"])
    elif kind == 11:
        text = f"{rng.random() * 10 ** rng.randint(-8, 8):.{rng.randint(0, 12)}f}"
    elif kind == 12:
        text = repr(rng.random() * rng.choice([1, 1e-20, 1e20, 1e300]))
    else:
        text = str(rng.randint(0, 10 ** 6)) + rng.choice(["", ".", ".0", "0"])
    return rng.choice(["", "", "", "-", "+", "−"]) + text + rng.choice(UNITS)


def _mutate(rng, s):
    """`s` with one fragment inserted, one character dropped, or a character swapped."""
    if not s:
        return rng.choice(FRAGMENTS)
    k = rng.randrange(len(s) + 1)
    op = rng.randrange(3)
    if op == 0:
        return s[:k] + rng.choice(FRAGMENTS) + s[k:]
    if op == 1:
        return s[:k] + s[k + 1:]
    return s[:k] + rng.choice("0123456789{}()^\\,.-x") + s[k + 1:]


def _answer_like(rng):
    """A plausible answer: numbers and expressions in lists, tuples, sets, equations."""
    parts = [rng.choice([_number(rng), _number(rng), "x^2+1", "2x-3", "\\sqrt{x}",
                         "\\frac{x}{2}", "(x-1)(x+1)", "6-5i", _junk(rng, 3)])
             for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    body = ",".join(parts)
    wrap = rng.choice(["{}", "{}", "({})", "[{}]", "\\{{{}\\}}", "x={}", "\\boxed{{{}}}",
                       "\\begin{{pmatrix}}{}\\end{{pmatrix}}", "{}\\cup(3,4]", "\\text{{{}}}"])
    return wrap.format(body)


def _huge_cases():
    """Long inputs shaped to hit the worst case of each scan (all under 10,000 chars,
    so none is cut short by math_equal's length bound)."""
    n = 9_000

    def fill(unit, tail=""):
        return unit * ((n - len(tail)) // len(unit)) + tail

    return [
        (fill("aa ", "1"), "1"), ("1 " + fill("aa "), "1"), ("1" + fill(" ", "deg"), "1"),
        (fill(" ", "x"), "x"), (fill("1"), fill("1")[:-1] + "2"), (fill("1", "x"), "1"),
        ("0." + fill("3"), "\\frac13"), (fill("9", "e9"), "1"), (fill("{", "x"), "x"),
        (fill("\\{", "1"), "1"), (fill("\\frac{", "1"), "1"), (fill("x^{", "1"), "1"),
        (fill("\\sqrt{"), "1"), (fill("\\sqrt["), "1"), (fill("π"), "\\pi"),
        (fill("\\pi"), "1"), (fill("1,", "2"), fill("1,", "3")), (fill("x,", "y"), fill("y,", "x")),
        ("\\{" + fill("x,") + "\\}", "\\{" + fill("y,") + "\\}"), (fill("(1,2)\\cup"), "1"),
        (fill("\\text{a}"), "a"), (fill("\\text{"), "1"), (fill("\\left("), "("),
        (fill("x = "), "1"), (fill("1."), "1"), (fill(". "), "."), (fill("\\pm"), "1"),
        (fill("-"), "1"), ("1" + fill("!"), "1"), (fill("9^"), "1"), (fill("x+"), "x"),
        ("\\begin{pmatrix}" + fill("x\\\\") + "\\end{pmatrix}",
         "\\begin{pmatrix}" + fill("y\\\\") + "\\end{pmatrix}"),
        (fill("\\boxed{"), "1"), (fill("#### "), "1"), ("the answer is" + fill(" "), "1"),
        ("x" * 200_000, "x" * 200_000 + "y"), ("\\frac{" + "1" * 5000 + "}{3}", "1"),
        ("1" * 5000, "0" + "1" * 5000), ("1e" + "9" * 5000, "1"),
    ]


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setattr(math_answer, "STRICT", True)


def _check_pair(gold, pred, timings):
    start = time.monotonic()
    verdict = math_equal(gold, pred, timeout_s=TIMEOUT_S)
    seconds = time.monotonic() - start
    timings.append((seconds, gold, pred))
    assert isinstance(verdict, bool), (gold, pred, verdict)
    assert seconds < PER_CALL_LIMIT_S, (seconds, gold[:200], pred[:200])
    return verdict


def _check_extract(text):
    start = time.process_time()
    found = extract_answer(text)
    assert found is None or isinstance(found, str), (text[:200], found)
    assert time.process_time() - start < SCAN_CPU_LIMIT_S, text[:200]
    return found


def test_fuzz_random_pairs_never_raise_and_stay_bounded(strict):
    rng = random.Random(20240613)
    timings = []
    start = time.monotonic()
    pairs = []
    for _ in range(600):
        a = _junk(rng)
        pairs.append((a, rng.choice([_junk(rng), a + _junk(rng, 3), _mutate(rng, a)])))
    for _ in range(600):
        a = _answer_like(rng)
        pairs.append((a, rng.choice([_mutate(rng, a), _mutate(rng, _mutate(rng, a)), a,
                                     _answer_like(rng)])))
    for _ in range(400):
        a = _number(rng)
        pairs.append((a, rng.choice([_number(rng), _mutate(rng, a), a + rng.choice(UNITS)])))
    for gold, pred in pairs:
        _check_pair(gold, pred, timings)
        _check_extract(gold)
        _check_extract(f"<think>{pred}</think> so \\boxed{{{gold}}} or {pred}")
        _check_extract(f"{gold}\n#### {pred}")
        _check_extract(f"Thus the final answer is {pred}. {gold}")
    # Each call is bounded above; the total is printed for a person, not asserted (a
    # wall-clock total fails whenever the machine is shared).
    total = time.monotonic() - start
    slowest = max(timings)
    print(f"{len(pairs)} pairs in {total:.1f}s; slowest {slowest[0]:.2f}s: "
          f"{slowest[1][:60]!r} vs {slowest[2][:60]!r}")


def test_fuzz_numbers_are_judged_symmetrically(strict):
    # The number policy (exact, or a decimal rounding a non-terminating value) has no
    # gold/prediction side; a random pair must get the same verdict both ways.
    rng = random.Random(7)
    for _ in range(600):
        a = _number(rng)
        b = rng.choice([_number(rng), _mutate(rng, a), a])
        forward = math_equal(a, b, timeout_s=TIMEOUT_S)
        assert forward is math_equal(b, a, timeout_s=TIMEOUT_S), (a, b, forward)


def test_fuzz_huge_and_deep_inputs_stay_bounded(strict):
    timings = []
    for gold, pred in _huge_cases():
        _check_pair(gold, pred, timings)
        _check_pair(pred, gold, timings)
        for text in (gold, "\\boxed{" + gold, f"<think>{gold}</think>{pred}",
                     f"the answer is {gold}", f"#### {gold}"):
            _check_extract(text)
    # Non-str inputs of the string-like kind are answers too.
    assert math_equal(12, "12") is True
    assert extract_answer(None) is None


@pytest.mark.parametrize("text", [
    "aa " * 10_000 + "1",            # unit words: the whole tail re-read per split
    "1" + " " * 30_000 + "x",         # trailing "degrees": a leading \s* tried at every space
    "1" * 30_000 + "x",              # scientific notation: ambiguous mantissa digits
    "\\boxed{" * 4_000,               # every unclosed \boxed{ scanned to the end
    "the answer is x" + " " * 30_000 + "y", "the answer is correct " * 5_000,
    "Answer: " * 10_000,
    "\\text{a}" * 4_000, "π" * 30_000, "\\pi r " * 5_000,
])
def test_scans_are_linear_on_long_inputs(text):
    # The internals, not math_equal (whose 10,000-character bound would hide a quadratic
    # scan at this size): each of these took 5-30 s at 30,000 characters before.
    for scan in (math_answer._normalize, math_answer._to_number, extract_answer,
                 lambda t: extract_answer("\\boxed{" + t), _convert_or_none):
        start = time.process_time()
        scan(text)
        assert time.process_time() - start < SCAN_CPU_LIMIT_S, (scan, text[:40])


def _convert_or_none(text):
    try:
        return latex_to_sympy(text)
    except LatexConversionError:
        return None


def test_pathological_sympy_inputs_cost_at_most_the_limit(strict):
    for expr in PATHOLOGICAL:
        timings = []
        assert _check_pair(expr, expr + "+1", timings) is False
        assert timings[0][0] < PER_CALL_LIMIT_S
    # The worker came back from its timeouts.
    assert math_equal("x^2-1", "(x-1)(x+1)") is True


def test_latex_conversion_fails_only_with_its_own_error():
    # latex_to_sympy's contract: a safe string or LatexConversionError, nothing else
    # (it raised AttributeError on `π`, RecursionError on deep nesting).
    rng = random.Random(11)
    converted = 0
    texts = [_junk(rng) for _ in range(3000)] + [_answer_like(rng) for _ in range(1000)]
    texts += ["\\frac{" * 3000 + "1", "{" * 3000 + "}" * 3000, "x^{" * 3000, "πr", "12π"]
    for text in texts:
        try:
            out = latex_to_sympy(text)
        except LatexConversionError:
            continue
        assert isinstance(out, str)
        converted += 1
    assert converted > 100       # not vacuous: many reach the sympy side


def test_outer_guard_turns_an_internal_error_into_not_equal(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug not found yet")

    monkeypatch.setattr(math_answer, "_to_number", broken)
    monkeypatch.setattr(math_answer, "STRICT", False)
    assert math_equal("1", "2") is False
    monkeypatch.setattr(math_answer, "STRICT", True)
    with pytest.raises(KeyError):
        math_equal("1", "2")
