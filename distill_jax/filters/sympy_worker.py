"""The sympy side of `math_answer.SymbolicChecker`: one JSON request per line on
stdin, one JSON reply per line on stdout. Expressions are in sympy syntax, from
`latex_to_sympy`. Run as a script in its own process so the parent can kill it
when sympy hangs; it caps its own memory.

Requests:
  {"op": "equal", "a": expr, "b": expr} -> {"equal": bool}
      Whether the two are the same expression. Exact ones (no decimal in
      either) must agree exactly: a nonzero rational difference is "not
      equal" however small relative to the values (`10**11` vs `99999999999`),
      and numeric checks at random points use 50 digits and a 1e-25 relative
      tolerance. With a decimal in either (a sympy Float) the tolerance is
      1e-6 relative. ("op" may be omitted: "equal" is the default.)
  {"op": "evaluate", "a": expr} -> {"rational": "p/q"} | {"value": "<decimal>"} | {}
      The value of a constant expression: exact when sympy's automatic
      simplification makes it a rational number, else 40 significant digits
      of a real value; {} when it has free symbols or is not a finite real.
  {"op": "proportional", "a": expr, "b": expr} -> {"equal": bool}
      Whether a = c * b for a nonzero constant c: two equations moved to one side
      (`a = 0`, `b = 0`) that are the same equation, written another way. Checked at
      random rational points, to the tolerances of "equal".
  {"op": "same_set", "a": part, "b": part} -> {"equal": bool}
      Whether two descriptions of a set of real numbers agree. A part is
      {"sides": [expr, ...], "ops": ["<" | ">" | "\\leq" | "\\geq" | "\\ne", ...]}, a
      relation or chain (`-2 < x \\leq 7`) in one variable, or {"intervals": [[lo, hi,
      lo_open, hi_open], ...]}, a union of intervals. {"equal": false, "unread": true}
      when a part is not a set of reals in one variable (`y > 2x`).
  {"op": "math_verify", "gold": text, "pred": text} -> {"equal": bool} | {"unavailable": why}
      The verdict of math-verify (the grader open-r1 and TRL use) on two answers in
      its own input syntax (LaTeX in `$...$`), with its own signal-based timeouts
      off: this process is the time limit, and the parent kills it past the limit.
      {"unavailable": ...} when math-verify is not installed.
Any parse or math error replies {"error": ...}, which the parent reads as "no".
"""
import json
import os
import random
import resource
import sys

_EXACT_TOL = "1e-25"
_APPROX_TOL = "1e-6"
_DIGITS = 50
_POINTS = 5


def _cap_memory() -> None:
    limit = int(os.environ.get("DISTILL_SYMPY_MEMORY", 2 << 30))
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass


def _parse(text: str):
    import sympy
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)
    transforms = standard_transformations + (implicit_multiplication_application,)
    names = {"E": sympy.E, "I": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "root": sympy.root}
    expr = parse_expr(text, local_dict=dict(names), transformations=transforms)
    return expr if isinstance(expr, sympy.Expr) else None     # tuples ("1, 2") are not


def _magnitude(expr, point):
    """|expr| at `point`, to _DIGITS digits, or None where it is not a finite number."""
    import sympy
    value = sympy.N(expr, _DIGITS, subs=point) if point else sympy.N(expr, _DIGITS)
    if not value.is_number or value.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    size = sympy.N(sympy.Abs(value), _DIGITS)
    return size if size.is_Number and size.is_finite else None


def _equal(a_text: str, b_text: str) -> bool:
    import sympy
    a, b = _parse(a_text), _parse(b_text)
    if a is None or b is None:
        return False
    diff = a - b
    if diff == 0 or sympy.expand(diff) == 0:
        return True
    approximate = a.has(sympy.Float) or b.has(sympy.Float)
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if not symbols and not approximate and diff.is_Rational:
        return False                         # two exact numbers that differ
    tol = sympy.Float(_APPROX_TOL if approximate else _EXACT_TOL, _DIGITS)
    rng = random.Random(0)
    checked = 0
    for _ in range(_POINTS if symbols else 1):
        # Exact rational points: the evaluation, not the point, sets the precision.
        point = {s: sympy.Rational(rng.randint(5000, 25000), 10000) for s in symbols}
        d, sa, sb = _magnitude(diff, point), _magnitude(a, point), _magnitude(b, point)
        if d is None or sa is None or sb is None:
            continue                         # a pole or a branch cut here: try another point
        if d > tol * max(sa, sb) and d > sympy.Float("1e-40"):
            return False
        checked += 1
    return checked > 0


def _evaluate(a_text: str) -> dict:
    import sympy
    x = _parse(a_text)
    if x is None or x.free_symbols:
        return {}
    if x.is_Rational:
        return {"rational": f"{x.p}/{x.q}"}
    value = sympy.N(x, 40)
    if not value.is_Float or not value.is_finite:
        return {}
    return {"value": str(value)}


def _proportional(a_text: str, b_text: str) -> bool:
    import sympy
    a, b = _parse(a_text), _parse(b_text)
    if a is None or b is None:
        return False
    if sympy.expand(a) == 0 or sympy.expand(b) == 0:
        return sympy.expand(a) == sympy.expand(b)
    approximate = a.has(sympy.Float) or b.has(sympy.Float)
    tol = sympy.Float(_APPROX_TOL if approximate else _EXACT_TOL, _DIGITS)
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    rng = random.Random(0)
    ratios = []
    for _ in range(_POINTS):
        point = {s: sympy.Rational(rng.randint(5000, 25000), 10000) for s in symbols}
        va = sympy.N(a, _DIGITS, subs=point)
        vb = sympy.N(b, _DIGITS, subs=point)
        if not (va.is_number and vb.is_number and va.is_finite and vb.is_finite) or vb == 0:
            continue                         # a pole or a zero of b here: try another point
        ratios.append(va / vb)
    if len(ratios) < 2 or ratios[0] == 0:
        return False
    r0 = ratios[0]
    return all(abs(r - r0) <= tol * abs(r0) for r in ratios[1:])


_RELATIONS = {"<": "Lt", ">": "Gt", "\\leq": "Le", "\\geq": "Ge", "\\ne": "Ne"}


def _as_set(part: dict):
    """The set of reals a request part describes (see "same_set"), or None."""
    import sympy
    if "intervals" in part:
        out = sympy.S.EmptySet
        for lo, hi, lo_open, hi_open in part["intervals"]:
            out = sympy.Union(out, sympy.Interval(_parse(lo), _parse(hi), bool(lo_open),
                                                  bool(hi_open)))
        return out
    sides = [_parse(side) for side in part["sides"]]
    if any(side is None for side in sides) or len(part["ops"]) != len(sides) - 1:
        return None
    relations = [getattr(sympy, _RELATIONS[op])(lhs, rhs)
                 for op, lhs, rhs in zip(part["ops"], sides, sides[1:])]
    relation = sympy.And(*relations)
    symbols = relation.free_symbols
    if len(symbols) != 1:
        return None
    (x,) = symbols
    return sympy.solveset(relation, x, sympy.S.Reals) if not isinstance(
        relation, sympy.And) else sympy.Intersection(
            *[sympy.solveset(r, x, sympy.S.Reals) for r in relations])


def _same_set(a: dict, b: dict) -> dict:
    import sympy
    sa, sb = _as_set(a), _as_set(b)
    if sa is None or sb is None:
        return {"equal": False, "unread": True}
    return {"equal": sympy.Complement(sa, sb) == sympy.S.EmptySet
            and sympy.Complement(sb, sa) == sympy.S.EmptySet}


_MATH_VERIFY = None          # the module once imported; the ImportError text if it is not


def _import_math_verify() -> None:
    global _MATH_VERIFY
    try:
        import math_verify
        _MATH_VERIFY = math_verify
    except ImportError as e:
        _MATH_VERIFY = f"{type(e).__name__}: {e}"


def _math_verify(gold: str, pred: str) -> dict:
    if isinstance(_MATH_VERIFY, str):
        return {"unavailable": _MATH_VERIFY}
    # timeouts None: math-verify's own limits use SIGALRM; the parent's kill is the limit.
    g = _MATH_VERIFY.parse(gold, parsing_timeout=None)
    p = _MATH_VERIFY.parse(pred, parsing_timeout=None)
    return {"equal": bool(g and p and _MATH_VERIFY.verify(g, p, timeout_seconds=None))}


def _reply(request: dict) -> dict:
    op = request.get("op", "equal")
    if op == "equal":
        return {"equal": bool(_equal(request["a"], request["b"]))}
    if op == "evaluate":
        return _evaluate(request["a"])
    if op == "proportional":
        return {"equal": bool(_proportional(request["a"], request["b"]))}
    if op == "same_set":
        return _same_set(request["a"], request["b"])
    if op == "math_verify":
        return _math_verify(request["gold"], request["pred"])
    return {"error": f"unknown op {op!r}"}


def main() -> None:
    _cap_memory()
    # Imports before saying ready: the parent times the calls, not the start.
    import sympy  # noqa: F401
    _import_math_verify()
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            reply = _reply(json.loads(line))
        except Exception as e:  # noqa: BLE001 — any parse or math error means "not shown equal"
            reply = {"error": f"{type(e).__name__}: {e}"[:200]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
