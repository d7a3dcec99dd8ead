"""Estimators over k samples per problem."""
from __future__ import annotations

import math
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / m for m in range(n - c + 1, n + 1))


def majority_answer(answers: Sequence[str | None],
                    equal: Callable[[str, str], bool]) -> str | None:
    """The answer most samples agree on (under `equal`); None answers abstain.

    Ties go to the group whose first member appears earliest in `answers`
    (sample order), so the vote is deterministic. None if nobody answered.
    """
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if equal(g[0], a):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    best = max(range(len(groups)), key=lambda k: (len(groups[k]), -k))
    return groups[best][0]


def cons_at_k(answers: Sequence[str | None], gold: str,
              equal: Callable[[str, str], bool]) -> bool:
    """Whether the majority answer over the k samples equals the gold answer."""
    winner = majority_answer(answers, equal)
    return winner is not None and equal(gold, winner)


def pass_at_1_with_stderr(correct: Sequence[int], samples: Sequence[int]) -> tuple[float, float]:
    """pass@1 over problems and its standard error: (mean, stderr).

    `correct[i]` of `samples[i]` samples of problem i were correct (a sample with no
    answer counts as a sample, and as incorrect). pass@1 is the mean over problems of
    each problem's c/n -- the R1 paper's pass@1, the accuracy averaged over the k
    samples of each problem, then over problems.

    The standard error is across problems: the sample standard deviation (n - 1) of
    the per-problem rates c/n, divided by sqrt(number of problems); 0.0 for a single
    problem. It measures how much pass@1 would move on another draw of problems of
    the same kind, which is what a reader needs to compare two models on the same
    benchmark (with 30 AIME problems it dominates; more samples per problem only
    shrink the part of it that comes from sampling). ValueError for no problems,
    lists of different lengths, or a count outside 0 <= c <= n, n >= 1.
    """
    if len(correct) != len(samples):
        raise ValueError(f"{len(correct)} correct counts for {len(samples)} sample counts")
    if not correct:
        raise ValueError("pass@1 needs at least one problem")
    rates = []
    for i, (c, n) in enumerate(zip(correct, samples)):
        if not (n >= 1 and 0 <= c <= n):
            raise ValueError(f"problem {i}: need 0 <= correct <= samples and samples >= 1, "
                             f"got correct={c} samples={n}")
        rates.append(c / n)
    p = len(rates)
    mean = sum(rates) / p
    if p == 1:
        return mean, 0.0
    variance = sum((r - mean) ** 2 for r in rates) / (p - 1)
    return mean, math.sqrt(variance / p)


def cons_at_k_rate(cons: Sequence[bool | None]) -> float | None:
    """The fraction of problems whose majority answer is correct (cons@k), over the
    problems that have a vote: None entries (code problems, which have no single
    answer to vote on) are left out. None when no problem has a vote."""
    voted = [bool(c) for c in cons if c is not None]
    return sum(voted) / len(voted) if voted else None
