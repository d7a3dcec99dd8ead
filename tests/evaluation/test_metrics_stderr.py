"""pass@1 with its standard error across problems, and the cons@k rate."""
import math

import pytest

from distill_jax.evaluation.metrics import cons_at_k_rate, pass_at_1_with_stderr


def test_pass_at_1_and_stderr_by_hand():
    # Per-problem rates 4/4, 2/4, 0/4, 1/4 = [1, 0.5, 0, 0.25].
    mean, stderr = pass_at_1_with_stderr([4, 2, 0, 1], [4, 4, 4, 4])
    assert mean == pytest.approx(0.4375)
    # Deviations 0.5625, 0.0625, -0.4375, -0.1875; squares sum to
    # 0.31640625 + 0.00390625 + 0.19140625 + 0.03515625 = 0.546875.
    # Sample variance 0.546875 / 3 = 0.18229...; std 0.42696...; stderr std / sqrt(4).
    assert stderr == pytest.approx(math.sqrt(0.546875 / 3) / 2)
    assert stderr == pytest.approx(0.213478, abs=1e-6)


def test_different_sample_counts_average_rates_per_problem():
    mean, _ = pass_at_1_with_stderr([1, 3], [2, 4])          # rates 0.5 and 0.75
    assert mean == pytest.approx(0.625)


def test_one_problem_has_no_stderr():
    assert pass_at_1_with_stderr([3], [4]) == (0.75, 0.0)
    assert pass_at_1_with_stderr([1, 1], [2, 2]) == (0.5, 0.0)   # identical rates


def test_unanswered_samples_count_as_incorrect():
    # 4 samples: one right, one wrong, two with no answer at all -> 1 of 4, not 1 of 2.
    verdicts = ["correct", "wrong_answer", "no_answer", "no_answer"]
    correct = sum(v == "correct" for v in verdicts)
    mean, _ = pass_at_1_with_stderr([correct], [len(verdicts)])
    assert mean == 0.25


def test_bad_counts_are_refused():
    for correct, samples in (([], []), ([1], [1, 2]), ([3], [2]), ([0], [0]), ([-1], [2])):
        with pytest.raises(ValueError):
            pass_at_1_with_stderr(correct, samples)


def test_cons_rate_ignores_problems_without_a_vote():
    assert cons_at_k_rate([True, False, None, True, None]) == pytest.approx(2 / 3)
    assert cons_at_k_rate([None, None]) is None
    assert cons_at_k_rate([]) is None
    assert cons_at_k_rate([False]) == 0.0
