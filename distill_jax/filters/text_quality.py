"""Quality filters on the text of a sample (R1's readability rules, and the
failure modes of long sampling). Each is a small class with a `name`, its
parameters as constructor arguments (set from `config.filters.<name>`), and
`__call__(sample) -> Verdict`."""
from __future__ import annotations

import collections
import functools
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
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "IDEOGRAPHIC": "CJK",
                  "KATAKANA-HIRAGANA": "CJK", "BOPOMOFO": "CJK", "HANGUL": "HANGUL",
                  "LATIN": "LATIN", "CYRILLIC": "CYRILLIC", "ARABIC": "ARABIC",
                  "HEBREW": "HEBREW", "DEVANAGARI": "DEVANAGARI", "THAI": "THAI",
                  "GREEK": "GREEK",
                  # Letters that are symbols, not writing: 𝑥 ℝ ℓ ⁿ ª º µ ʼ.
                  "MATHEMATICAL": "COMMON", "DOUBLE-STRUCK": "COMMON", "SCRIPT": "COMMON",
                  "BLACK-LETTER": "COMMON", "SUPERSCRIPT": "COMMON", "SUBSCRIPT": "COMMON",
                  "MODIFIER": "COMMON", "FEMININE": "COMMON", "MASCULINE": "COMMON",
                  "MICRO": "COMMON"}
# Letterlike Symbols (ℏ ℵ ℕ K-sign) and Mathematical Alphanumeric Symbols.
_NEUTRAL_RANGES = ((0x2100, 0x214F), (0x1D400, 0x1D7FF))
# Scripts written without spaces between words (or, for Hangul, with one syllable per
# character): a run of them is measured in characters, other scripts in words.
_UNSPACED_SCRIPTS = {"CJK", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN", "YI"}
# Latin words that are math notation in every language (sin²x + cos²x = 1 in Chinese).
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp lim max min "
    "sup inf mod gcd lcm det dim ker deg arg sgn tr rank sqrt".split())
# Math, code, LaTeX commands and markup tags (<think>) are not prose in any language.
_MATH_OR_CODE = re.compile(r"```.*?```|`[^`\n]+`|\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]"
                           r"|\\[a-zA-Z]+|</?[A-Za-z_|]+>", re.DOTALL)


@functools.lru_cache(maxsize=1 << 14)
def _script(ch: str) -> str:
    if any(lo <= ord(ch) <= hi for lo, hi in _NEUTRAL_RANGES):
        return "COMMON"
    try:
        words = unicodedata.name(ch).split()
    except ValueError:
        return "COMMON"
    first = words[1] if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1 else words[0]
    return _SCRIPT_GROUPS.get(first, first)


class _Word(collections.namedtuple("_Word", "start end text script letters neutral")):
    """A word of one non-neutral script; `neutral` when it is notation, not prose."""
    __slots__ = ()

    def key(self) -> str:
        return self.text.casefold()


_LETTER = re.compile(r"[^\W\d_]")          # where the next letter may be (a superset)
_ASCII_LETTERS = re.compile(r"[A-Za-z]+")
_ASCII_CAMEL = re.compile(r"[a-z][A-Z]")


def _words(text: str) -> list[_Word]:
    """The words of `text` outside math and code, at their offsets in `text`.

    A word is a maximal stretch of letters of one script (with their combining marks,
    and for spaced scripts joined across `-` and `'`: Cauchy-Schwarz, don't); for an
    unspaced script (CJK) it is a stretch of characters between other things. It is
    neutral (notation, not prose) when it is a one-letter word of a spaced script (a
    variable), a math function name (sin, gcd), an acronym (AM-GM, BFS), camelCase,
    or glued to code or digits (x1, dp_i, nums.sort, len(, 3rd).

    The scan is per character; regexes skip what cannot start a word and the ASCII
    letters inside one (most of an English trace), which makes a 6k-token trace ~4x
    faster without changing a word (tests/filters/test_text_quality.py compares it
    with a plain per-character scan on random text)."""
    t = _MATH_OR_CODE.sub(lambda m: " " * len(m.group()), text)
    out, n = [], len(t)
    m = _LETTER.search(t)
    i = m.start() if m else n
    while i < n:
        sc = _script(t[i]) if t[i].isalpha() else "COMMON"
        if sc in _NEUTRAL_SCRIPTS:
            m = _LETTER.search(t, i + 1)
            i = m.start() if m else n
            continue
        j = i + 1
        while j < n:
            c = t[j]
            if sc == "LATIN" and c.isascii():
                ascii_run = _ASCII_LETTERS.match(t, j)
                if ascii_run:
                    j = ascii_run.end()
                    continue
            if c.isalpha() and _script(c) == sc or unicodedata.category(c).startswith("M"):
                j += 1
            elif (c in "-'’" and sc not in _UNSPACED_SCRIPTS and j + 1 < n
                  and t[j + 1].isalpha() and _script(t[j + 1]) == sc):
                j += 1
            else:
                break
        out.append(_word(t, i, j, sc))
        m = _LETTER.search(t, j)
        i = m.start() if m else n
    return out


def _word(t: str, i: int, j: int, sc: str) -> _Word:
    word, n = t[i:j], len(t)
    if word.isascii():      # the common case, with C-level string methods
        letters = len(word) - word.count("-") - word.count("'")
        acronym = letters >= 2 and word.isupper()
        camel = _ASCII_CAMEL.search(word) is not None
    else:
        letters = sum(ch.isalpha() for ch in word)
        cased = [ch for ch in word if ch.isalpha() and ch.lower() != ch.upper()]
        acronym = len(cased) >= 2 and all(ch.isupper() for ch in cased)
        camel = any(a.islower() and b.isupper() for a, b in zip(word, word[1:]))
    neutral = False
    if sc not in _UNSPACED_SCRIPTS:
        before, after = t[i - 1] if i else " ", t[j] if j < n else " "
        glued = (before.isdigit() or before == "_"
                 or before == "." and i > 1 and (t[i - 2].isalnum() or t[i - 2] == "_")
                 or after.isdigit() or after in "_([" or after == "." and j + 1 < n
                 and (t[j + 1].isalnum() or t[j + 1] == "_"))
        neutral = (letters < 2 or glued or acronym or camel
                   or word.casefold() in _MATH_WORDS)
    return _Word(i, j, word, sc, letters, neutral)


def script_counts(text: str) -> collections.Counter:
    """Letters per script in the prose of `text`: the words of `_words` that are not
    notation (math, code, LaTeX commands, tags, one-letter variables, math function
    names, acronyms and identifiers do not count)."""
    return _letter_counts(_words(text))


def _letter_counts(words: list[_Word]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for w in words:
        if not w.neutral:
            counts[w.script] += w.letters
    return counts


def _script_units(words: list[_Word]) -> collections.Counter:
    """Prose per script, in words (characters for unspaced scripts)."""
    units: collections.Counter = collections.Counter()
    for w in words:
        if not w.neutral:
            units[w.script] += w.letters if w.script in _UNSPACED_SCRIPTS else 1
    return units


class Language:
    """R1's "language mixing" filter: the response stays in the prompt's script.

    The expected script is the prompt's main one, counted in words (characters for
    CJK and other unspaced scripts, so a Chinese prompt that names `two_sum` or
    Python is still Chinese); a prompt with no prose (pure math) expects the
    response's own main script. Two rules, in this order:

    * fraction: more than `max_foreign_fraction` of the response's letters are in
      another script (`mixed_language`);
    * run: a contiguous run of another script, spaces, punctuation, digits and
      math allowed inside it, is at least `min_foreign_run` long (`foreign_run`):
      characters for unspaced scripts (CJK, Hangul, Thai...), words of at least
      `min_foreign_word_letters` letters for spaced ones (Cyrillic, Latin, Arabic...).
      This is the one that catches "... which 可以通过递推公式来计算 the next term",
      a clause that is 0.1% of a long trace. 0 disables it.

    Neutral everywhere: math ($...$, \\(...\\), LaTeX commands), code (fenced and
    inline), tags, digits, punctuation (CJK punctuation too), symbols and emoji,
    Greek and math letters (α π 𝑥 ℝ ℵ), one-letter words (variables), math
    function names (sin, gcd), acronyms, identifiers (x1, dp_i, maxSum, len(...)).
    Words that also occur in the prompt count for nothing in a run: quoting the
    problem (a Cyrillic name in a history problem) is not switching language.

    Defaults: `min_foreign_run=2`, i.e. two CJK characters (the shortest Chinese
    words, 可以 / 所以 / 计算, are two) or two foreign words of >= 3 letters. One
    CJK character alone passes (a quoted character or unit), and so does one
    foreign word (a name such as Пётр or Fibonacci, a term, "Wait"): a single word
    is most often a name, and a clause of mixing has at least two. Accented Latin
    (café, Erdős) is Latin: this filter sees scripts, not languages, so French or
    Vietnamese inside English reasoning is out of its reach.
    """
    name = "language"

    def __init__(self, max_foreign_fraction: float = 0.02, min_foreign_run: int = 2,
                 min_foreign_word_letters: int = 3):
        self.max_foreign_fraction = max_foreign_fraction
        self.min_foreign_run = min_foreign_run
        self.min_foreign_word_letters = min_foreign_word_letters

    def _units(self, w: _Word, prompt_words: set[str], prompt: str) -> int:
        if w.script in _UNSPACED_SCRIPTS:
            return 0 if w.text in prompt else w.letters
        if w.key() in prompt_words or w.letters < self.min_foreign_word_letters:
            return 0
        return 1

    def foreign_runs(self, words: list[_Word], target: str, prompt_words: set[str],
                     prompt: str) -> list[tuple[str, int, int, int]]:
        """(script, units, start, end) of every maximal run of a script other than
        `target`; a non-neutral word of another script ends a run."""
        runs: list[list] = []
        current = None
        for w in words:
            if w.neutral:
                continue
            if w.script == target:
                current = None
                continue
            if current is None or current[0] != w.script:
                current = [w.script, 0, w.start, w.end]
                runs.append(current)
            current[1] += self._units(w, prompt_words, prompt)
            current[3] = w.end
        return [tuple(r) for r in runs]

    def __call__(self, s: Sample) -> Verdict:
        prompt_words = _words(s.problem)
        response_words = _words(s.response)
        prompt_units = _script_units(prompt_words)
        where = "prompt"
        if not prompt_units:
            prompt_units, where = _script_units(response_words), "response"
            if not prompt_units:
                return accept(self.name)
        target = prompt_units.most_common(1)[0][0]

        counts = _letter_counts(response_words)
        total = sum(v for k, v in counts.items() if k not in _NEUTRAL_SCRIPTS)
        foreign = {k: v for k, v in counts.items() if k not in _NEUTRAL_SCRIPTS | {target}}
        fraction = sum(foreign.values()) / total if total else 0.0
        if fraction > self.max_foreign_fraction:
            main = max(foreign, key=foreign.get)
            return reject(self.name, "mixed_language",
                          f"{fraction:.1%} of letters are {main} in a {target} {where}")

        if self.min_foreign_run > 0:
            keys = {w.key() for w in prompt_words}
            runs = [r for r in self.foreign_runs(response_words, target, keys, s.problem)
                    if r[1] >= self.min_foreign_run]
            if runs:
                script, units, start, end = max(runs, key=lambda r: r[1])
                quote = " ".join(s.response[start:end].split())
                if len(quote) > 60:
                    quote = quote[:59] + "…"
                unit = "character" if script in _UNSPACED_SCRIPTS else "word"
                more = f" (and {len(runs) - 1} more)" if len(runs) > 1 else ""
                return reject(self.name, "foreign_run",
                              f"a {units}-{unit} {script} run in a {target} {where}: "
                              f"\"{quote}\"{more}")
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
