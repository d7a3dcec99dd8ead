"""Final-answer extraction and equivalence for math problems.

`extract_answer(text)` finds what a solution claims as its final answer;
`math_equal(gold, pred)` decides whether two answers are the same. Both return a
verdict for any string (None, empty, huge, unbalanced, unicode, junk) and never
raise on their input (see "Robustness" below).

Extraction (math_extract.py), in order of preference:
  1. the text after the last `</think>` (R1 traces: the summary after the
     reasoning is the answer); if it states none, a box inside the reasoning
     (a sentence there may be a hypothesis the model went on to reject).
     Reasoning that never closes (`<think>` without `</think>`: a truncated
     trace) states only what it boxes.
  2. the last `\\boxed{...}` / `\\fbox{...}` (nested braces), with the boxes just
     before it joined by "and" or commas (`$\\boxed{2}$ and $\\boxed{5}$` states
     `2, 5`; boxes joined by "or" are two forms of one answer: the last counts);
     else the last GSM8K `#### x`; else the last stated answer: "the (final)
     answer is X", "Final Answer: X", "Answer: X", "**Answer:** X", or a
     "**Final Answer**" heading over the answer's line. The last one wins; the
     wrapper words, emphasis, `$` delimiters and what follows the claim's
     sentence or explains it ("Final Answer: The final answer is $X$. I hope
     it is correct." states X; "3, since 2+1 = 3" states 3) are not part of
     it; a remark ("the answer is correct"), a question, or a hypothesis ("let
     me check whether the answer is 12") states nothing.

Equivalence policy (the choices a grader has to make, made once):
  * Cosmetics never matter: `$`, `\\left`/`\\right`, spacing commands (`\\!`,
    `\\,`, `\\quad`, ...), `\\dfrac`/`\\tfrac`, `\\text{}`/`\\mbox{}` wrappers,
    thousands separators (`10,\\!080`, `58,500`: comma groups of exactly three
    digits after a first group of one to three not starting with 0), a trailing
    period, `\\$`, stray LaTeX (`\\ ` and `~` spaces, a trailing `\\`). Unicode
    math is read as its LaTeX: `π` `√` `×` `·` `÷` `−` `≤` `≥` `≠` `≈` `∞` `±`
    `∪` `∈` `½` `²` ..., so `12π` == `12\\pi`.
    Markup with a meaning is read: `\\mp` is `\\pm`, `\\langle 1,2 \\rangle` is
    `(1,2)`, `x \\equiv 12 \\pmod{13}` states 12, `\\mathbb{R}` is `(-\\infty,
    \\infty)`; `vmatrix` is a determinant, not a matrix.
  * Commas in numbers are read on the answer as written: a comma followed by a
    space always separates answers (`0, 25` is two answers, `1, 100` too).
    Decimal commas are read where nothing else can be meant: a single comma
    after `0` or after four or more digits, followed by two or more digits
    (`0,111` == `0.111`, `1000,99` == `1000.99`). `1,5`, `12,5` and `0,1` may be
    lists of two answers (MATH writes "all solutions" that way) and are lists;
    `1,000` is a thousand.
  * Units are dropped when what is left is a number or a constant expression:
    `5.4 \\text{ cents}` == `5.4`; `12π inches per second` == `12\\pi` (up to
    five unit words); `90^\\circ` == `90` (degrees are never converted to
    radians). Words that change the value are no units (`7 times`, `1.5
    million`, `3 dozen`, `20\\% decrease`), two letters are a unit only when
    they are a known one (`5 cm`; `3 ab` is a product), and nothing is dropped
    after an expression in variables (`x^2 + 2 xy`).
  * A word of three or more letters is text, compared without case
    (`\\text{Evelyn}` == `Evelyn`, `No` == `no`, `east` != `seat`: not a
    product of letters).
  * Percent: `50\\%` == `50`, and also == `0.5` (a percent sign on one side
    only may mean either); the words "percent", "per cent", "pct" are a `%`.
  * Numbers -- exact where exactness is the answer:
      - integers, fractions (`\\frac{3}{2}`, `3/2`, `1\\frac{1}{2}`) and
        terminating decimals as written (`1.5`, `0.25`, `1.2\\times10^{5}`) are
        exact values and compare exactly, at any size:
        `99999999999` != `100000000000`, `0.25` == `\\frac14` != `0.2500001`,
        `10^{400}` written out != the same plus one. Two decimals are both
        exact (`0.3333333` != `0.33333333`), and an integer never stands for an
        approximation (`333333` != `\\frac{1000000}{3}`).
      - a decimal (written with a point or an exponent) may stand for a value
        whose expansion does not terminate -- a fraction such as `1/3` or
        `2/7`, or an irrational such as `\\pi` or `\\sqrt{2}` -- on either side.
        It equals that value when it is right to about six significant
        digits: relative error at most 1e-6, or at least six significant
        digits written and off by less than one unit in the last digit
        (rounded or truncated): `0.333333` == `0.33333334` == `1/3` !=
        `0.3333`; `3.14159` == `\\pi` != `3.1416`; `0.707107` ==
        `\\frac{\\sqrt2}{2}`.
      - whether a symbolic value (`\\sqrt{4}`, `\\pi`) is rational is what
        sympy's automatic simplification says.
      - decimals with more than 4,000 digits or exponents beyond +-10,000 are
        compared by their written digits and exponent only.
  * Chains and annotations: `x = 5+5+1 = 11` states its last side, `11`; a
    computation `5+5+1 = 11` (an operator and no letters on the left) states
    its right side; `a \\approx b` states a, and its rounding b (a decimal)
    counts against a decimal answer when a rounds to it, or where a names
    rather than computes: `\\frac{22}{7} \\approx 3.14` == `\\frac{22}{7}` and
    == `3.14`; `x \\approx 3.14159` == `\\pi`; but `5\\sqrt{2} \\approx 7` != `7`
    (it states 5\\sqrt{2}), `\\frac{7}{3} \\approx 2.5` != `2.5` (a wrong
    rounding), `\\approx 3` != `3`.
  * Labelled values: `label = value` == `value` in either order of the sides,
    where a label names rather than computes (`x`, `a_n`, `AB`, `|AB|`,
    `m\\angle A`, `f(x)`, `f^{-1}(3)`, `(p,q)`): `(p,q) = (3,2)` == `(3,2)`,
    `2 = x` == `2`; `x \\in [-2,7]` == `[-2,7]`. An equation to solve states no
    value: `2x = 6` != `3`, `\\log_2 x = 3` != `3`.
  * Equations: the same equation written another way or scaled by a nonzero
    constant is equal (`y = 2x + 3` == `2x - y + 3 = 0`, `2x + 4y = 6` == `x +
    2y = 3`, `x = 2` == `2 = x`); checked as a constant ratio of the two sides'
    differences at random points. `x = 2` != `y = 2`.
  * Relations describe sets of reals, compared as sets when they have one
    variable: `x \\geq 5` == `5 \\leq x` == `[5, \\infty)`, `-x > -1` == `x < 1`,
    `-2 < x \\leq 7` == `(-2, 7]`, `x \\ne 3` == `(-\\infty,3) \\cup (3,\\infty)`;
    `\\le`, `\\leqslant`, `<=`, `≤` are one relation, as are `\\ne`, `\\neq`, `!=`.
    Unions of intervals compare as sets too (in any order). A relation never
    equals a bare number (`x \\leq 12`, `\\leq 12` != `12`). Relations in two or
    more variables are left to the second opinion (below); relations joined
    by "or"/"and" are not combined into one set (a list of relations).
  * Sequences: `(a, b)` tuples, points and intervals compare element by element
    and their brackets must match (`(3,4]` != `(3,4)`); a bare list `1, 2` is
    compared with a tuple in order, and is never an interval `[1, 2]`;
    `\\{...\\}` sets (duplicates dropped) and bare lists compare as multisets
    (answer lists such as "all solutions" are unordered), except lists of
    choice letters (`C, A, B`: an order); a set is never a tuple (`(2, 1)` !=
    `\\{1, 2\\}`); `a \\pm b` is the set {a+b, a-b}. Answers
    joined by "and", "or" or ";" are a bare list: `x = 1 \\text{ or } x = 2` ==
    `\\{1, 2\\}`.
  * Matrices (`pmatrix`, `bmatrix`, `array`, also inside `\\left( \\right)`)
    compare entry by entry and must have the same shape; a one-row or
    one-column matrix equals a tuple of its entries in order.
  * Multiple choice: `(C)`, `\\text{(C)}` and `C` are the same.
  * Symbolic expressions are parsed to sympy (`i` is the imaginary unit, `e`
    Euler's number) and equal when their difference expands to 0 or vanishes
    at random points: to 1e-25 relative at 50 digits when both are exact, to
    1e-6 relative when a decimal appears in them. A difference that is a
    nonzero rational number is never equal (`10^{11}` != `99999999999`).
  * `None` or an empty answer on either side is never equal to anything.

Second opinion. Where our LaTeX reader has no reading of an answer (`\\log_2 8`,
`|x|`, `\\lvert`, relations in several variables: anything `latex_to_sympy`
refuses), the verdict is math-verify's (the grader open-r1 and TRL use) on the
two answers as written (never on prose: two words in a row or a question mark,
from which it would pull any number), asked once per call inside the sympy
worker -- so its
SIGALRM timeouts, which fail outside the main thread, are not needed: the
worker's kill bounds it. Where we have a reading, ours is kept: it is stricter
and right where the two differ (exact integers and rationals at any size, units,
decimal commas, labelled values; README, "Agreement with math-verify").
`math_equal(..., second_opinion=False)` and `filters.correctness.
math_second_opinion = False` turn it off; `math_verify_equal` is math-verify's
verdict alone.

Time. Sympy runs in a separate worker process with a hard time limit and a
memory cap, so `2^{10^{10}}` or any other pathological input costs at most the
limit, from any thread; a timeout is judged "not equal". `timeout_s` of
`math_equal` bounds the sympy time of the whole call (all the checks a list,
matrix or equation needs together), not of each check; starting the worker
(importing sympy, once per process and after a timeout) is not counted. The
rest is bounded too: answers nest at most 20 levels deep and take at most
20,000 element comparisons, and an answer over 10,000 characters (no real one
is) equals only the identical text. Past a bound the verdict is "not equal".

Modules. This one holds the policy and the comparison; math_extract.py finds the
answer, math_numbers.py reads plain numbers, math_latex.py turns LaTeX into text
sympy parses, symbolic_checker.py runs sympy in its worker (sympy_worker.py).

Robustness. Every input-dependent failure found (unicode letters, unbalanced
or deeply nested groups, huge numbers, quadratic regexes) is fixed where it
arises and `tests/filters/test_math_fuzz.py` drives the internals with
`STRICT = True`. `math_equal` also has one outer guard that turns an
unexpected internal exception into "not equal" (and logs it): one teacher
trace that trips an unknown bug should cost that trace, not the filtering
run. Set `STRICT = True` (or DISTILL_MATH_STRICT=1) to re-raise instead. The
guard does not hide a sympy worker that cannot start (`SymbolicWorkerError`):
that is the environment, not the input.
"""
from __future__ import annotations

import fractions
import logging
import os
import re
from typing import Sequence

from distill_jax.filters.math_extract import extract_answer
from distill_jax.filters.math_latex import _GREEK, LatexConversionError, braced, latex_to_sympy
from distill_jax.filters.math_numbers import (_WORKER_FLOAT_RE, _Number,
                                              _approximates, _decimal, _numbers_equal,
                                              _percent, _to_number, read_number_commas)
from distill_jax.filters.symbolic_checker import (SymbolicChecker, SymbolicWorkerError,
                                                  _symbolic_checker)

__all__ = ["extract_answer", "math_equal", "answers_agree", "latex_to_sympy",
           "LatexConversionError", "SymbolicChecker", "SymbolicWorkerError"]

_log = logging.getLogger(__name__)

# Re-raise unexpected internal exceptions instead of judging "not equal" (tests, debugging).
STRICT = os.environ.get("DISTILL_MATH_STRICT", "").strip().lower() in ("1", "true", "yes")

_MAX_INPUT_CHARS = 10_000   # longer answers equal only the identical text
_MAX_DEPTH = 20             # nesting of lists / equations / unions / matrices
_MAX_STEPS = 20_000         # element comparisons per math_equal call

# ---------------------------------------------------------------- normalization

_SPACING = [r"\!", r"\,", r"\;", r"\:", r"\>", r"\quad", r"\qquad", r"\displaystyle",
            r"\left", r"\right", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big", r"\Big"]
_TEXT_CMDS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mbox",
              "operatorname", "mathit")
_TEXT_CMD_RE = re.compile(r"\\(" + "|".join(_TEXT_CMDS) + r")\s*(?=\{)")
_UNIT_WORD = r"(?:[a-zA-Z]{2,}\.?)(?:\^?\{?[23]\}?)?"
# At most five unit words ("cubic feet per minute"): with an unbounded repetition
# every candidate split re-read the whole tail, quadratic on long word lists.
_UNITS_TAIL_RE = re.compile(
    r"^(.*?[\d})a-zA-Z\\])\s+(" + _UNIT_WORD + r"(?:\s+" + _UNIT_WORD + r"){0,4})$")
_UNIT_GLUED_RE = re.compile(r"^(-?[\d.,]+)\s*(" + _UNIT_WORD + r")$")   # "5cm"
_DEGREES_RE = re.compile(r"\b(?:degrees?|deg)\s*$")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_SUPERSCRIPT_RUN_RE = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")
# Unicode math as the LaTeX it stands for. A command gets a trailing space so that
# `πr` stays `\pi r`, not the unknown command `\pir`.
_UNICODE = {
    "π": "\\pi ", "√": "\\sqrt ", "×": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ",
    "∙": "\\cdot ", "÷": "\\div ", "−": "-", "≤": "\\leq ", "≥": "\\geq ", "≠": "\\ne ", "≈": "\\approx ",
    "∞": "\\infty ", "±": "\\pm ", "∪": "\\cup ", "∈": "\\in ", "½": "\\frac{1}{2}",
    "⅓": "\\frac{1}{3}", "⅔": "\\frac{2}{3}", "¼": "\\frac{1}{4}", "¾": "\\frac{3}{4}",
    "α": "\\alpha ", "β": "\\beta ", "γ": "\\gamma ", "δ": "\\delta ", "θ": "\\theta ",
    "λ": "\\lambda ", "μ": "\\mu ", "σ": "\\sigma ", "φ": "\\phi ", "ω": "\\omega ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u200b": "", "\ufeff": "",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
# Whitespace goes, except between a command name and a letter (`\pi r`).
_SPACE_RE = re.compile(r"(\\[a-zA-Z]++)?\s+")


# A `\ ` or `~` space, and a backslash that ends the answer (`5\`; not a `\\` row end).
_STRAY_RE = re.compile(r"(?<!\\)\\ |~|(?<!\\)\\\s*$")
_PERCENT_WORD_RE = re.compile(r"\b(?:percent|per\s?cent|pct)\b\.?\s*$", re.IGNORECASE)
# Markup that means something else written: `\mp` and `\pm` name the same pair of
# answers, `\langle 1, 2 \rangle` is a tuple, `x \equiv 12 \pmod{13}` states 12,
# `\mathbb{R}` is `(-\infty, \infty)`.
_MARKUP = {"\\mp": "\\pm", "\\langle": "(", "\\rangle": ")", "\\equiv": "="}
_MARKUP_RE = re.compile(r"\\(?:mp|langle|rangle|equiv)(?![a-zA-Z])|\\mathbb\s?\{?R\}?(?![a-zA-Z])|"
                        r"\\pmod\s*\{[^{}]*\}|"
                        r"\\pmod\s*\d+|\\(?:bmod|mod)\s*\{?\d+\}?")
def _markup(m: re.Match) -> str:
    text = m.group()
    if text.startswith("\\mathbb"):
        return "(-\\infty,\\infty)"        # the reals, as the interval they are
    return _MARKUP.get(text, "")          # `\pmod{13}` and its kin go


# One spelling per relation: `\le`/`\leqslant`/`<=` are `\leq`, `!=`/`\neq` are `\ne`.
_RELATION_SPELLINGS = {"\\leqslant": "\\leq ", "\\geqslant": "\\geq ", "\\leq": "\\leq ",
                       "\\geq": "\\geq ", "\\le": "\\leq ", "\\ge": "\\geq ", "\\neq": "\\ne ",
                       "\\ne": "\\ne ", "\\lt": "<", "\\gt": ">", "<=": "\\leq ", ">=": "\\geq ",
                       "!=": "\\ne "}
_RELATION_SPELLINGS_RE = re.compile(
    r"\\(?:leqslant|geqslant|leq|geq|le|ge|neq|ne|lt|gt)(?![a-zA-Z])|<=|>=|!=")
# Several answers joined by words or semicolons are a list: `1 and 2`, `x=1 or x=2`, `4; -3`.
# (The lookbehind starts each match at the start of a run of spaces: linear on long runs.)
_JOINER_RE = re.compile(r"(?<!\s)\s+(?:and|or)\s+|;")


def _unicode_to_latex(s: str) -> str:
    if s.isascii():
        return s
    s = _SUPERSCRIPT_RUN_RE.sub(lambda m: "^{" + m.group().translate(_SUPERSCRIPTS) + "}", s)
    return _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], s)


def _squeeze_spaces(s: str) -> str:
    def keep(m: re.Match) -> str:
        cmd = m.group(1) or ""
        after = s[m.end():m.end() + 1]
        return cmd + " " if cmd and after.isascii() and after.isalpha() else cmd
    return _SPACE_RE.sub(keep, s)


def _unwrap_text(s: str) -> str:
    out, k = [], 0
    while True:
        m = _TEXT_CMD_RE.search(s, k)
        if not m:
            out.append(s[k:])
            return "".join(out)
        group = braced(s, m.end())
        if group is None:
            out.append(s[k:])
            return "".join(out)
        out.append(s[k:m.start()])
        out.append(group[0])
        k = group[1]


def _normalize(s: str) -> tuple[str, bool]:
    """Canonical text of an answer, and whether it carried a percent sign."""
    s = _unicode_to_latex(s.strip()).strip()
    s = s.replace("\\$", "").replace("$", "")
    # `10,\\!080` and `1{,}000` are one number: the comma stays next to its digits.
    s = s.replace(",\\!", ",").replace("{,}", ",")
    s = _MARKUP_RE.sub(_markup, s)
    for cmd in _SPACING:
        # `\left(` -> `(`; the command must not be a prefix of a longer name.
        s = re.sub(re.escape(cmd) + r"(?![a-zA-Z])", " ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _STRAY_RE.sub(" ", s).strip()
    s = _unwrap_text(s)
    s = s.replace("\\%", "%")
    word = _PERCENT_WORD_RE.search(s)
    if word:
        s = s[:word.start()].rstrip() + "%"
    percent = s.rstrip(" .").endswith("%")
    s = s.replace("%", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
    degrees = _DEGREES_RE.search(s)
    if degrees:
        s = s[:degrees.start()]
    s = _RELATION_SPELLINGS_RE.sub(lambda m: _RELATION_SPELLINGS[m.group()], s)
    s = _JOINER_RE.sub(",", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)
    s = s.strip()
    s = re.sub(r"\.\s*$", "", s)                  # "5." at the end of a sentence
    s = _strip_units(s)
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)      # x \in [a,b]
    s = read_number_commas(s)
    s = _squeeze_spaces(s).strip()
    s = re.sub(r"^\\text\{\s*\}", "", s)
    # One answer in parentheses is that answer: `\\textbf{(55)}` (an AIME-style choice).
    br = _bracketed(s)
    if br is not None and (br[0], br[2]) == ("(", ")") and len(_split_top(br[1])) == 1:
        s = br[1].strip()
    return s, percent


# Words after a number that change its value: they are not units.
_VALUE_WORDS = frozenset(
    "times million millions billion billions trillion trillions thousand thousands hundred "
    "hundreds dozen dozens score half halves third thirds quarter quarters more less fewer "
    "greater larger smaller higher lower increase increased decrease decreased off".split())
_SHORT_UNITS = frozenset(
    "cm mm km nm um dm kg mg ml mL cL dL ft in yd mi lb oz hr ms ns us kW MW mA kV sq "
    "Hz kJ mJ eV Pa".split())
_COMMANDS_RE = re.compile(r"\\[a-zA-Z]+")
_LETTERS_RE = re.compile(r"[A-Za-z]+")


def _strip_units(s: str) -> str:
    """`864 inches^2` -> `864`; only when a number or a constant expression stays and
    no word changes the value (`7 times`, `1.5 million`, `20 \\% decrease`) or is a
    variable (`2 xy`)."""
    m = _UNITS_TAIL_RE.match(s) or _UNIT_GLUED_RE.match(s)
    if (m and re.search(r"\d", m.group(1)) and not _LETTER_RE.search(_COMMANDS_RE.sub("", m.group(1)))
            and all(_is_unit_word(w) for w in _LETTERS_RE.findall(m.group(2)))):
        return m.group(1)
    return s


def _is_unit_word(word: str) -> bool:
    if word.lower() in _VALUE_WORDS:
        return False
    # Two letters are a unit only when they are a known one: `3 ab` is a product.
    return len(word) > 2 or word in _SHORT_UNITS


# ---------------------------------------------------------------- structure

_OPEN = {"(": ")", "[": "]", "{": "}"}


def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    k = 0
    while k < len(s):
        c = s[k]
        if s.startswith("\\{", k) or s.startswith("\\}", k):
            depth += 1 if s[k + 1] == "{" else -1
            cur.append(s[k:k + 2])
            k += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        k += 1
    parts.append("".join(cur))
    return parts


def _bracketed(s: str) -> tuple[str, str, str] | None:
    """`(a,b]` -> ("(", "a,b", "]") when the brackets enclose the whole string."""
    if s.startswith("\\{") and s.endswith("\\}") and len(s) >= 4:
        return "{", s[2:-2], "}"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        depth = 0
        for k, c in enumerate(s):
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0 and k != len(s) - 1:
                    return None
        return s[0], s[1:-1], s[-1]
    return None


# (`vmatrix` is a determinant, a number: it is not read as a matrix.)
_MATRIX_RE = re.compile(r"^\\begin\{([pbB]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}$",
                        re.DOTALL)


def _matrix(s: str) -> list[list[str]] | None:
    """Rows of entries of a matrix environment, also inside `(...)`/`[...]` (the
    `\\left( \\begin{array} ... \\right)` form)."""
    m = _MATRIX_RE.match(s)
    if not m and len(s) > 2 and s[0] in "([" and s[-1] in ")]":
        m = _MATRIX_RE.match(s[1:-1])
    if not m:
        return None
    body = m.group(2).replace("\\hline", "")
    rows = [r for r in body.split("\\\\") if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


def _vector_entries(rows: list[list[str]]) -> list[str] | None:
    """The entries of a one-row or one-column matrix, in order; None for others."""
    if len(rows) == 1:
        return rows[0]
    if all(len(r) == 1 for r in rows):
        return [r[0] for r in rows]
    return None



# ---------------------------------------------------------------- equality


class _OverBudget(Exception):
    """The comparison needs more steps than _MAX_STEPS: judged "not equal"."""


class _Budget:
    """What one math_equal call may still spend: sympy seconds and element comparisons."""

    def __init__(self, sympy_s: float, second_opinion: tuple[str, str] | None = None):
        self.sympy_s = float(sympy_s)
        self.steps = _MAX_STEPS
        # The (gold, pred) pair as written, for math-verify; None: do not ask it.
        self.second_opinion = second_opinion
        self.math_verify_verdict: bool | None = None

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise _OverBudget


def math_equal(gold: str | None, pred: str | None, timeout_s: float = 5.0,
               second_opinion: bool = True) -> bool:
    """Whether `pred` states the same answer as `gold` (policy: module docstring).

    Never raises on its input; `timeout_s` bounds the sympy time of the whole call.
    `second_opinion`: ask math-verify where our LaTeX reader cannot read an answer.
    """
    if gold is None or pred is None:
        return False
    try:
        gold, pred = str(gold), str(pred)
        budget = _Budget(timeout_s, (gold, pred) if second_opinion else None)
        return _math_equal(gold, pred, budget)
    except SymbolicWorkerError:
        raise                      # sympy cannot run here at all: the environment, not the input
    except Exception:  # noqa: BLE001
        # The one outer guard (module docstring, "Robustness"): the known causes are fixed
        # at their source and fuzzed with STRICT on; an unknown one costs this answer a
        # "not equal" rather than crashing the filtering run that asked.
        if STRICT:
            raise
        _log.warning("math_equal: internal error, judged not equal: gold=%.200r pred=%.200r",
                     gold, pred, exc_info=True)
        return False


def _math_equal(gold: str, pred: str, budget: _Budget) -> bool:
    if len(gold) > _MAX_INPUT_CHARS or len(pred) > _MAX_INPUT_CHARS:
        return bool(gold.strip()) and gold.strip() == pred.strip()
    g, g_pct = _normalize(gold)
    p, p_pct = _normalize(pred)
    if not g or not p:
        return False
    try:
        (g, g_round), (p, p_round) = _stated(g), _stated(p)
        pairs = [(g, p)] if g and p else []
        if p_round is not None and _rounding_counts(p, p_round, g, budget):
            pairs.append((g, p_round))
        if g_round is not None and _rounding_counts(g, g_round, p, budget):
            pairs.append((g_round, p))
        return any(_equal(a, b, g_pct, p_pct, budget) for a, b in pairs)
    except _OverBudget:
        return False


def _stated(s: str) -> tuple[str, str | None]:
    """What an answer states ("" for nothing), and the rounding it gives with `\\approx`
    (or None): a chain `x = 5+5+1 = 11` states its last side; `a \\approx b` states a,
    rounded to b; `\\approx 3` states nothing exact."""
    parts = s.split("\\approx")
    if len(parts) == 1:
        return _chain_end(s), None
    return _chain_end(parts[0]), _chain_end(parts[-1])


def _rounding_counts(stated: str, rounding: str, other: str, budget: _Budget) -> bool:
    """Whether the rounding an answer gives may be compared with the other answer: it is
    a decimal, and the other is a decimal (the rounding a problem asks for) or nothing
    exact was stated (`x \\approx 3.14159`); a stated value must round to it
    (`\\frac{7}{3} \\approx 2.5` states a wrong rounding: not 2.5)."""
    r = _to_number(rounding)
    if r is None or r.unit is None or r.value is None:
        return False
    eq = _equation(stated)
    value = _labelled_value(eq) if eq else stated
    if not value or _LABEL_RE.fullmatch(value):
        return True
    if not _is_decimal(other):
        return False
    n = _to_number(value)
    try:
        x = (n.value, True) if n is not None and n.value is not None else _constant_value(
            value, budget)
    except LatexConversionError:
        return False
    return x is not None and abs(x[0] - r.value) <= r.unit


def _chain_end(s: str) -> str:
    sides = _split_top(s, "=")
    if len(sides) > 2 and all(sides) and len(_split_top(s)) == 1:
        return sides[-1]
    return s


def _is_decimal(s: str) -> bool:
    n = _to_number(s)
    return n is not None and n.unit is not None


def _equal(g: str, p: str, g_pct: bool, p_pct: bool, budget: _Budget, depth: int = 0) -> bool:
    budget.step()
    if g == p:
        return True
    if depth >= _MAX_DEPTH:
        return False

    def equal(a: str, b: str) -> bool:
        return _equal(a, b, False, False, budget, depth + 1)

    letter_g, letter_p = _choice_letter(g), _choice_letter(p)
    if letter_g or letter_p:
        return letter_g == letter_p and letter_g is not None
    if _WORD_ANSWER_RE.fullmatch(g) or _WORD_ANSWER_RE.fullmatch(p):
        # A word is text, not a product of letters: `seat` != `east`, `No` == `no`.
        return g.casefold() == p.casefold()

    # Equations: the same equation written two ways or scaled; a labelled value
    # (`x = 2`, `2 = x`, `f(3) = 2`, `(p,q) = (3,2)`) against the bare value.
    g_eq, p_eq = _equation(g), _equation(p)
    if g_eq and p_eq:
        if g_eq[0] == p_eq[0]:
            return equal(g_eq[1], p_eq[1])
        return _symbolic_equal(f"{g_eq[0]}-({g_eq[1]})", f"{p_eq[0]}-({p_eq[1]})", budget,
                               op="proportional")
    g_val = _labelled_value(g_eq) if g_eq and "=" not in p else None
    if g_val is not None:
        return _equal(g_val, p, g_pct, p_pct, budget, depth + 1)
    p_val = _labelled_value(p_eq) if p_eq and "=" not in g else None
    if p_val is not None:
        return _equal(g, p_val, g_pct, p_pct, budget, depth + 1)
    if (g_eq is not None and "=" not in p) or (p_eq is not None and "=" not in g):
        return False      # an equation to solve (`2x = 6`) does not state a value (`3`)

    g_has_rel, p_has_rel = _RELATION_OP_RE.search(g), _RELATION_OP_RE.search(p)
    if g_has_rel or p_has_rel:
        g_set = _relation(g) if g_has_rel else _interval_union(g)
        p_set = _relation(p) if p_has_rel else _interval_union(p)
        if g_set is not None and p_set is not None:
            return _same_set(g_set, p_set, budget)
        if (g_has_rel or _looks_like_set(g)) and (p_has_rel or _looks_like_set(p)):
            return _second_opinion(budget)      # a relation we cannot read (`\\log_2 x > 3`)
        return False      # a relation (`x \\leq 12`, `\\leq 12`) is no number

    gm, pm = _matrix(g), _matrix(p)
    if gm is not None and pm is not None:
        if [len(r) for r in gm] != [len(r) for r in pm]:
            return False
        return all(equal(a, b) for ra, rb in zip(gm, pm) for a, b in zip(ra, rb))
    if gm is not None or pm is not None:
        # A vector written as a matrix against a tuple `(1, 2)`: entry by entry.
        vector = _vector_entries(gm if gm is not None else pm)
        seq = _sequence(p if gm is not None else g)
        if vector is None or seq is None or seq[0] not in "([" or len(seq[1]) != len(vector):
            return False
        return all(equal(a, b) for a, b in zip(vector, seq[1]))

    if "\\cup" in g or "\\cup" in p:
        g_set, p_set = _interval_union(g), _interval_union(p)
        if g_set is not None and p_set is not None:
            return _same_set(g_set, p_set, budget)        # in any order, merged
        gu, pu = g.split("\\cup"), p.split("\\cup")
        return len(gu) == len(pu) and all(equal(a, b) for a, b in zip(gu, pu))

    g_seq, p_seq = _sequence(g), _sequence(p)
    if g_seq is not None or p_seq is not None:
        return _sequences_equal(g_seq or ("", [g], ""), p_seq or ("", [p], ""), equal)

    gn, pn = _to_number(g), _to_number(p)
    if gn is not None and pn is not None:
        if _numbers_equal(gn, pn):
            return True
        if g_pct != p_pct:   # "50%" vs "0.5": the percent side over 100
            if g_pct:
                return _numbers_equal(_percent(gn), pn)
            return _numbers_equal(gn, _percent(pn))
        return False
    # A decimal against an expression: is it that expression's value, rounded?
    if gn is not None and gn.unit is not None:
        return _decimal_vs_expression(gn, p, budget)
    if pn is not None and pn.unit is not None:
        return _decimal_vs_expression(pn, g, budget)
    return _symbolic_equal(g, p, budget)


_CHOICE_RE = re.compile(r"\(?([A-E])\)?")
# A word answer: three or more letters and nothing else (`Evelyn`, `east`, `No`+`solution`).
_WORD_ANSWER_RE = re.compile(r"[A-Za-z]{3,}")


def _choice_letter(s: str) -> str | None:
    m = _CHOICE_RE.fullmatch(s)
    return m.group(1) if m else None


def _looks_like_set(s: str) -> bool:
    """An interval or union we may not read (`(8, \\infty)`, `\\mathbb{R}`)."""
    br = _bracketed(s)
    return "\\cup" in s or "\\mathbb" in s or (br is not None and br[0] in "([")


def _equation(s: str) -> tuple[str, str] | None:
    if s.count("=") != 1 or _RELATION_OP_RE.search(s):
        return None
    lhs, rhs = s.split("=")
    return (lhs, rhs) if lhs and rhs else None


# What names a value rather than computes one: `x`, `a_n`, `AB`, `|AB|`, `\overline{AB}`,
# `m\angle ABC`, `f(x)`, `f^{-1}(3)`, `P(A)`, `\theta`, `(p,q)`.
_LABEL_RE = re.compile(
    r"(?:m\s*)?\\angle\s*[A-Za-z]+"
    r"|\|[A-Za-z]+\||\\overline\{[A-Za-z]+\}"
    r"|(?:[A-Za-z]+|\\(?:" + "|".join(sorted(_GREEK)) + r"))'*(?:_(?:\d+|[A-Za-z]))?"
    r"(?:\^\{?-1\}?)?(?:\([^()=]*\))?"
    r"|\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])+\s*\)")


_LETTER_RE = re.compile(r"[A-Za-z]")
_OPERATOR_RE = re.compile(r"[-+*/^!]|\\(?:times|cdot|div|frac|sqrt)")


def _labelled_value(eq: tuple[str, str]) -> str | None:
    """The value side of `label = value`, `value = label` or a computation `5+5+1 = 11`
    (no letters on the left); None for other equations."""
    lhs, rhs = eq
    if _LABEL_RE.fullmatch(lhs):
        return rhs
    if _LABEL_RE.fullmatch(rhs):
        return lhs
    if not _LETTER_RE.search(lhs) and _OPERATOR_RE.search(lhs):
        return rhs
    return None


def _sequence(s: str) -> tuple[str, list[str], str] | None:
    """(open, items, close) for tuples, intervals, sets, ± pairs and bare lists."""
    br = _bracketed(s)
    if br is not None:
        items = _split_top(br[1])
        if br[0] == "{":
            return "{", list(dict.fromkeys(_expand_pm(items))), "}"   # a set: {1,1,2} = {1,2}
        return (br[0], items, br[2]) if len(items) >= 2 else None
    if "\\pm" in s and "," not in s:
        return "{", _expand_pm([s]), "}"
    items = _split_top(s)
    if len(items) >= 2:
        return "", _expand_pm(items), ""
    return None


def _expand_pm(items: list[str]) -> list[str]:
    """`a \\pm b` stands for the two answers a+b and a-b."""
    out = []
    for it in items:
        if "\\pm" in it:
            out += [it.replace("\\pm", "+", 1), it.replace("\\pm", "-", 1)]
        else:
            out.append(it)
    return out


def _sequences_equal(a: tuple[str, list[str], str], b: tuple[str, list[str], str],
                     equal) -> bool:
    (ao, ai, ac), (bo, bi, bc) = a, b
    if len(ai) != len(bi):
        return False
    kinds = {ao, bo}
    if ("{" in kinds and kinds - {"{", ""}) or kinds == {"", "["}:
        return False      # a set is no tuple or interval; a list of answers is no [a, b]
    letters = all(_CHOICE_RE.fullmatch(x) for x in ai + bi)
    unordered = kinds <= {"{", ""} and not (kinds == {""} and letters)
    if not unordered and ao and bo and (ao, ac) != (bo, bc):
        return False
    if not unordered:
        return all(equal(x, y) for x, y in zip(ai, bi))
    remaining = list(bi)
    for x in ai:
        for k, y in enumerate(remaining):
            if equal(x, y):
                del remaining[k]
                break
        else:
            return False
    return True




def _ask(request: dict, budget: _Budget) -> dict | None:
    """One worker request within what is left of the call's sympy time; None: no answer."""
    if budget.sympy_s <= 0:
        return None
    reply, spent = _symbolic_checker().request(request, budget.sympy_s)
    budget.sympy_s -= spent
    return reply


# ---------------------------------------------------------------- relations

_RELATION_OP_RE = re.compile(r"\\leq|\\geq|\\ne(?![a-zA-Z])|<|>")
_FLIPPED = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq", "\\ne": "\\ne"}


def _relation(s: str) -> dict | None:
    """`x \\geq 5`, `-2 < x \\leq 7`, `x \\ne 3` as a worker request part: the sides in
    sympy syntax and the operators between them; None if s is no relation (or one our
    LaTeX reader cannot convert)."""
    if not _RELATION_OP_RE.search(s) or len(_split_top(s)) > 1:
        return None
    ops = [m.group() for m in _RELATION_OP_RE.finditer(s)]
    sides = _RELATION_OP_RE.split(s)
    if len(ops) > 2 or not all(side.strip() for side in sides):
        return None
    try:
        return {"sides": [latex_to_sympy(side) for side in sides], "ops": ops}
    except LatexConversionError:
        return None


def _interval_union(s: str) -> dict | None:
    """`[5, \\infty)` or `(-\\infty, 3) \\cup (3, \\infty)` as a worker request part."""
    intervals = []
    for part in s.split("\\cup"):
        br = _bracketed(part.strip())
        if br is None or br[0] == "{":
            return None
        ends = _split_top(br[1])
        if len(ends) != 2:
            return None
        try:
            lo, hi = latex_to_sympy(ends[0]), latex_to_sympy(ends[1])
        except LatexConversionError:
            return None
        intervals.append([lo, hi, br[0] == "(", br[2] == ")"])
    return {"intervals": intervals}


def _same_set(a: dict, b: dict, budget: _Budget) -> bool:
    """Whether two relations in one variable, or a relation and intervals, describe the
    same set of real numbers (`x \\geq 5` == `5 \\leq x` == `[5, \\infty)`)."""
    reply = _ask({"op": "same_set", "a": a, "b": b}, budget)
    if reply is not None and reply.get("unread"):
        return _second_opinion(budget)     # relations in two or more variables
    return reply is not None and reply.get("equal") is True


_MATH_MODE_RE = re.compile(r"(?<!\\)\$")


def _as_math_verify_input(answer: str) -> str:
    """math-verify reads LaTeX inside `$...$` or `\\boxed{}`; a bare answer gets `$`s
    (`\\$36` is a dollar sign, not math mode)."""
    return answer if _MATH_MODE_RE.search(answer) or "\\boxed" in answer else f"${answer}$"


def _math_verify(gold: str, pred: str, budget: _Budget, response: bool = False) -> bool | None:
    reply = _ask({"op": "math_verify", "gold": _as_math_verify_input(gold),
                  "pred": pred if response else _as_math_verify_input(pred)}, budget)
    if reply is not None and "unavailable" in reply:
        raise SymbolicWorkerError(f"math-verify cannot run: {reply['unavailable']} "
                                  "(pip install math-verify, or second_opinion=False)")
    if reply is None or "equal" not in reply:
        return None
    return reply["equal"] is True


def math_verify_equal(gold: str | None, pred: str | None, timeout_s: float = 5.0,
                      response: bool = False) -> bool | None:
    """math-verify's own verdict on two answers, none of our rules applied (for the
    agreement report); None when it timed out or failed. `response`: pred is a whole
    response, from which math-verify extracts the answer itself (as open-r1 does).

    It runs in the sympy worker, so it is bounded by `timeout_s` in any thread.
    """
    if gold is None or pred is None:
        return None
    return _math_verify(str(gold), str(pred), _Budget(timeout_s), response)


# Two words of three or more letters in a row, or a question: prose, from which
# math-verify would pull any number (`12? Let me double check` == 12 to it).
_PROSE_RE = re.compile(r"[A-Za-z]{3,}[\s,;:]+[A-Za-z]{3,}|\?")


def _is_prose(answer: str) -> bool:
    return _PROSE_RE.search(_COMMANDS_RE.sub(" ", answer)) is not None


def _second_opinion(budget: _Budget) -> bool:
    """math-verify's verdict on the answers as written, asked (once per call) where our
    LaTeX reader cannot convert a part (`\\log_2 8`, `|x|`, `\\lvert`): where we have
    no reading, theirs decides; where we have one, ours is kept (module docstring)."""
    if budget.second_opinion is None or any(map(_is_prose, budget.second_opinion)):
        return False
    if budget.math_verify_verdict is None:
        budget.math_verify_verdict = _math_verify(*budget.second_opinion, budget) is True
    return budget.math_verify_verdict


def _symbolic_equal(g: str, p: str, budget: _Budget, op: str = "equal") -> bool:
    """The worker's verdict on two LaTeX expressions: "equal", or "proportional" (the
    sides of two equations moved to one side differ by a nonzero constant factor: the
    same equation, written another way)."""
    try:
        ga, pa = latex_to_sympy(g), latex_to_sympy(p)
    except LatexConversionError:
        return _second_opinion(budget)
    reply = _ask({"op": op, "a": ga, "b": pa}, budget)
    return reply is not None and reply.get("equal") is True


def _decimal_vs_expression(d: _Number, expr: str, budget: _Budget) -> bool:
    """A decimal against a constant expression (`3.14159` vs `\\pi`): the number rule
    with the expression's value from sympy (exact when sympy finds it rational)."""
    if d.value is None:
        return False
    try:
        value = _constant_value(expr, budget)
    except LatexConversionError:
        return _second_opinion(budget)
    if value is None:
        return False
    x, exact = value
    return d.value == x or _approximates(d, x, x_exact=exact)


def _constant_value(expr: str, budget: _Budget) -> tuple[fractions.Fraction, bool] | None:
    """The value of a constant expression and whether it is exact (sympy found it
    rational) or 40 significant digits of an irrational; None when it has none (free
    symbols, a timeout). Raises LatexConversionError when we cannot read it."""
    reply = _ask({"op": "evaluate", "a": latex_to_sympy(expr)}, budget)
    if reply is None:
        return None
    try:
        if isinstance(reply.get("rational"), str):
            num, _, den = reply["rational"].partition("/")
            return fractions.Fraction(int(num), int(den or "1")), True
        m = _WORKER_FLOAT_RE.fullmatch(reply.get("value") or "")
        if m:
            x = _decimal(-1 if m.group(1) else 1, m.group(2), m.group(3) or "",
                         int(m.group(4) or 0), True)
            return (x.value, False) if x.value is not None else None
    except (ValueError, ZeroDivisionError):
        pass                  # more digits than int() reads: beyond any written decimal
    return None




def answers_agree(answers: Sequence[str | None], timeout_s: float = 5.0) -> list[int]:
    """Group index per answer under `math_equal` (for majority voting); None -> -1."""
    reps: list[str] = []
    groups: list[int] = []
    for a in answers:
        if a is None:
            groups.append(-1)
            continue
        for k, r in enumerate(reps):
            if math_equal(r, a, timeout_s):
                groups.append(k)
                break
        else:
            reps.append(a)
            groups.append(len(reps) - 1)
    return groups
