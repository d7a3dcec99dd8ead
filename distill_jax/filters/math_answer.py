"""Final-answer extraction and equivalence for math problems.

`extract_answer(text)` finds what a solution claims as its final answer;
`math_equal(gold, pred)` decides whether two answers are the same.

Extraction, in order of preference:
  1. the text after the last `</think>` (R1 traces: the summary after the
     reasoning is the answer), then the whole text if that has none;
  2. in each, the last `\\boxed{...}` / `\\fbox{...}` (nested braces), else the
     last GSM8K `#### x`, else the last "the (final) answer is x".

Equivalence policy (the choices a grader has to make, made once):
  * Cosmetics never matter: `$`, `\\left`/`\\right`, spacing commands (`\\!`,
    `\\,`, `\\quad`, ...), `\\dfrac`/`\\tfrac`, `\\text{}`/`\\mbox{}` wrappers,
    thousands separators (`10,\\!080`, `58,500`: comma groups of exactly three
    digits), a trailing period, `\\$`.
  * Units are dropped when what is left is a number or an expression:
    `5.4 \\text{ cents}` == `5.4`; `90^\\circ` == `90` (degrees are never
    converted to radians). A lone word (`\\text{Evelyn}`) is compared as text.
  * Percent: `50\\%` == `50`, and also == `0.5` (a percent sign on one side
    only may mean either).
  * Numbers are compared exactly when both are rational (`\\frac{3}{2}` == `1.5`
    == `3/2` == `1\\frac{1}{2}`), otherwise with relative tolerance 1e-6:
    `0.3333` != `1/3` (a rounded decimal is not the exact value), `0.3333333`
    == `1/3`.
  * Equations: `x = 2` == `2` in either direction when the left side is a single
    variable; `y = 2x + 3` == `y = 3 + 2x`; `x \\in [-2,7]` == `[-2,7]`.
  * Sequences: `(a, b)` tuples, points and intervals compare element by element
    and their brackets must match (`(3,4]` != `(3,4)`); a bare list `1, 2` is
    compared with a tuple in order; `\\{...\\}` sets and bare lists compare as
    multisets (answer lists such as "all solutions" are unordered); `a \\pm b`
    is the set {a+b, a-b}; unions of intervals compare part by part.
  * Matrices/vectors (`pmatrix`, `bmatrix`, ...) compare entry by entry.
  * Multiple choice: `(C)`, `\\text{(C)}` and `C` are the same.
  * Symbolic expressions are parsed to sympy (`i` is the imaginary unit, `e`
    Euler's number) and equal when their difference expands to 0 or vanishes
    at random points. Sympy runs in a separate worker process with a hard time
    limit (default 5 s) and a memory cap, so `2^{10^{10}}` or any other
    pathological input costs at most the limit, from any thread; a timeout is
    judged "not equal".
  * `None` or an empty answer on either side is never equal to anything.
"""
from __future__ import annotations

import fractions
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
from typing import Sequence

# ---------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_HASH_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\.\s|\.$|\n|$)",
    re.IGNORECASE)


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the {...} group opening at text[start], and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for k in range(start, len(text)):
        c = text[k]
        if c == "\\" and k + 1 < len(text) and text[k + 1] in "{}":
            continue
        if c == "{" and (k == 0 or text[k - 1] != "\\"):
            depth += 1
        elif c == "}" and (k == 0 or text[k - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1:k], k + 1
    return None


def _last_boxed(text: str) -> str | None:
    for m in reversed(list(_BOX_RE.finditer(text))):
        group = _braced(text, m.end())
        if group is not None:
            return group[0].strip()
        # `\boxed 5`: the argument runs to the next space or `$`.
        bare = re.match(r"([^\s$]+)", text[m.end():])
        if bare and not text[m.end():].startswith("{"):
            return bare.group(1).strip()
    return None


def _extract_from(segment: str) -> str | None:
    boxed = _last_boxed(segment)
    if boxed is not None:
        return boxed
    hashes = _HASH_RE.findall(segment)
    if hashes:
        return hashes[-1].strip()
    answers = _ANSWER_IS_RE.findall(segment)
    if answers:
        ans = answers[-1].strip().strip("$").strip()
        return ans or None
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution states, or None (see the module docstring)."""
    if not text:
        return None
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        found = _extract_from(after)
        if found is not None:
            return found
    return _extract_from(text)


# ---------------------------------------------------------------- normalization

_SPACING = [r"\!", r"\,", r"\;", r"\:", r"\>", r"\quad", r"\qquad", r"\displaystyle",
            r"\left", r"\right", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big", r"\Big"]
_TEXT_CMDS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mbox",
              "operatorname", "mathit")
_UNIT_WORD = r"(?:[a-zA-Z]{2,}\.?)(?:\^?\{?[23]\}?)?"


def _unwrap_text(s: str) -> str:
    out, k = [], 0
    pattern = re.compile(r"\\(" + "|".join(_TEXT_CMDS) + r")\s*(?=\{)")
    while True:
        m = pattern.search(s, k)
        if not m:
            out.append(s[k:])
            return "".join(out)
        group = _braced(s, m.end())
        if group is None:
            out.append(s[k:])
            return "".join(out)
        out.append(s[k:m.start()])
        out.append(group[0])
        k = group[1]


def _normalize(s: str) -> tuple[str, bool]:
    """Canonical text of an answer, and whether it carried a percent sign."""
    s = s.strip()
    s = s.replace("\\$", "").replace("$", "")
    for cmd in _SPACING:
        # `\left(` -> `(`; the command must not be a prefix of a longer name.
        s = re.sub(re.escape(cmd) + r"(?![a-zA-Z])", " ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _unwrap_text(s)
    s = s.replace("\\%", "%")
    percent = s.rstrip(" .").endswith("%")
    s = s.replace("%", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
    s = re.sub(r"\s*\b(?:degrees?|deg)\b\s*$", "", s)
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = s.replace("\\neq", "\\ne")
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)
    s = s.strip()
    s = re.sub(r"\.\s*$", "", s)                  # "5." at the end of a sentence
    s = _strip_units(s)
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)      # x \in [a,b]
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"^\\text\{\s*\}", "", s)
    return s, percent


def _strip_units(s: str) -> str:
    """`864 inches^2` -> `864`; only when a number or expression stays."""
    m = re.match(r"^(.*?[\d})a-zA-Z\\])\s+(" + _UNIT_WORD + r"(?:\s+" + _UNIT_WORD + r")*)$", s)
    if m and re.search(r"\d", m.group(1)):
        return m.group(1)
    m = re.match(r"^(-?[\d.,]+)\s*(" + _UNIT_WORD + r")$", s)   # "5cm"
    if m:
        return m.group(1)
    return s


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
    if s.startswith("\\{") and s.endswith("\\}"):
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


_MATRIX_RE = re.compile(r"^\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}$",
                        re.DOTALL)


def _matrix(s: str) -> list[list[str]] | None:
    m = _MATRIX_RE.match(s)
    if not m:
        return None
    rows = [r for r in m.group(2).split("\\\\") if r.strip()]
    return [[c.strip() for c in r.split("&")] for r in rows]


_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


# ---------------------------------------------------------------- numbers

_FRAC_RE = re.compile(r"^\\frac(?:\{(-?[\d.]+)\}|(\d))(?:\{(-?[\d.]+)\}|(\d))$")
_MIXED_RE = re.compile(r"^(-?\d+)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))$")
_SCI_RE = re.compile(r"^(-?\d*\.?\d+)(?:e|E|\\times10\^\{?|\*10\*\*\(?)(-?\d+)\}?\)?$")


def _to_number(s: str) -> fractions.Fraction | float | None:
    """A plain number in any of the written forms above, else None. Never slow."""
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    sign = 1
    if s.startswith("-") and not s.startswith("--"):
        sign, s = -1, s[1:]
    elif s.startswith("+"):
        s = s[1:]
    try:
        if re.fullmatch(r"\d+|\d*\.\d+|\d+\.", s):
            return sign * fractions.Fraction(s)
        m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
        if m:
            return sign * fractions.Fraction(int(m.group(1)), int(m.group(2)))
        m = _FRAC_RE.match(s)
        if m:
            num = fractions.Fraction(m.group(1) or m.group(2))
            den = fractions.Fraction(m.group(3) or m.group(4))
            return sign * num / den
        m = _MIXED_RE.match(s)
        if m:
            whole = int(m.group(1))
            frac = fractions.Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5)))
            return sign * (whole + frac)
        m = _SCI_RE.match(s)
        if m:
            exponent = int(m.group(2))
            if abs(exponent) > 400:              # beyond float range: compare as floats
                return sign * float(f"{m.group(1)}e{exponent}")
            return sign * fractions.Fraction(m.group(1)) * fractions.Fraction(10) ** exponent
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _numbers_equal(a, b, rel_tol: float = 1e-6) -> bool:
    if isinstance(a, fractions.Fraction) and isinstance(b, fractions.Fraction) and a == b:
        return True
    try:
        fa, fb = float(a), float(b)
    except OverflowError:
        return False
    if math.isinf(fa) or math.isinf(fb):
        return fa == fb
    return abs(fa - fb) <= rel_tol * max(1.0, abs(fb))


# ---------------------------------------------------------------- equality


def math_equal(gold: str | None, pred: str | None, timeout_s: float = 5.0) -> bool:
    """Whether `pred` states the same answer as `gold` (policy: module docstring)."""
    if gold is None or pred is None:
        return False
    g, g_pct = _normalize(str(gold))
    p, p_pct = _normalize(str(pred))
    if not g or not p:
        return False
    return _equal(g, p, g_pct, p_pct, timeout_s)


def _equal(g: str, p: str, g_pct: bool = False, p_pct: bool = False,
           timeout_s: float = 5.0) -> bool:
    if g == p:
        return True
    letter_g, letter_p = _choice_letter(g), _choice_letter(p)
    if letter_g or letter_p:
        return letter_g == letter_p and letter_g is not None

    # Equations: strip a single-variable left side when the other answer has none.
    g_eq, p_eq = _equation(g), _equation(p)
    if g_eq and p_eq:
        if g_eq[0] == p_eq[0]:
            return _equal(g_eq[1], p_eq[1], timeout_s=timeout_s)
        return _symbolic_equal(f"{g_eq[0]}-({g_eq[1]})", f"{p_eq[0]}-({p_eq[1]})", timeout_s)
    if g_eq and _is_variable(g_eq[0]) and "=" not in p:
        return _equal(g_eq[1], p, g_pct, p_pct, timeout_s)
    if p_eq and _is_variable(p_eq[0]) and "=" not in g:
        return _equal(g, p_eq[1], g_pct, p_pct, timeout_s)

    gm, pm = _matrix(g), _matrix(p)
    if gm is not None or pm is not None:
        if gm is None or pm is None or [len(r) for r in gm] != [len(r) for r in pm]:
            return False
        return all(_equal(a, b, timeout_s=timeout_s)
                   for ra, rb in zip(gm, pm) for a, b in zip(ra, rb))

    if "\\cup" in g or "\\cup" in p:
        gu, pu = g.split("\\cup"), p.split("\\cup")
        return len(gu) == len(pu) and all(_equal(a, b, timeout_s=timeout_s)
                                          for a, b in zip(gu, pu))

    g_seq, p_seq = _sequence(g), _sequence(p)
    if g_seq is not None or p_seq is not None:
        return _sequences_equal(g_seq or ("", [g], ""), p_seq or ("", [p], ""), timeout_s)

    gn, pn = _to_number(g), _to_number(p)
    if gn is not None and pn is not None:
        if _numbers_equal(gn, pn):
            return True
        if g_pct != p_pct:   # "50%" vs "0.5": the percent side over 100
            if g_pct:
                return _numbers_equal(gn / 100, pn)
            return _numbers_equal(gn, pn / 100)
        return False
    return _symbolic_equal(g, p, timeout_s)


def _choice_letter(s: str) -> str | None:
    m = re.fullmatch(r"\(?([A-E])\)?", s)
    return m.group(1) if m else None


def _equation(s: str) -> tuple[str, str] | None:
    if s.count("=") != 1 or any(op in s for op in ("\\leq", "\\geq", "<", ">")):
        return None
    lhs, rhs = s.split("=")
    return (lhs, rhs) if lhs and rhs else None


def _is_variable(s: str) -> bool:
    return re.fullmatch(r"[a-zA-Z](?:_\w+)?|\\[a-zA-Z]+", s) is not None


def _sequence(s: str) -> tuple[str, list[str], str] | None:
    """(open, items, close) for tuples, intervals, sets, ± pairs and bare lists."""
    br = _bracketed(s)
    if br is not None:
        items = _split_top(br[1])
        if br[0] == "{":
            return "{", _expand_pm(items), "}"
        return (br[0], items, br[2]) if len(items) >= 2 else None
    if "\\pm" in s and "," not in s:
        return "{", _expand_pm([s]), "}"
    items = _split_top(s)
    if len(items) >= 2 and not _THOUSANDS_RE.match(s):
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
                     timeout_s: float) -> bool:
    (ao, ai, ac), (bo, bi, bc) = a, b
    if len(ai) != len(bi):
        return False
    unordered = ao == "{" or bo == "{" or (ao == "" and bo == "")
    if not unordered and ao and bo and (ao, ac) != (bo, bc):
        return False
    if not unordered:
        return all(_equal(x, y, timeout_s=timeout_s) for x, y in zip(ai, bi))
    remaining = list(bi)
    for x in ai:
        for k, y in enumerate(remaining):
            if _equal(x, y, timeout_s=timeout_s):
                del remaining[k]
                break
        else:
            return False
    return True


# ---------------------------------------------------------------- symbolic (sympy)

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh",
          "cosh", "tanh", "log", "ln", "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "phi", "lambda", "mu", "sigma", "omega",
          "tau", "rho", "epsilon", "psi", "eta", "nu", "xi", "zeta", "kappa", "chi"}
_IDENTIFIERS = {"sqrt", "pi", "oo", "I", "E", "binomial", "Abs", "root"} | _FUNCS | _GREEK
_SAFE_CHARS = re.compile(r"^[0-9A-Za-z_+\-*/().,\s!]*$")


class LatexConversionError(ValueError):
    pass


def latex_to_sympy(s: str) -> str:
    """A LaTeX answer as a string `sympy.parse_expr` reads, from a whitelisted alphabet.

    Only digits, operators, brackets, single-letter symbols and known function
    names survive, so the string is safe to hand to sympy's parser.
    """
    out: list[str] = []
    k = 0
    n = len(s)

    def group_at(k: int) -> tuple[str, int]:
        while k < n and s[k] == " ":
            k += 1
        if k < n and s[k] == "{":
            g = _braced(s, k)
            if g is None:
                raise LatexConversionError(f"unbalanced braces in {s!r}")
            return latex_to_sympy(g[0]), g[1]
        if k < n and s[k] == "\\":
            m = re.match(r"\\[a-zA-Z]+", s[k:])
            if m:
                return latex_to_sympy(m.group(0)), k + m.end()
        if k < n:
            return latex_to_sympy(s[k]), k + 1
        raise LatexConversionError(f"missing argument in {s!r}")

    while k < n:
        c = s[k]
        if c == "\\":
            m = re.match(r"\\([a-zA-Z]+)", s[k:])
            if not m:
                if s.startswith("\\{", k) or s.startswith("\\}", k):
                    out.append("(" if s[k + 1] == "{" else ")")
                    k += 2
                    continue
                raise LatexConversionError(f"unsupported {s[k:k + 2]!r} in {s!r}")
            name = m.group(1)
            k += m.end()
            if name == "frac" or name == "binom":
                num, k = group_at(k)
                den, k = group_at(k)
                out.append(f"(({num})/({den}))" if name == "frac" else f"binomial({num},{den})")
            elif name == "sqrt":
                if k < n and s[k] == "[":
                    close = s.index("]", k)
                    index = latex_to_sympy(s[k + 1:close])
                    arg, k = group_at(close + 1)
                    out.append(f"(({arg})**(1/({index})))")
                else:
                    arg, k = group_at(k)
                    out.append(f"sqrt({arg})")
            elif name == "pi":
                out.append(" pi ")
            elif name == "infty":
                out.append(" oo ")
            elif name in ("cdot", "times", "ast"):
                out.append("*")
            elif name == "div":
                out.append("/")
            elif name in _FUNCS:
                out.append(" log " if name == "ln" else f" {name.replace('arc', 'a')} ")
            elif name in _GREEK:
                out.append(f" {name} ")
            else:
                raise LatexConversionError(f"unsupported command \\{name} in {s!r}")
            continue
        if c == "^":
            arg, k = group_at(k + 1)
            out.append(f"**({arg})")
            continue
        if c in "{[":
            out.append("(")
        elif c in "}]":
            out.append(")")
        elif c == "i" and not (k + 1 < n and s[k + 1].isalpha()) and not (
                k > 0 and s[k - 1].isalpha()):
            out.append(" I ")
        elif c == "e" and not (k + 1 < n and s[k + 1].isalpha()) and not (
                k > 0 and s[k - 1].isalpha()):
            out.append(" E ")
        elif c.isalpha():
            # Letters outside a known name are single-letter symbols: "xy" = x*y.
            m = re.match(r"[a-zA-Z]+", s[k:])
            word = m.group(0)
            if word in _IDENTIFIERS:
                out.append(f" {word} ")
                k += len(word)
                continue
            out.append(" " + " ".join(word) + " ")
            k += len(word)
            continue
        elif c == "|":
            raise LatexConversionError(f"absolute value bars are not supported: {s!r}")
        else:
            out.append(c)
        k += 1
    text = "".join(out)
    if not _SAFE_CHARS.match(text):
        raise LatexConversionError(f"unsafe characters after conversion of {s!r}")
    for word in re.findall(r"[A-Za-z_]+", text):
        if len(word) > 1 and word not in _IDENTIFIERS:
            raise LatexConversionError(f"unknown name {word!r} in {s!r}")
    return text


def _symbolic_equal(g: str, p: str, timeout_s: float) -> bool:
    try:
        ga, pa = latex_to_sympy(g), latex_to_sympy(p)
    except (LatexConversionError, ValueError):
        return False
    return _symbolic_checker().equal(ga, pa, timeout_s)


class SymbolicChecker:
    """A sympy worker process with a hard per-call time limit.

    Sympy can hang in C code (huge integer powers) where no signal or thread
    can stop it, so it runs in a child process that is killed and restarted on
    timeout. Calls are serialized by a lock and work from any thread.
    """

    def __init__(self, memory_limit_bytes: int = 2 << 30):
        self.memory_limit_bytes = memory_limit_bytes
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.timeouts = 0

    def _start(self) -> subprocess.Popen:
        # A script path, not `-m`: the worker imports nothing of ours, and `-I`
        # keeps the caller's PYTHON* variables and user site out of it.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "DISTILL_SYMPY_MEMORY": str(self.memory_limit_bytes)}
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.join(os.path.dirname(__file__), "sympy_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1)
        # Importing sympy takes a second or more; it is not part of any call's limit.
        ready, _, _ = select.select([proc.stdout], [], [], 120.0)
        if not ready or proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError("the sympy worker process did not start")
        return proc

    def equal(self, a: str, b: str, timeout_s: float = 5.0) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                proc.stdin.write(json.dumps({"a": a, "b": b}) + "\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
                if not ready:
                    raise TimeoutError
                line = proc.stdout.readline()
                if not line:
                    raise TimeoutError      # the worker died (e.g. at its memory cap)
                return bool(json.loads(line).get("equal"))
            except (TimeoutError, OSError, ValueError):
                self.timeouts += 1
                self._kill()
                return False

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()


_CHECKER: SymbolicChecker | None = None
_CHECKER_LOCK = threading.Lock()


def _symbolic_checker() -> SymbolicChecker:
    global _CHECKER
    with _CHECKER_LOCK:
        if _CHECKER is None:
            _CHECKER = SymbolicChecker()
        return _CHECKER


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
