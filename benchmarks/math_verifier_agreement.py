"""Where our math verifier and math-verify agree, family by family and on real data.

    .venv/bin/python benchmarks/math_verifier_agreement.py [--data ../shared/data]

Families: the cases of tests/filters/math_families.py (each with the verdict a
careful grader gives). Per family: how many cases each verifier gets right, and
every case where the two differ. Real data: every GSM8K-test and MATH-500
reference answer against its own gold answer ("own") and against the gold
answer of the next problem whose gold differs as text ("other"), judged by both;
every pair where they differ is listed. The README's "Agreement with
math-verify" table is this script's output, with the reason for each difference.

math-verify runs in our sympy worker (`math_verify_equal`), which bounds its time
from any thread; its verdict here is its own, none of our rules applied.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from distill_jax.data.prompts import gsm8k_gold  # noqa: E402
from distill_jax.filters.math_answer import extract_answer, math_equal, math_verify_equal  # noqa: E402
from tests.filters.math_families import FAMILIES, RESPONSE_FAMILIES  # noqa: E402


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def family_table() -> list[str]:
    lines = ["| family | cases | ours right | math-verify right | differ |",
             "|---|---:|---:|---:|---:|"]
    notes = []
    for family, cases in FAMILIES.items():
        ours_right = theirs_right = differ = 0
        for gold, pred, expected in cases:
            response = family in RESPONSE_FAMILIES
            ours = math_equal(gold, extract_answer(pred) if response else pred)
            theirs = math_verify_equal(gold, pred, response=response)
            ours_right += ours == expected
            theirs_right += theirs == expected
            if ours != theirs:
                differ += 1
                notes.append(f"  [{family}] gold {gold!r} pred {pred!r}: expected {expected}, "
                             f"ours {ours}, math-verify {theirs}")
        lines.append(f"| {family} | {len(cases)} | {ours_right} | {theirs_right} | {differ} |")
    return lines + [""] + notes


def _pairs(data_dir: str) -> dict[str, list[tuple[str, str]]]:
    """(gold, reference answer) pairs per dataset and kind ("own", "other")."""
    out = {}
    gsm = _rows(os.path.join(data_dir, "gsm8k_test.jsonl"))
    math = _rows(os.path.join(data_dir, "math500_test.jsonl"))
    for name, golds, refs in (
            ("gsm8k", [gsm8k_gold(r["answer"]) for r in gsm],
             [extract_answer(r["answer"]) for r in gsm]),
            ("math500", [r["answer"] for r in math], [extract_answer(r["solution"]) for r in math])):
        n = len(golds)
        out[f"{name} own"] = list(zip(golds, refs))
        other = []
        for k in range(n):
            j = next((k + d) % n for d in range(1, n) if golds[(k + d) % n] != golds[k])
            other.append((golds[j], refs[k]))
        out[f"{name} other"] = other
    return out


def real_data_table(data_dir: str) -> list[str]:
    lines = ["| pairs | n | ours equal | math-verify equal | differ |", "|---|---:|---:|---:|---:|"]
    notes = []
    for name, pairs in _pairs(data_dir).items():
        ours_eq = theirs_eq = differ = 0
        for gold, ref in pairs:
            ours, theirs = math_equal(gold, ref), math_verify_equal(gold, ref)
            ours_eq += ours
            theirs_eq += theirs is True
            if ours != (theirs is True) or (ours and name.endswith("other")):
                differ += ours != (theirs is True)
                notes.append(f"  [{name}] gold {gold!r} ref {ref!r}: ours {ours}, "
                             f"math-verify {theirs}")
        lines.append(f"| {name} | {len(pairs)} | {ours_eq} | {theirs_eq} | {differ} |")
    return lines + [""] + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data"))
    args = parser.parse_args()
    print("\n".join(family_table()))
    print()
    print("\n".join(real_data_table(args.data)))


if __name__ == "__main__":
    main()
