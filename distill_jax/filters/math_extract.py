"""The final answer a solution states (policy: math_answer's module docstring)."""
from __future__ import annotations

import re

from distill_jax.filters.math_latex import closing_braces

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE_ARG_RE = re.compile(r"[^\s$]+")
_HASH_RE = re.compile(r"####\s*([^\n]+)")
# The claim runs to the end of its line; `_answer_is` cuts it at the first sentence end.
# (A lazy `(.+?)\s*(?:\.\s|\n|$)` here took quadratic time on long runs of spaces.)
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*([^\n]*)",
                           re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


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


def _answer_is(claim: str) -> str:
    cut = _SENTENCE_END_RE.search(claim, 1)   # the claim itself is at least one character
    return (claim[:cut.start()] if cut else claim).strip()


def _extract_from(segment: str) -> str | None:
    boxed = _last_boxed(segment)
    if boxed is not None:
        return boxed
    hashes = _HASH_RE.findall(segment)
    if hashes:
        return hashes[-1].strip()
    answers = _ANSWER_IS_RE.findall(segment)
    if answers:
        ans = _answer_is(answers[-1]).strip("$").strip()
        return ans or None
    return None


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

