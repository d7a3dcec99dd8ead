"""Plain data across the sandbox boundary: values that carry no code.

A function under test runs in the sandboxed child; the tests that judge it run in
a trusted harness process. What crosses the pipe between them is only plain
data -- None, bool, int, float, str, bytes, and list/tuple/dict/set/frozenset of
those. An object of any other class (one whose `__eq__` always returns True)
cannot cross; a subclass of one of these types crosses as its base value, read
with the base type's own methods (a `Counter` as a dict, numpy's float64 as a
float, an `int` subclass as its integer), so its overrides stay behind. The
harness rebuilds fresh builtins from the wire form (decoding checks exact
types), so every `==` a test evaluates runs on values the program never touched.

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


# A subclass of a plain type crosses as its base value (a Counter as a dict, an IntEnum
# or numpy's float64 as a number): the harness rebuilds the base type, so an overridden
# `__eq__` stays behind in the sandbox. bool before int: it is one.
_BASES = (bool, int, float, str, bytes, list, tuple, dict, frozenset, set)


def _to_wire(x, depth: int):
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if t not in _BASES and x is not None:
        base = next((b for b in _BASES if isinstance(x, b)), None)
        if base is not None:
            try:
                # The base type's own methods, not the subclass's overrides.
                x = base.__new__(base, x) if base in (int, float, str, bytes) else (
                    dict(dict.items(x)) if base is dict else base(base.__iter__(x)))
            except Exception as e:  # noqa: BLE001 — whatever the subclass does
                raise NotPlainData(f"a {t.__qualname__} could not be read as a "
                                   f"{base.__name__}: {e}") from None
            t = base
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
