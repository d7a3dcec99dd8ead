"""Plain data across the sandbox boundary: values that carry no code.

A function under test runs in the sandboxed child; the tests that judge it run in
a trusted harness process. What crosses the pipe between them is only plain
data -- None, bool, int, float, str, bytes, and list/tuple/dict/set/frozenset of
those -- checked by exact type (`type(x) is int`, never `isinstance`), so an
object whose `__eq__` always returns True, or a subclass of `int` or `str` that
overrides it, cannot cross. The harness rebuilds fresh builtins from the wire
form, so every `==` a test evaluates runs on values the program never touched.

Wire form: one JSON document. JSON's own types stand for themselves (dicts are
never sent as JSON objects); a JSON object is a tag: {"tuple": [...]},
{"dict": [[key, value], ...]}, {"set": [...]}, {"frozenset": [...]},
{"float": "nan" | "inf" | "-inf"}, {"bytes": "<hex>"}.

Used by sandbox_runner.py (inside the sandbox) and trusted_harness.py (trusted),
which both run as `python -I` scripts and import this file by path, and by
code_exec.py. Standard library only.
"""
from __future__ import annotations

import json
import math

MAX_DEPTH = 100


class NotPlainData(TypeError):
    """A value that is not plain data (an object, a function, a subclass, too deep)."""


def encode(value) -> str:
    """The wire form of a plain value; NotPlainData for anything else."""
    return json.dumps(_to_wire(value, 0), separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes):
    """A plain value from its wire form; NotPlainData for a malformed document."""
    try:
        wire = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise NotPlainData(f"not a plain-data document: {e}") from None
    return _from_wire(wire, 0)


def _to_wire(x, depth: int):
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if math.isfinite(x) else {"float": repr(x)}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is list:
        return [_to_wire(v, depth + 1) for v in x]
    if t is tuple:
        return {"tuple": [_to_wire(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[_to_wire(k, depth + 1), _to_wire(v, depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {t.__name__: [_to_wire(v, depth + 1) for v in x]}
    raise NotPlainData(f"a {t.__module__}.{t.__qualname__} is not plain data")


def _from_wire(w, depth: int):
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
    t = type(w)
    if w is None or t is bool or t is int or t is str or t is float:
        return w
    if t is list:
        return [_from_wire(v, depth + 1) for v in w]
    if t is dict and len(w) == 1:
        (tag, body), = w.items()
        try:
            if tag == "tuple" and type(body) is list:
                return tuple(_from_wire(v, depth + 1) for v in body)
            if tag == "dict" and type(body) is list:
                return {_from_wire(k, depth + 1): _from_wire(v, depth + 1) for k, v in body}
            if tag == "set" and type(body) is list:
                return {_from_wire(v, depth + 1) for v in body}
            if tag == "frozenset" and type(body) is list:
                return frozenset(_from_wire(v, depth + 1) for v in body)
            if tag == "float" and body in ("nan", "inf", "-inf"):
                return float(body)
            if tag == "bytes" and type(body) is str:
                return bytes.fromhex(body)
        except (TypeError, ValueError) as e:      # unhashable keys, bad pairs, bad hex
            raise NotPlainData(f"malformed {tag}: {e}") from None
    raise NotPlainData(f"not plain data on the wire: {str(w)[:100]}")
