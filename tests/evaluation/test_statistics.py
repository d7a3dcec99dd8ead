"""Bootstrap intervals of pass@1 and the paired bootstrap of a difference."""
import numpy as np
import pytest

from distill_jax.evaluation import statistics


def test_an_interval_is_seeded_contains_the_estimate_and_matches_the_normal_width():
    rng = np.random.default_rng(0)
    rates = (rng.uniform(size=2000) < 0.3).astype(float)       # one sample per problem
    ci = statistics.pass_at_1_interval(rates, seed=1)
    assert ci.estimate == pytest.approx(rates.mean())
    assert ci.low < ci.estimate < ci.high
    assert statistics.pass_at_1_interval(rates, seed=1) == ci    # bitwise, same seed
    assert statistics.pass_at_1_interval(rates, seed=2) != ci
    # For a mean of 2000 Bernoulli draws the percentile interval is close to the
    # normal one: 2 x 1.96 x sqrt(p(1-p)/n).
    normal = 2 * 1.96 * np.sqrt(rates.mean() * (1 - rates.mean()) / rates.size)
    assert ci.high - ci.low == pytest.approx(normal, rel=0.1)


def test_paired_differences_cancel_what_two_models_share():
    rng = np.random.default_rng(3)
    difficulty = rng.uniform(size=400)
    b = (difficulty < 0.5).astype(float)
    a = b.copy()
    a[np.flatnonzero(b == 0)[:30]] = 1.0              # a solves 30 more problems
    same = statistics.paired_difference(b, b)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.excludes_zero()
    diff = statistics.paired_difference(a, b)
    assert diff.estimate == pytest.approx(30 / 400) and diff.excludes_zero()
    # Unpaired, the two intervals overlap: only the pairing shows the difference.
    ca, cb = statistics.pass_at_1_interval(a), statistics.pass_at_1_interval(b)
    assert ca.low < cb.high
    assert diff.high - diff.low < 0.5 * ((ca.high - ca.low) + (cb.high - cb.low))
    # A loss of as many problems as were gained is no difference.
    c = a.copy()
    c[np.flatnonzero(b == 1)[:30]] = 0.0
    assert not statistics.paired_difference(c, b).excludes_zero()


@pytest.mark.parametrize("call,message", [
    (lambda: statistics.pass_at_1_interval([]), "non-empty"),
    (lambda: statistics.pass_at_1_interval([0.5, float("nan")]), "finite"),
    (lambda: statistics.paired_difference([1, 0], [1, 0, 1]), "same problems: 2 rates against 3"),
    (lambda: statistics.pass_at_1_interval([1, 0], confidence=1.0), "confidence"),
    (lambda: statistics.pass_at_1_interval([1, 0], resamples=10), "resamples"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_an_unpaired_difference_resamples_each_set_on_its_own():
    rng = np.random.default_rng(5)
    solved = (rng.uniform(size=300) < 0.6).astype(float)
    never = (rng.uniform(size=40) < 0.05).astype(float)
    diff = statistics.unpaired_difference(solved, never, seed=2)
    assert diff.estimate == pytest.approx(solved.mean() - never.mean())
    assert diff.excludes_zero() and diff.low < diff.estimate < diff.high
    assert statistics.unpaired_difference(solved, never, seed=2) == diff
    # Its width is about that of the two separate intervals added in quadrature.
    ca = statistics.pass_at_1_interval(solved)
    cb = statistics.pass_at_1_interval(never)
    quadrature = np.hypot(ca.high - ca.low, cb.high - cb.low)
    assert diff.high - diff.low == pytest.approx(quadrature, rel=0.15)
    same = statistics.unpaired_difference(solved[:150], solved[150:], seed=2)
    assert not same.excludes_zero()
