"""Uncertainty of pass@1: bootstrap intervals over problems, and the paired
bootstrap for the difference between two models evaluated on the same problems.

Problems are the unit that varies from one benchmark draw to another, so both
intervals resample problems (with replacement), keeping each problem's rate c/n
(its k samples stay together). The paired version resamples the same problems
for both models, so what the two share (easy and hard problems) cancels: its
interval for a difference is much narrower than two separate intervals would
suggest. A difference is called shown when its interval excludes 0.

Percentile intervals from `resamples` draws of a seeded generator: the same
inputs and seed give the same interval to the last bit, on any machine (numpy's
PCG64 and integer sampling are platform independent), so a report that prints
them reproduces.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

RESAMPLES = 10_000
# Resamples drawn per block: bounds the index array to BLOCK x problems.
BLOCK = 1_000


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _rates(values: Sequence[float], name: str) -> np.ndarray:
    rates = np.asarray(values, np.float64)
    if rates.ndim != 1 or rates.size == 0:
        raise ValueError(f"{name}: need a non-empty list of per-problem rates, got shape "
                         f"{rates.shape}")
    if not np.all(np.isfinite(rates)):
        raise ValueError(f"{name}: per-problem rates must be finite")
    return rates


def _bootstrap_means(rates: np.ndarray, resamples: int, seed) -> np.ndarray:
    """Means of `resamples` resamples (with replacement) of the rows of `rates`
    ([problems] or [problems, models]): [resamples] or [resamples, models]."""
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    rng = np.random.default_rng(seed)
    n = rates.shape[0]
    out = []
    for start in range(0, resamples, BLOCK):
        idx = rng.integers(0, n, size=(min(BLOCK, resamples - start), n))
        out.append(rates[idx].mean(axis=1))
    return np.concatenate(out)


def _interval(estimate: float, draws: np.ndarray, confidence: float) -> Interval:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), confidence)


def pass_at_1_interval(rates: Sequence[float], confidence: float = 0.95,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """pass@1 (the mean of the per-problem rates c/n) and its percentile bootstrap
    interval over problems."""
    r = _rates(rates, "pass@1")
    return _interval(r.mean(), _bootstrap_means(r, resamples, seed), confidence)


def paired_difference(rates_a: Sequence[float], rates_b: Sequence[float],
                      confidence: float = 0.95, resamples: int = RESAMPLES,
                      seed: int = 0) -> Interval:
    """pass@1(a) − pass@1(b) on the same problems (rates in the same problem order)
    and its paired bootstrap interval: each resample takes the same problems for
    both."""
    a, b = _rates(rates_a, "model a"), _rates(rates_b, "model b")
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same problems: {a.size} rates "
                         f"against {b.size}")
    return _interval(a.mean() - b.mean(), _bootstrap_means(a - b, resamples, seed), confidence)


def unpaired_difference(rates_a: Sequence[float], rates_b: Sequence[float],
                        confidence: float = 0.95, resamples: int = RESAMPLES,
                        seed: int = 0) -> Interval:
    """mean(a) − mean(b) for two different sets of problems (e.g. one model on the
    problems a teacher solved against those it never solved) and its bootstrap
    interval: each set resampled on its own, with independent streams of `seed`."""
    a, b = _rates(rates_a, "set a"), _rates(rates_b, "set b")
    draws = (_bootstrap_means(a, resamples, [seed, 0]) -
             _bootstrap_means(b, resamples, [seed, 1]))
    return _interval(a.mean() - b.mean(), draws, confidence)
