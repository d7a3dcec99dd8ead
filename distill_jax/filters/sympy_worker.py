"""The sympy side of `math_answer.SymbolicChecker`: one JSON request per line on
stdin ({"a": expr, "b": expr}, sympy syntax from `latex_to_sympy`), one JSON
reply per line on stdout ({"equal": bool}). Run as a script in its own process
so the parent can kill it when sympy hangs; it caps its own memory."""
import json
import os
import random
import resource
import sys


def _cap_memory() -> None:
    limit = int(os.environ.get("DISTILL_SYMPY_MEMORY", 2 << 30))
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass


def _equal(a_text: str, b_text: str) -> bool:
    import sympy
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)
    transforms = standard_transformations + (implicit_multiplication_application,)
    names = {"E": sympy.E, "I": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "root": sympy.root}
    a = parse_expr(a_text, local_dict=dict(names), transformations=transforms)
    b = parse_expr(b_text, local_dict=dict(names), transformations=transforms)
    if isinstance(a, tuple) or isinstance(b, tuple):
        return False
    diff = a - b
    if diff == 0 or sympy.expand(diff) == 0:
        return True
    symbols = sorted(diff.free_symbols, key=str)
    rng = random.Random(0)
    for _ in range(5):
        point = {s: sympy.Float(rng.uniform(0.5, 2.5)) for s in symbols}
        value = complex(diff.subs(point).evalf(30))
        scale = max(1.0, abs(complex(b.subs(point).evalf(30))))
        if not abs(value) <= 1e-8 * scale:
            return False
    return True


def main() -> None:
    _cap_memory()
    import sympy  # noqa: F401  (import before saying ready: the parent times calls only)
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"equal": bool(_equal(request["a"], request["b"]))}
        except Exception as e:  # noqa: BLE001 — any parse or math error means "not shown equal"
            reply = {"equal": False, "error": f"{type(e).__name__}: {e}"[:200]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
