"""Quality filters on the text of a sample (R1's readability rules, and the
failure modes of long sampling). Each is a small class with a `name`, its
parameters as constructor arguments (set from `config.filters.<name>`), and
`__call__(sample) -> Verdict`."""
from __future__ import annotations

import collections
import re
import unicodedata

from distill_jax.filters.code_exec import extract_code
from distill_jax.filters.math_answer import extract_answer
from distill_jax.filters.sample import THINK_CLOSE, THINK_OPEN, Sample, Verdict, accept, reject


class Truncated:
    """Samples that hit max_new_tokens never finished their thought."""
    name = "truncated"

    def __call__(self, s: Sample) -> Verdict:
        if s.record.get("finish_reason") == "length":
            return reject(self.name, "truncated", f"finish_reason=length at {s.num_tokens} tokens")
        return accept(self.name)


class ThinkFormat:
    """Exactly one <think>...</think> block with some reasoning, then a non-empty
    answer; for math the answer must state a final answer, for code it must hold
    a code block."""
    name = "think_format"

    def __init__(self, require_think: bool = True, require_final_answer: bool = True):
        self.require_think = require_think
        self.require_final_answer = require_final_answer

    def __call__(self, s: Sample) -> Verdict:
        r = s.response
        if self.require_think:
            if not r.lstrip().startswith(THINK_OPEN):
                return reject(self.name, "missing_think_open", "response does not open with <think>")
            if r.count(THINK_OPEN) > 1 or r.count(THINK_CLOSE) > 1:
                return reject(self.name, "multiple_think_blocks",
                              f"{r.count(THINK_OPEN)} <think>, {r.count(THINK_CLOSE)} </think>")
            if THINK_CLOSE not in r:
                return reject(self.name, "missing_think_close", "reasoning never closed")
            if not (s.reasoning or "").strip():
                return reject(self.name, "empty_reasoning")
        if not s.answer.strip():
            return reject(self.name, "empty_answer", "nothing after </think>")
        if self.require_final_answer:
            if s.kind == "code" and extract_code(s.answer) is None:
                return reject(self.name, "no_code_block", "no fenced code block in the answer")
            if s.kind != "code" and extract_answer(s.answer) is None:
                return reject(self.name, "no_final_answer", "no \\boxed{} / #### / 'answer is'")
        return accept(self.name)


class Length:
    """Too short to be a solution or too long to train on (tokens; words if the
    record has no token count). 0 disables a bound."""
    name = "length"

    def __init__(self, min_tokens: int = 0, max_tokens: int = 0):
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def __call__(self, s: Sample) -> Verdict:
        n = s.num_tokens
        if self.min_tokens and n < self.min_tokens:
            return reject(self.name, "too_short", f"{n} < {self.min_tokens} tokens")
        if self.max_tokens and n > self.max_tokens:
            return reject(self.name, "too_long", f"{n} > {self.max_tokens} tokens")
        return accept(self.name)


# Scripts that never count as "foreign": Greek letters are math symbols.
_NEUTRAL_SCRIPTS = {"GREEK", "COMMON"}
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "HANGUL": "HANGUL",
                  "LATIN": "LATIN", "CYRILLIC": "CYRILLIC", "ARABIC": "ARABIC",
                  "HEBREW": "HEBREW", "DEVANAGARI": "DEVANAGARI", "THAI": "THAI",
                  "GREEK": "GREEK"}
# Math, code, LaTeX commands and markup tags (<think>) are not prose in any language.
_MATH_OR_CODE = re.compile(r"```.*?```|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[a-zA-Z]+"
                           r"|</?[A-Za-z_|]+>", re.DOTALL)


def _script(ch: str) -> str:
    try:
        first = unicodedata.name(ch).split()[0]
    except ValueError:
        return "COMMON"
    return _SCRIPT_GROUPS.get(first, first)


def script_counts(text: str) -> collections.Counter:
    """Letters per script, ignoring math, code, LaTeX commands and one-letter words
    (variable names are Latin in every language)."""
    text = _MATH_OR_CODE.sub(" ", text)
    counts: collections.Counter = collections.Counter()
    for word in re.findall(r"\w{2,}", text):
        for ch in word:
            if ch.isalpha():
                counts[_script(ch)] += 1
    return counts


class Language:
    """R1's "language mixing" filter: the response stays in the prompt's script.

    The prompt's script is its most common one; the sample is rejected when more
    than `max_foreign_fraction` of its letters are in another script (Greek never
    counts: it is math notation)."""
    name = "language"

    def __init__(self, max_foreign_fraction: float = 0.02):
        self.max_foreign_fraction = max_foreign_fraction

    def __call__(self, s: Sample) -> Verdict:
        prompt_scripts = script_counts(s.problem)
        for k in _NEUTRAL_SCRIPTS:
            prompt_scripts.pop(k, None)
        if not prompt_scripts:
            return accept(self.name)
        target = prompt_scripts.most_common(1)[0][0]
        counts = script_counts(s.response)
        total = sum(v for k, v in counts.items() if k not in _NEUTRAL_SCRIPTS)
        if not total:
            return accept(self.name)
        foreign = {k: v for k, v in counts.items() if k not in _NEUTRAL_SCRIPTS | {target}}
        fraction = sum(foreign.values()) / total
        if fraction > self.max_foreign_fraction:
            main = max(foreign, key=foreign.get)
            return reject(self.name, "mixed_language",
                          f"{fraction:.1%} of letters are {main} in a {target} prompt")
        return accept(self.name)


class Repetition:
    """Degenerate sampling: many repeated word n-grams, or a tail that loops."""
    name = "repetition"

    def __init__(self, ngram_size: int = 10, max_duplicate_fraction: float = 0.3,
                 max_period_chars: int = 200, min_loop_repeats: int = 4,
                 min_loop_chars: int = 60):
        self.ngram_size = ngram_size
        self.max_duplicate_fraction = max_duplicate_fraction
        self.max_period_chars = max_period_chars
        self.min_loop_repeats = min_loop_repeats
        self.min_loop_chars = min_loop_chars

    def duplicate_fraction(self, text: str) -> float:
        words = text.split()
        n = self.ngram_size
        grams = [tuple(words[k:k + n]) for k in range(len(words) - n + 1)]
        if not grams:
            return 0.0
        return 1.0 - len(set(grams)) / len(grams)

    def looping_period(self, text: str) -> int:
        """The shortest period p such that the text ends in >= min_loop_repeats copies."""
        t = text.rstrip()
        for p in range(1, self.max_period_chars + 1):
            span = p * self.min_loop_repeats
            if span > len(t):
                break
            if span < self.min_loop_chars:
                continue
            tail = t[-span:]
            if tail == tail[:p] * self.min_loop_repeats:
                return p
        return 0

    def __call__(self, s: Sample) -> Verdict:
        period = self.looping_period(s.response)
        if period:
            return reject(self.name, "looping_tail",
                          f"ends in {self.min_loop_repeats}+ copies of a {period}-char span")
        frac = self.duplicate_fraction(s.response)
        if frac > self.max_duplicate_fraction:
            return reject(self.name, "repeated_ngrams",
                          f"{frac:.0%} of {self.ngram_size}-grams are repeats")
        return accept(self.name)


class Readability:
    """R1's readability rules: no wall-of-text paragraphs, and no code blocks in the
    reasoning of a task that is not about code."""
    name = "readability"

    def __init__(self, max_paragraph_chars: int = 3000, allow_code_in_reasoning: bool = False):
        self.max_paragraph_chars = max_paragraph_chars
        self.allow_code_in_reasoning = allow_code_in_reasoning

    def __call__(self, s: Sample) -> Verdict:
        if self.max_paragraph_chars:
            longest = max((len(p) for p in re.split(r"\n\s*\n", s.response)), default=0)
            if longest > self.max_paragraph_chars:
                return reject(self.name, "overlong_paragraph",
                              f"a {longest}-char paragraph (> {self.max_paragraph_chars})")
        if not self.allow_code_in_reasoning and s.kind != "code" and s.reasoning \
                and "```" in s.reasoning:
            return reject(self.name, "code_in_reasoning", "fenced code inside the reasoning")
        return accept(self.name)
