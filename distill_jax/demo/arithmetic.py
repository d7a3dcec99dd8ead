"""A synthetic multi-step arithmetic task with verifiable answers.

Each problem is a short chain of operations on a starting number; the worked
solution walks the chain one step per line and ends in \\boxed{answer}, the
format the math verifier extracts. Problems are a pure function of (seed,
index), so splits are reproducible without storing them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fay", "Gus", "Hana")
_ITEMS = ("apples", "coins", "marbles", "stamps", "books", "shells")


@dataclasses.dataclass(frozen=True)
class Problem:
    question: str
    solution: str      # step-by-step reasoning ending in \boxed{answer}
    answer: int


def make_problem(seed: int, index: int, num_steps: int | None = None) -> Problem:
    rng = np.random.default_rng([seed, index])
    steps = int(num_steps or rng.integers(2, 5))
    name, item = _NAMES[rng.integers(len(_NAMES))], _ITEMS[rng.integers(len(_ITEMS))]
    value = int(rng.integers(2, 20))
    clauses = [f"{name} has {value} {item}."]
    lines = [f"Start: {value}."]
    for _ in range(steps):
        op = rng.choice(["gets", "gives", "doubles"] if value < 200 else ["gives"])
        if op == "gets":
            k = int(rng.integers(1, 20))
            clauses.append(f"Then {name} gets {k} more.")
            lines.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "gives":
            k = int(rng.integers(1, max(2, value)))
            clauses.append(f"Then {name} gives away {k}.")
            lines.append(f"{value} - {k} = {value - k}.")
            value -= k
        else:
            clauses.append(f"Then {name} doubles them.")
            lines.append(f"{value} * 2 = {value * 2}.")
            value *= 2
    question = " ".join(clauses) + f" How many {item} does {name} have now?"
    solution = "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}."
    return Problem(question=question, solution=solution, answer=value)


def num_steps(question: str) -> int:
    """A problem's difficulty: its number of operations, one "Then ..." clause each
    (2-4 in `make_problem`'s problems)."""
    return question.count("Then ")


def make_split(seed: int, start: int, count: int) -> list[Problem]:
    return [make_problem(seed, i) for i in range(start, start + count)]
