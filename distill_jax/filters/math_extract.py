"""The final answer a solution states (policy: math_answer's module docstring)."""
from __future__ import annotations

import re

from distill_jax.filters.math_latex import closing_braces

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE_ARG_RE = re.compile(r"[^\s$]+")
_HASH_RE = re.compile(r"####\s*([^\n]+)")
# A stated answer: "the (final) answer is X", "Final Answer: X", "Answer: X",
# "**Answer:** X". The claim runs to the end of its line; `_claim` trims it.
_ANSWER_MARK_RE = re.compile(r"\b(?:final\s+)?answer(?:\s*[*_]{1,2})?\s*(?:is\b|:|=)",
                             re.IGNORECASE)
_MAX_MARKERS = 20
_MAX_CLAIM = 2_000
# Words that begin a remark about an answer, not an answer ("the answer is correct").
_NOT_A_CLAIM_RE = re.compile(r"(?:correct|incorrect|right|wrong|not|that|this|as follows|below|"
                             r"above|the same|unclear|likely|probably)\b", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_INLINE_MATH_RE = re.compile(r"\$\$?([^$]*)\$|\\\((.*?)\\\)|\\\[(.*?)\\\]")


def _last_boxed(text: str) -> str | None:
    boxes = list(_BOX_RE.finditer(text))
    if not boxes:
        return None
    # One pass over the braces, not one scan per `\boxed{` (unclosed ones made that quadratic).
    closing = closing_braces(text)
    for m in reversed(boxes):
        start = m.end()
        if start < len(text) and text[start] == "{":
            end = closing.get(start)
            if end is not None:
                return text[start + 1:end].strip()
            continue                     # unclosed: an earlier box may be complete
        # `\boxed 5`: the argument runs to the next space or `$`.
        bare = _BARE_ARG_RE.match(text, start)
        if bare:
            return bare.group().strip()
    return None


def _claim(rest: str) -> str | None:
    """The answer in the text after an answer marker: its math if it opens with `$...$`
    (or `\\(...\\)`), else up to the sentence's end; emphasis and wrapper words go."""
    rest = rest.lstrip(" \t*_:")
    if not rest or _NOT_A_CLAIM_RE.match(rest):
        return None
    math = _INLINE_MATH_RE.match(rest)
    if math:
        claim = next(g for g in math.groups() if g is not None)
    else:
        cut = _SENTENCE_END_RE.search(rest, 1)   # the claim itself is at least one character
        claim = rest[:cut.start()] if cut else rest
    return claim.strip(" \t*_$") or None


def _last_stated(segment: str) -> str | None:
    """The claim of the last answer marker that makes one (the last answer wins).

    Only the last _MAX_MARKERS markers are tried, each on at most _MAX_CLAIM characters:
    a long line of remarks ("the answer is correct" x 10,000) stays linear."""
    for m in list(_ANSWER_MARK_RE.finditer(segment))[::-1][:_MAX_MARKERS]:
        rest = segment[m.end():m.end() + _MAX_CLAIM]
        claim = _claim(rest.split("\n", 1)[0])
        if claim is not None:
            return claim
    return None


def _extract_from(segment: str) -> str | None:
    boxed = _last_boxed(segment)
    if boxed is not None:
        return boxed
    hashes = _HASH_RE.findall(segment)
    if hashes:
        return hashes[-1].strip()
    return _last_stated(segment)


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution states, or None (see the module docstring)."""
    if not text:
        return None
    if not isinstance(text, str):
        text = str(text)
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        found = _extract_from(after)
        if found is not None:
            return found
    return _extract_from(text)

