"""A synthetic multi-step arithmetic task with verifiable answers.

Each problem is a short chain of operations on a starting number; the worked
solution walks the chain one step per line and ends in \\boxed{answer}, the
format the math verifier extracts. Problems are a pure function of (seed,
index, task sizes), so splits are reproducible without storing them.

The sizes (`Task`) decide how hard it is: the number of steps grades the
difficulty (errors compound along the chain, and a model that must answer in
one step has to do the whole chain in its head), and the size of the numbers
decides how many arithmetic facts a model must learn before it can do any step.
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


@dataclasses.dataclass(frozen=True)
class Task:
    """The task's sizes. The defaults are the original demo task (numbers up to a
    few hundred, 2-4 steps), which the tests' tiny corpora still use."""
    min_steps: int = 2
    max_steps: int = 4
    max_start: int = 19          # the starting number is in [2, max_start]
    max_operand: int = 19        # "gets k" has k in [1, max_operand]
    max_give: int = 0            # "gives away k": k in [1, max_give], and 0 means up to value - 1
    double_below: int = 200      # "doubles" only while the value is below this

    @classmethod
    def from_config(cls, section) -> "Task":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ValueError(f"task: unknown key(s) {unknown}; known: {sorted(fields)}")
        task = cls(**dict(section))
        if not 1 <= task.min_steps <= task.max_steps:
            raise ValueError(f"task: need 1 <= min_steps <= max_steps, got "
                             f"{task.min_steps} and {task.max_steps}")
        if task.max_start < 2 or task.max_operand < 1:
            raise ValueError(f"task: max_start must be >= 2 and max_operand >= 1, got "
                             f"{task.max_start} and {task.max_operand}")
        return task


def make_problem(seed: int, index: int, num_steps: int | None = None,
                 task: Task = Task()) -> Problem:
    rng = np.random.default_rng([seed, index])
    steps = int(num_steps or rng.integers(task.min_steps, task.max_steps + 1))
    name, item = _NAMES[rng.integers(len(_NAMES))], _ITEMS[rng.integers(len(_ITEMS))]
    value = int(rng.integers(2, task.max_start + 1))
    clauses = [f"{name} has {value} {item}."]
    lines = [f"Start: {value}."]
    for _ in range(steps):
        ops = ["gets", "gives", "doubles"] if value < task.double_below else ["gives"]
        if task.max_give > 0 and value < 2:
            ops.remove("gives")      # nothing left to give (the original task allowed it)
        op = rng.choice(ops)
        if op == "gets":
            k = int(rng.integers(1, task.max_operand + 1))
            clauses.append(f"Then {name} gets {k} more.")
            lines.append(f"{value} + {k} = {value + k}.")
            value += k
        elif op == "gives":
            most = value - 1 if task.max_give <= 0 else min(value - 1, task.max_give)
            k = int(rng.integers(1, max(2, most + 1)))
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


def misread_doubles(problem: Problem) -> Problem:
    """`problem` worked with a systematic error: every "doubles" read as "gets 2
    more" (x + 2 instead of x * 2), the later steps carried on from the wrong value.
    The arithmetic of each line is right and the format is the task's; only the
    final answer (the one a verifier checks) betrays it, unless the two readings
    happen to agree (x = 2). `answer` stays the true one."""
    lines = problem.solution.splitlines()
    value = int(lines[0].removeprefix("Start: ").rstrip("."))
    worked = [lines[0]]
    for line in lines[1:-1]:
        left, _ = line.split(" = ")
        _, op, k = left.split(" ")
        if op == "*":
            op, k = "+", "2"
        new = value + int(k) if op == "+" else value - int(k)
        worked.append(f"{value} {op} {k} = {new}.")
        value = new
    worked.append(f"The answer is \\boxed{{{value}}}.")
    return dataclasses.replace(problem, solution="\n".join(worked))


def misread_count(question: str, text: str) -> tuple[int, int]:
    """(doublings, misread): how many of `question`'s "doubles" steps a worked
    solution `text` reached, and how many of those it wrote as "+ 2" (the
    misconception of `misread_doubles`). Steps are matched by position, the i-th
    "Then" clause with the i-th equation line; a solution that stops early reaches
    fewer doublings."""
    clauses = question.split("Then ")[1:]
    equations = [line for line in text.splitlines() if " = " in line]
    doublings = misread = 0
    for clause, line in zip(clauses, equations):
        if " doubles " in f" {clause}":
            doublings += 1
            misread += " + 2 = " in line
    return doublings, misread


def num_steps(question: str) -> int:
    """A problem's difficulty: its number of operations, one "Then ..." clause each."""
    return question.count("Then ")


def make_split(seed: int, start: int, count: int, task: Task = Task(),
               exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """`count` problems from index `start` on, skipping any whose solution is in
    `exclude`. A solution holds only the numbers and operations (no names or
    items), so excluding the test split's solutions keeps every numeric twin of a
    test problem (the same chain told about someone else) out of a training split."""
    problems, index = [], start
    while len(problems) < count:
        p = make_problem(seed, index, task=task)
        index += 1
        if p.solution not in exclude:
            problems.append(p)
    return problems
