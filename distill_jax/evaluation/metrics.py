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
