"""Plain numbers as written, compared exactly or as roundings (policy: math_answer)."""
from __future__ import annotations

import dataclasses
import fractions
import math
import re

# Commas inside a number, read on the text as written (before spaces are squeezed
# out: a comma followed by a space always separates answers, `0, 25` is two).
# Thousands separators: comma groups of exactly three digits after a first group of
# one to three that does not start with 0 (`1,000.99`, `58,500`).
_THOUSANDS_RE = re.compile(r"(?<![\d,.])[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?(?![\d,])", re.ASCII)
# A decimal comma, where nothing else can be meant: the integer part is 0 or has four
# or more digits and two or more digits follow (`0,111`, `0,25`, `1000,99`). `1,5`,
# `12,5` or `0,1` may be a list of two answers and are read as one.
_DECIMAL_COMMA_RE = re.compile(r"(?<![\d,.])(0|[1-9]\d{3,}),(\d{2,})(?![\d,.])", re.ASCII)


def read_number_commas(s: str) -> str:
    """`1,000.99` -> `1000.99`, `0,111` -> `0.111`; other commas are left as they are."""
    if "," not in s:
        return s
    s = _THOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s)
    return _DECIMAL_COMMA_RE.sub(r"\1.\2", s)


_MAX_DIGITS = 4_000        # below Python's int-from-string limit (4,300 digits)
_MAX_EXPONENT = 10_000     # 10**10_000 is cheap; 1e1000000000 is compared as written
_REL_TOL = fractions.Fraction(1, 10 ** 6)
_MIN_DIGITS = 6

# Mantissas are unambiguous (`\d+(?:\.\d+)?`, not `\d*\.?\d+`): the ambiguous form
# backtracked quadratically over a long run of digits.
_PLAIN_RE = re.compile(r"(\d+)(?:\.(\d*))?|\.(\d+)", re.ASCII)
_SCI_RE = re.compile(r"(?:(\d+)(?:\.(\d+))?|\.(\d+))"
                     r"(?:e|E|\\times10\^\{?|\*10\*\*\(?)(-?\d+)\}?\)?", re.ASCII)
_RATIO_RE = re.compile(r"(-?\d+)/(-?\d+)", re.ASCII)
_FRAC_RE = re.compile(r"\\frac(?:\{(-?[\d.]+)\}|(\d))(?:\{(-?[\d.]+)\}|(\d))", re.ASCII)
_MIXED_RE = re.compile(r"(-?\d+)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", re.ASCII)
_WORKER_FLOAT_RE = re.compile(r"(-?)(\d+)(?:\.(\d*))?(?:e([+-]?\d+))?", re.ASCII)


@dataclasses.dataclass(frozen=True)
class _Number:
    """A plain number as written.

    value: its exact value (None when too large to hold: see _MAX_DIGITS/_MAX_EXPONENT).
    decimal: (sign, digits, exponent) with value = sign * int(digits) * 10**exponent and
      no trailing zeros in digits, for integers and terminating decimals (None for
      fractions): equal decimals have equal tuples, at any size.
    unit: for a number written with a decimal point or an exponent, one unit of its
      last written digit (None for integers and fractions, which are never roundings).
    significant: digits written from the first nonzero one.
    """
    value: fractions.Fraction | None
    decimal: tuple[int, str, int] | None = None
    unit: fractions.Fraction | None = None
    significant: int = 0


def _decimal(sign: int, whole: str, frac: str, exponent: int, as_decimal: bool) -> _Number:
    digits = (whole + frac).lstrip("0")
    exponent -= len(frac)
    core = digits.rstrip("0")
    if not core:
        return _Number(fractions.Fraction(0), (0, "", 0),
                       _pow10(exponent) if as_decimal else None, 0)
    canonical_exp = exponent + len(digits) - len(core)
    value = None
    if len(core) <= _MAX_DIGITS and abs(canonical_exp) <= _MAX_EXPONENT:
        value = sign * int(core) * _pow10(canonical_exp)
    unit = _pow10(exponent) if as_decimal and value is not None else None
    return _Number(value, (sign, core, canonical_exp), unit, len(digits))


def _pow10(exponent: int) -> fractions.Fraction | None:
    if abs(exponent) > _MAX_EXPONENT:
        return None
    return fractions.Fraction(10) ** exponent


def _to_number(s: str) -> _Number | None:
    """A plain number in any of the written forms above, else None. Never slow."""
    sign = 1
    if s.startswith("-") and not s.startswith("--"):
        sign, s = -1, s[1:]
    elif s.startswith("+"):
        s = s[1:]
    try:
        m = _PLAIN_RE.fullmatch(s)
        if m:
            if m.group(3) is not None:               # ".5"
                return _decimal(sign, "", m.group(3), 0, True)
            return _decimal(sign, m.group(1), m.group(2) or "", 0, m.group(2) is not None)
        m = _SCI_RE.fullmatch(s)
        if m:
            whole, frac = (m.group(1), m.group(2) or "") if m.group(1) else ("", m.group(3))
            return _decimal(sign, whole, frac, int(m.group(4)), True)
        m = _RATIO_RE.fullmatch(s)
        if m:
            return _Number(sign * fractions.Fraction(int(m.group(1)), int(m.group(2))))
        m = _FRAC_RE.fullmatch(s)
        if m:
            num = fractions.Fraction(m.group(1) or m.group(2))
            den = fractions.Fraction(m.group(3) or m.group(4))
            return _Number(sign * num / den)
        m = _MIXED_RE.fullmatch(s)
        if m:
            whole = int(m.group(1))
            frac = fractions.Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5)))
            return _Number(sign * (whole + frac))
    except (ValueError, ZeroDivisionError):
        # More digits than int() reads (ValueError), `1.2.3` in a \frac, or a zero
        # denominator: not a plain number.
        return None
    return None


def _percent(n: _Number) -> _Number:
    """`n` percent, as a number: the same digits, two places down."""
    hundred = fractions.Fraction(100)
    decimal = None
    if n.decimal is not None:
        sign, digits, exp = n.decimal
        decimal = (sign, digits, exp - 2) if digits else n.decimal
    return _Number(None if n.value is None else n.value / hundred, decimal,
                   None if n.unit is None else n.unit / hundred, n.significant)


def _terminates(q: fractions.Fraction) -> bool:
    """Whether q has a finite decimal expansion (its denominator is 2^a 5^b)."""
    den = q.denominator
    while (g := math.gcd(den, 10 ** 64)) > 1:
        den //= g
    return den == 1


def _approximates(d: _Number, x: fractions.Fraction, x_exact: bool = True) -> bool:
    """Whether decimal `d` is `x` correct to about six significant digits.

    Only a decimal approximates, and only a value that no decimal writes exactly: a
    rational that does not terminate or (x_exact=False) an irrational known to many
    more digits than d has.
    """
    if d.unit is None or d.value is None or x == 0:
        return False
    if x_exact and _terminates(x):
        return False
    err = abs(d.value - x)
    return err <= _REL_TOL * abs(x) or (d.significant >= _MIN_DIGITS and err < d.unit)


def _numbers_equal(a: _Number, b: _Number) -> bool:
    if a.decimal is not None and b.decimal is not None:
        return a.decimal == b.decimal        # integers, terminating decimals: exactly
    if a.value is None or b.value is None:
        return False        # a decimal beyond _MAX_* vs a fraction, which is never that size
    if a.value == b.value:
        return True
    return _approximates(a, b.value) or _approximates(b, a.value)

