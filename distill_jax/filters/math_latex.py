"""LaTeX answers as text: brace groups, and conversion to a string sympy parses safely.

`latex_to_sympy` whitelists its output alphabet, so what reaches `sympy.parse_expr` (in
the worker process, symbolic_checker.py) cannot be anything but arithmetic on known names.
"""
from __future__ import annotations

import re

_MAX_LATEX_DEPTH = 50       # nested {...} arguments in latex_to_sympy
# An unescaped brace: `\{` and `\}` are literal braces, not groups.
_BRACE_RE = re.compile(r"(?<!\\)[{}]")


def braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the {...} group opening at text[start], and the index after it."""
    if start >= len(text) or text[start] != "{" or (start > 0 and text[start - 1] == "\\"):
        return None
    depth = 0
    for m in _BRACE_RE.finditer(text, start):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start + 1:m.start()], m.end()
    return None


def closing_braces(text: str) -> dict[int, int]:
    """Index of each unescaped `{` that is closed -> index of its `}`, in one pass."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return closing


# ---------------------------------------------------------------- symbolic (sympy)

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh",
          "cosh", "tanh", "log", "ln", "exp"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "phi", "lambda", "mu", "sigma", "omega",
          "tau", "rho", "epsilon", "psi", "eta", "nu", "xi", "zeta", "kappa", "chi"}
_IDENTIFIERS = {"sqrt", "pi", "oo", "I", "E", "binomial", "Abs", "root"} | _FUNCS | _GREEK
_SAFE_CHARS = re.compile(r"^[0-9A-Za-z_+\-*/().,\s!]*$", re.ASCII)
_LEADING_ZEROS_RE = re.compile(r"(?<![\w.])0+(?=\d)", re.ASCII)
_COMMAND_RE = re.compile(r"\\([a-zA-Z]+)")
_WORD_RE = re.compile(r"[a-zA-Z]+")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class LatexConversionError(ValueError):
    pass


def latex_to_sympy(s: str, _depth: int = 0) -> str:
    """A LaTeX answer as a string `sympy.parse_expr` reads, from a whitelisted alphabet.

    Only digits, operators, brackets, single-letter symbols and known function
    names survive, so the string is safe to hand to sympy's parser. Anything else
    (unknown commands, unbalanced groups, non-ASCII letters, arguments nested more
    than _MAX_LATEX_DEPTH deep) raises LatexConversionError.
    """
    if _depth > _MAX_LATEX_DEPTH:
        raise LatexConversionError("arguments nested too deeply")
    out: list[str] = []
    k = 0
    n = len(s)

    def group_at(k: int) -> tuple[str, int]:
        while k < n and s[k] == " ":
            k += 1
        if k < n and s[k] == "{":
            g = braced(s, k)
            if g is None:
                raise LatexConversionError(f"unbalanced braces in {s!r}")
            return latex_to_sympy(g[0], _depth + 1), g[1]
        if k < n and s[k] == "\\":
            m = _COMMAND_RE.match(s, k)
            if m:
                return latex_to_sympy(m.group(0), _depth + 1), m.end()
        if k < n:
            return latex_to_sympy(s[k], _depth + 1), k + 1
        raise LatexConversionError(f"missing argument in {s!r}")

    while k < n:
        c = s[k]
        if c == "\\":
            m = _COMMAND_RE.match(s, k)
            if not m:
                if s.startswith("\\{", k) or s.startswith("\\}", k):
                    out.append("(" if s[k + 1] == "{" else ")")
                    k += 2
                    continue
                raise LatexConversionError(f"unsupported {s[k:k + 2]!r} in {s!r}")
            name = m.group(1)
            k = m.end()
            if name == "frac" or name == "binom":
                num, k = group_at(k)
                den, k = group_at(k)
                out.append(f"(({num})/({den}))" if name == "frac" else f"binomial({num},{den})")
            elif name == "sqrt":
                if k < n and s[k] == "[":
                    close = s.find("]", k)
                    if close < 0:
                        raise LatexConversionError(f"unclosed root index in {s!r}")
                    index = latex_to_sympy(s[k + 1:close], _depth + 1)
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
                if k < n and s[k] in "_^":
                    # `\log_2 8`, `\sin^2 x`: a base or power on the function name.
                    raise LatexConversionError(f"\\{name}{s[k]} is not supported: {s!r}")
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
        elif c in _ASCII_LETTERS:
            # Letters outside a known name are single-letter symbols: "xy" = x*y.
            # (ASCII only: `str.isalpha` also accepts `π`, which the pattern does not.)
            word = _WORD_RE.match(s, k).group()
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
            out.append(c)                # anything unsafe is refused below
        k += 1
    # `055` is 55 (AIME answers are written with three digits); sympy's parser would
    # read it as 0 times 55.
    text = _LEADING_ZEROS_RE.sub("", "".join(out))
    if not _SAFE_CHARS.match(text):
        raise LatexConversionError(f"unsafe characters after conversion of {s!r}")
    for word in re.findall(r"[A-Za-z_]+", text):
        if len(word) > 1 and word not in _IDENTIFIERS:
            raise LatexConversionError(f"unknown name {word!r} in {s!r}")
    return text

