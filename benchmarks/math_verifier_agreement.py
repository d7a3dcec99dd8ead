"""Where our math verifier and math-verify agree, family by family and on real data.

    .venv/bin/python benchmarks/math_verifier_agreement.py [--data ../shared/data]

Families: the cases of tests/filters/math_families.py (each with the verdict a
careful grader gives). Per family: how many cases each verifier gets right, and
every case where the two differ. Real data: every GSM8K (test and train),
MATH-500 and AIME 2024 reference answer against its own gold answer ("own") and
against the gold answer of the next problem whose gold differs as text ("other"),
judged by both;
every pair where they differ is listed. The README's "Agreement with
math-verify" table is this script's output, with the reason for each difference.

math-verify runs in our sympy worker (`math_verify_equal`), which bounds its time
from any thread; its verdict here is its own, none of our rules applied.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.math_verifier_throughput import DATA_DIR, load_problems  # noqa: E402
from distill_jax.filters.math_answer import extract_answer, math_equal, math_verify_equal  # noqa: E402
from tests.filters.math_families import FAMILIES, RESPONSE_FAMILIES  # noqa: E402


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
    for name, problems in load_problems(data_dir)[0].items():
        golds = [p.gold for p in problems]
        out[f"{name} own"] = [(p.gold, p.stated) for p in problems]
        out[f"{name} other"] = [
            (next(g for g in golds[k + 1:] + golds[:k] if g != p.gold), p.stated)
            for k, p in enumerate(problems)]
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
    parser.add_argument("--data", default=DATA_DIR)
    args = parser.parse_args()
    print("\n".join(family_table()))
    print()
    print("\n".join(real_data_table(args.data)))


if __name__ == "__main__":
    main()
