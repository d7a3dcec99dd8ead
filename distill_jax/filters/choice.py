"""Multiple-choice answers (GPQA Diamond and the like).

`format_choices(question, options)` writes a question with its options lettered
"(A) ...", "(B) ...", one per line. `extract_choice(text, options)` reads the letter
a response chooses; `choice_equal(gold, predicted)` compares letters.

Where the answer is looked for: the text after the last `</think>` (an R1 trace's
summary) first; if no answer is found there, the whole text (the reasoning too).

What states an answer (a "statement"):
  * a box: `\\boxed{C}`, `\\boxed{(C)}`, `\\boxed{\\text{C}}`, `\\boxed{\\textbf{(C)} 0.5}`,
    `\\fbox{...}`; boxes joined by "and", "or" or commas (`\\boxed{A} and
    \\boxed{C}`) are one statement;
  * an answer marker and the claim after it, to the end of its sentence or the
    clause that explains it: "The (correct / final) answer is (C)", "answer: C",
    "**Answer:** (C)", "Final Answer: C", "The correct option is C", "my choice:
    C"; a marker alone at the end of its line ("**Final Answer**") claims the next
    line. A marker in a hypothesis ("let me check whether the answer is B", "maybe
    the answer is B") or a claim that is a question ("so the answer is B?") states
    nothing; a revision does ("Wait, the answer is D");
  * "option C is correct" / "choice (C) is the answer" (not in a hypothesis);
  * a final line (the last non-empty line) that is just a letter: "(C)", "C.",
    "C", "**(C)**".

What a statement's text chooses, in order:
  1. a single letter, alone or as "(C)", "[C]", "C)", "option C", "choice (C)"
     (lower case too in a box or a claim, "the answer is c"; on a final line
     only in parentheses, "(c)");
  2. the text of one option instead of a letter: equal after dropping `$`, LaTeX
     text wrappers (`\\text{}`, `\\mathrm{}`, ...), emphasis and a final period,
     compared without case and whitespace;
  3. several letters ("A or C", "(A), (C)", "both A and C"): two different ones
     choose nothing (None);
  4. a letter that leads the text: "(C) 0.5", "C: 0.5", "C) 0.5";
  5. for numeric options (containing a digit, at most 100 characters): a value
     `math_equal` to exactly one of them (`\\frac{1}{2}` chooses the option "0.5");
     at most 8 claims of a response are compared by value, 2 s of sympy each.
  A letter outside the options' range (E with four options) chooses nothing, and
  so does text equal to (or `math_equal` to) two options.

Which statement counts: the last one (by where it starts) that makes a choice --
"the last stated answer wins". A claim whose text is none of the above (prose, "the
answer is correct", a value that is no option) is skipped, so an earlier statement
can count; a box is never skipped: a box that chooses nothing (`\\boxed{42}` with
no option 42) makes the answer None. A statement that chooses nothing valid (an
out-of-range letter, two letters) makes the answer None too; it is not skipped.

Robustness: `extract_choice` returns a letter or None for any input (None, empty,
non-strings, junk, unbalanced braces, huge texts: markers and statements looked at
are bounded) and never raises; an unexpected internal error is logged and read as
None. The one exception is `SymbolicWorkerError` from `math_equal` (sympy cannot run
here at all), which is the environment, not the input, as in `math_equal`.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from distill_jax.filters.math_extract import HEDGE_RE, MATH_SPAN_RE, SENTENCE_START_RE, boxes

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_log = logging.getLogger(__name__)

_MAX_MARKERS = 20          # answer markers looked at per segment (the last ones)
_MAX_STATEMENTS = 40       # statements resolved per segment (the last ones)
_MAX_CLAIM = 2_000
_MAX_NUMERIC = 100         # longest option / claim compared as a value
_MAX_VALUE_CHECKS = 8      # claims compared by value (`math_equal`) per response
_VALUE_TIMEOUT_S = 2.0     # sympy time per claim-option comparison

_INVALID = object()        # a statement that chooses nothing valid: the answer is None
_NO_MATCH = None           # a statement whose text names no option

# ---------------------------------------------------------------- formatting


def format_choices(question: str, options: list[str]) -> str:
    """The question, a blank line, then "(A) option", "(B) option", ... one per line."""
    if not options:
        raise ValueError("a multiple-choice question needs at least one option")
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    lines = [f"({LETTERS[k]}) {str(o).strip()}" for k, o in enumerate(options)]
    return f"{str(question).strip()}\n\n" + "\n".join(lines)


# ---------------------------------------------------------------- reading a claim

_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|"
                      r"mathsf|mathtt|mbox|emph|boxed|fbox|bf|it|rm)\s*\{([^{}]*)\}")
_MATH_DELIM_RE = re.compile(r"\\[()\[\]]")
_LATEX_SPACE_RE = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad")
_WS_RE = re.compile(r"\s+")

_PREFIX = r"(?:(?i:option|choice|answer)\s*[:#]?\s*)?"
_ONE_LETTER_RE = re.compile(_PREFIX + r"(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])\)?)")
_LOWER_LETTER_RE = re.compile(_PREFIX + r"\(([a-z])\)")
_LETTER_ITEM = r"(?:(?i:options?|choices?)\s*)?[\(\[]?[A-Z][\)\]]?"
_MULTI_RE = re.compile(r"(?:(?i:both|either)\s+)?" + _LETTER_ITEM
                       + r"(?:\s*(?:,|/|&|\+|(?i:\bor\b|\band\b))\s*" + _LETTER_ITEM + r")+")
_MULTI_LETTER_RE = re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])")
_LEADING_RE = re.compile(r"(?:(?i:option|choice)\s*)?[\(\[]?([A-Z])"
                         r"(?:[\)\]]|[.:,]\s|\s+[-–—:]\s)")
_DIGIT_RE = re.compile(r"\d")


def _clean(s: str) -> str:
    """A claim or option without `$`, math delimiters, text wrappers, emphasis, spacing
    commands and a final period."""
    for _ in range(5):
        unwrapped = _WRAP_RE.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = _MATH_DELIM_RE.sub(" ", s)
    s = _LATEX_SPACE_RE.sub(" ", s)
    s = s.replace("$", " ").replace("**", " ").replace("__", " ")
    s = _WS_RE.sub(" ", s).strip(" *_")
    return s.rstrip(".,;:!").strip(" *_")


def _norm(s: str) -> str:
    """An option's text as compared: cleaned, no whitespace, case-folded."""
    return _WS_RE.sub("", _clean(s)).casefold()


def _letter(letter: str, n: int):
    k = LETTERS.find(letter.upper())
    return letter.upper() if 0 <= k < n else _INVALID


def _single_letter(c: str, n: int, lower: bool = False):
    """A letter alone ("C", "(C)", "option C"); lower case only in parentheses, or
    anywhere with `lower` (a box or an answer claim: "the answer is c")."""
    m = _ONE_LETTER_RE.fullmatch(c)
    if m:
        return _letter(next(g for g in m.groups() if g), n)
    m = _LOWER_LETTER_RE.fullmatch(c)
    if m:
        return _letter(m.group(1), n)
    if lower:
        m = _ONE_LETTER_RE.fullmatch(c.upper())
        if m and len(c.strip("()[] ")) == 1:
            return _letter(next(g for g in m.groups() if g), n)
    return _NO_MATCH


class _Options:
    """The options of one question, prepared once for every statement."""

    def __init__(self, options: Sequence[str]):
        self.texts = ["" if o is None else str(o) for o in options][:len(LETTERS)]
        self.n = len(self.texts)
        self.norms = [_norm(t) for t in self.texts]
        self.numeric = [k for k, t in enumerate(self.texts)
                        if len(t) <= _MAX_NUMERIC and _DIGIT_RE.search(t)]
        self.value_checks = _MAX_VALUE_CHECKS

    def by_text(self, claim: str):
        key = _norm(claim)
        if not key:
            return _NO_MATCH
        hits = [k for k, o in enumerate(self.norms) if o == key]
        if len(hits) == 1:
            return LETTERS[hits[0]]
        return _INVALID if hits else _NO_MATCH

    def by_value(self, claim: str):
        if not self.numeric or len(claim) > _MAX_NUMERIC or not _DIGIT_RE.search(claim) \
                or self.value_checks <= 0:
            return _NO_MATCH
        self.value_checks -= 1
        from distill_jax.filters.math_answer import math_equal   # sympy only when needed
        hits = [k for k in self.numeric
                if math_equal(self.texts[k], claim, timeout_s=_VALUE_TIMEOUT_S)]
        if len(hits) == 1:
            return LETTERS[hits[0]]
        return _INVALID if hits else _NO_MATCH


def _resolve(claim: str, options: _Options, full: str | None = None):
    """What a statement's text chooses: a letter, _INVALID, or _NO_MATCH (rules 1-5)."""
    c = _clean(claim)
    if not c:
        return _NO_MATCH
    found = _single_letter(c, options.n, lower=True)
    if found is not _NO_MATCH:
        return found
    for variant in ([full] if full is not None else []) + [claim]:
        found = options.by_text(variant)
        if found is not _NO_MATCH:
            return found
    if _MULTI_RE.fullmatch(c):
        letters = set(_MULTI_LETTER_RE.findall(c))
        return _letter(letters.pop(), options.n) if len(letters) == 1 else _INVALID
    for variant in [c] + ([_clean(full)] if full is not None else []):
        m = _LEADING_RE.match(variant)
        if m:
            return _letter(m.group(1), options.n)
    return options.by_value(c)


# ---------------------------------------------------------------- finding statements

_BOX_JOINER_RE = re.compile(r"[\s$,;]*(?:(?:and|or)[\s$,;]*)?", re.IGNORECASE)
_MARK_RE = re.compile(
    r"\b(?:(?:final|correct|right|best)\s+)?(?:answer|option|choice)(?:\s*[*_]{1,2})?"
    r"\s*(?:is\b|:|=)|\bfinal\s+answer[*_ \t]*(?=\n)", re.IGNORECASE)
_PHRASE_RE = re.compile(
    r"\b(?:option|choice)\s*[\(\[]?([A-Z])[\)\]]?\s+is\s+(?:the\s+)?"
    r"(?:correct|right|best|answer)\b", re.IGNORECASE)
_CLAIM_END_RE = re.compile(
    r"\.(?:\s|$)|\?|;|,?\s+(?:because|since|as|by|which|so|when|where|given|due|from|for|is|"
    r"are|was|were|corresponds?|matches|with)\b|\s[-–—]\s", re.IGNORECASE)


def _box_groups(text: str) -> list[tuple[int, list[str]]]:
    """Boxes, those joined by "and" / "or" / commas grouped: (start, [contents])."""
    groups: list[tuple[int, list[str]]] = []
    last_end = None
    for start, end, content in boxes(text):
        between = text[last_end:start] if last_end is not None else None
        if between is not None and len(between) <= 20 and _BOX_JOINER_RE.fullmatch(between):
            groups[-1][1].append(content)
        else:
            groups.append((start, [content]))
        last_end = end
    return groups


def _hedged(segment: str, at: int) -> bool:
    sentence = SENTENCE_START_RE.split(segment[max(0, at - 200):at])[-1]
    return bool(HEDGE_RE.search(sentence))


def _claim(line: str) -> tuple[str, str] | None:
    """(claim, whole line) after a marker; None for nothing or a question."""
    line = line.strip(" \t*_:")
    if not line:
        return None
    masked = MATH_SPAN_RE.sub(lambda m: "$" * len(m.group()), line)
    cut = _CLAIM_END_RE.search(masked, 1)
    if cut and cut.group() == "?":
        return None
    return (line[:cut.start()] if cut else line), line


def _statements(segment: str) -> list[tuple[int, str, object]]:
    """(start, kind, payload) of every statement in the segment, in text order."""
    found: list[tuple[int, str, object]] = []
    for start, contents in _box_groups(segment):
        found.append((start, "box", contents))
    for m in list(_MARK_RE.finditer(segment))[-_MAX_MARKERS:]:
        if _hedged(segment, m.start()):
            continue
        rest = segment[m.end():m.end() + _MAX_CLAIM]
        line, _, following = rest.partition("\n")
        if not line.strip(" \t*_:"):
            line = following.lstrip("\n").partition("\n")[0]
        claim = _claim(line)
        if claim is not None:
            found.append((m.start(), "claim", claim))
    for m in list(_PHRASE_RE.finditer(segment))[-_MAX_MARKERS:]:
        if not _hedged(segment, m.start()):
            found.append((m.start(), "letter", m.group(1)))
    stripped = segment.rstrip()
    start = stripped.rfind("\n") + 1
    last_line = stripped[start:]
    if last_line.strip() and len(last_line) <= 100:
        found.append((start, "line", last_line))
    found.sort(key=lambda s: s[0])
    return found


def _choose(statement: tuple[int, str, object], options: _Options):
    _, kind, payload = statement
    if kind == "box":
        picks = [_resolve(c, options) for c in payload]
        if any(p is _NO_MATCH or p is _INVALID for p in picks) or len(set(picks)) != 1:
            return _INVALID
        return picks[0]
    if kind == "claim":
        claim, full = payload
        return _resolve(claim, options, full)
    if kind == "letter":
        return _letter(payload, options.n) if payload.isupper() else _NO_MATCH
    return _single_letter(_clean(payload), options.n)     # a final line: only a letter


def _from_segment(segment: str, options: _Options) -> tuple[bool, str | None]:
    """(found, letter): found is False when no statement in the segment chooses."""
    for statement in reversed(_statements(segment)[-_MAX_STATEMENTS:]):
        pick = _choose(statement, options)
        if pick is _NO_MATCH:
            continue
        return True, (None if pick is _INVALID else pick)
    return False, None


def _extract(text, options) -> str | None:
    if not text or options is None:
        return None
    text = text if isinstance(text, str) else str(text)
    opts = _Options(list(options))
    if opts.n == 0:
        return None
    if "</think>" in text:
        found, letter = _from_segment(text.rsplit("</think>", 1)[1], opts)
        if found:
            return letter
    return _from_segment(text, opts)[1]


def extract_choice(text: str | None, options: list[str]) -> str | None:
    """The letter ("A", "B", ...) the response chooses among `options`, or None (rules:
    module docstring). Never raises on its input."""
    try:
        return _extract(text, options)
    except Exception as e:  # noqa: BLE001
        from distill_jax.filters.symbolic_checker import SymbolicWorkerError
        if isinstance(e, SymbolicWorkerError):
            raise                  # sympy cannot run here at all: the environment
        _log.warning("extract_choice: internal error, read as no answer: %.200r", text,
                     exc_info=True)
        return None


def choice_equal(gold_letter: str, predicted: str | None) -> bool:
    """Whether the predicted letter is the gold one ("C" == "c" == "(C)")."""
    def letter(s) -> str | None:
        if s is None:
            return None
        s = str(s).strip().strip("()[] ").upper()
        return s if len(s) == 1 and s in LETTERS else None
    g, p = letter(gold_letter), letter(predicted)
    return g is not None and g == p
