"""The final answer a solution states (policy: math_answer's module docstring)."""
from __future__ import annotations

import re

from distill_jax.filters.math_latex import closing_braces

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE_ARG_RE = re.compile(r"[^\s$]+")
_HASH_RE = re.compile(r"####\s*([^\n]+)")
# A stated answer: "the (final) answer is X", "Final Answer: X", "Answer: X",
# "**Answer:** X". The claim runs to the end of its sentence; `_claim` trims it.
_ANSWER_MARK_RE = re.compile(r"\b(?:final\s+)?answer(?:\s*[*_]{1,2})?\s*(?:is\b|:|=)"
                             r"|\bfinal\s+answer[*_ \t]*(?=\n)", re.IGNORECASE)
_MAX_MARKERS = 20
_MAX_CLAIM = 2_000
# Words that begin a remark about an answer, not an answer ("the answer is correct").
_NOT_A_CLAIM_RE = re.compile(r"(?:correct|incorrect|right|wrong|not|that|this|as follows|below|"
                             r"above|the same|unclear|likely|probably)\b", re.IGNORECASE)
# A marker in a hypothesis is no claim: "let me check whether the answer is 12". One
# list for every verifier that reads claims (choice.py too). "If we add them, the answer
# is 7" is a claim ("if" alone is no hedge), and so is a revision: "Wait, the answer is 15".
HEDGE_RE = re.compile(r"\b(?:whether|check|checking|verify|verifying|suppose|assume|assuming|"
                      r"maybe|perhaps|might|could|guess|not sure|unless)\b", re.IGNORECASE)
# Where a claim ends: a sentence end, a question mark, or a clause that explains it
# ("3, since 2 + 1 = 3", "4 is the smallest such n", "10 by plugging it in").
_CLAIM_END_RE = re.compile(
    r"\.(?:\s|$)|\?|,\s*(?:i\.e|e\.g|that is)\b|,?\s+(?:because|since|as|by|which|so|when|where|if|given|using|after|"
    r"from|for|is|are|was|were|satisfies|works)\b", re.IGNORECASE)
MATH_SPAN_RE = re.compile(r"\$\$?[^$]*\$\$?|\\\(.*?\\\)|\\\[.*?\\\]")
SENTENCE_START_RE = re.compile(r"[.!?\n]\s")
# Between two boxes that state one answer together: "$\boxed{2}$ and $\boxed{5}$". (Boxes
# joined by "or" are two forms of one answer, as MATH writes `\boxed{15\frac{39}{40}}`, or
# `\boxed{\frac{639}{40}}`: the last one counts.)
_BOX_JOINER_RE = re.compile(r"[\s$,;]*(?:and[\s$,;]*)?", re.IGNORECASE)


def boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`."""
    found = []
    # One pass over the braces, not one scan per `\boxed{` (unclosed ones made that quadratic).
    closing = closing_braces(text)
    for m in _BOX_RE.finditer(text):
        start = m.end()
        if start < len(text) and text[start] == "{":
            end = closing.get(start)
            if end is not None:                  # unclosed: not an answer
                found.append((m.start(), end + 1, text[start + 1:end].strip()))
        else:
            # `\boxed 5`: the argument runs to the next space or `$`.
            bare = _BARE_ARG_RE.match(text, start)
            if bare:
                found.append((m.start(), bare.end(), bare.group().strip()))
    return found


def _last_boxed(text: str) -> str | None:
    """The last box, with the boxes just before it that state one answer with it
    (`\\boxed{2}` and `\\boxed{5}` are the list `2, 5`)."""
    found = boxes(text)
    if not found:
        return None
    answers = [found[-1]]
    for box in reversed(found[:-1]):
        between = text[box[1]:answers[0][0]]
        if len(between) > 20 or not _BOX_JOINER_RE.fullmatch(between):
            break
        answers.insert(0, box)
    return ", ".join(content for _, _, content in answers)


def _claim(rest: str) -> str | None:
    """The answer in the text after an answer marker: up to the end of its sentence or
    the clause that explains it (never inside `$...$`), math delimiters, emphasis and
    wrapper words removed; None for a remark or a question."""
    rest = rest.lstrip(" \t*_:")
    if not rest.strip():
        return None
    if _NOT_A_CLAIM_RE.match(rest):
        return None
    masked = MATH_SPAN_RE.sub(lambda m: "$" * len(m.group()), rest)
    cut = _CLAIM_END_RE.search(masked, 1)        # the claim itself is at least one character
    if cut and cut.group() == "?":
        return None
    claim = rest[:cut.start()] if cut else rest
    claim = re.sub(r"\\[()\[\]]", " ", claim).replace("$", " ")
    return re.sub(r"\s+", " ", claim).strip(" \t*_") or None


def _last_stated(segment: str) -> str | None:
    """The claim of the last answer marker that makes one (the last answer wins).

    A marker alone at the end of its line ("**Answer:**") claims the next line's text.
    Only the last _MAX_MARKERS markers are tried, each on at most _MAX_CLAIM characters:
    a long line of remarks ("the answer is correct" x 10,000) stays linear."""
    for m in list(_ANSWER_MARK_RE.finditer(segment))[::-1][:_MAX_MARKERS]:
        before = segment[max(0, m.start() - 200):m.start()]
        sentence = SENTENCE_START_RE.split(before)[-1]
        if HEDGE_RE.search(sentence):
            continue
        rest = segment[m.end():m.end() + _MAX_CLAIM]
        line, _, following = rest.partition("\n")
        if not line.strip(" \t*_:"):
            line = following.lstrip("\n").partition("\n")[0]
        claim = _claim(line)
        if claim is not None:
            return claim
    return None


def _extract_from(segment: str, stated: bool = True) -> str | None:
    boxed = _last_boxed(segment)
    if boxed is not None:
        return boxed
    hashes = _HASH_RE.findall(segment)
    if hashes:
        return hashes[-1].strip()
    return _last_stated(segment) if stated else None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution states, or None (see the module docstring)."""
    if not text:
        return None
    if not isinstance(text, str):
        text = str(text)
    if "</think>" in text:
        # The summary after the reasoning states the answer; inside the reasoning only a
        # box counts (a sentence there may be a hypothesis the model went on to reject).
        reasoning, summary = text.rsplit("</think>", 1)
        found = _extract_from(summary)
        return found if found is not None else _extract_from(reasoning, stated=False)
    # Reasoning that never closed (a truncated trace): only a box counts.
    return _extract_from(text, stated="<think>" not in text)
