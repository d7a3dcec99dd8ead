"""Each family of answer forms real teachers write (tests/filters/math_families.py):
our verifier gives the expected verdict on every case, in both directions."""
import pytest

from distill_jax.filters import extract_answer, math_equal
from tests.filters.math_families import FAMILIES, RESPONSE_FAMILIES

CASES = [pytest.param(family, gold, pred, equal, id=f"{family}-{k}")
         for family, cases in FAMILIES.items() for k, (gold, pred, equal) in enumerate(cases)]


def test_every_family_has_both_verdicts():
    for family, cases in FAMILIES.items():
        assert {equal for _, _, equal in cases} == {True, False}, family


@pytest.mark.parametrize("family,gold,pred,equal", CASES)
def test_family_case(family, gold, pred, equal):
    answer = extract_answer(pred) if family in RESPONSE_FAMILIES else pred
    assert math_equal(gold, answer) is equal, (gold, pred, answer)
