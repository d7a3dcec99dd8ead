"""The correctness filter: math answers against the gold answer, code against
its tests in the sandbox. It also reports the final answer it checked, which
the curated dataset keeps."""
from __future__ import annotations

import dataclasses
import re

from distill_jax.filters import code_exec
from distill_jax.filters.math_answer import extract_answer, math_equal
from distill_jax.filters.sample import Sample, Verdict, accept, reject


def gold_problem(gold) -> str | None:
    """Why a gold answer cannot be used, or None when it can."""
    if gold is None:
        return "no gold answer in the record's reference"
    text = str(gold).strip()
    if not text:
        return "empty gold answer"
    depth = 0
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            break
    if depth != 0:
        return f"unbalanced braces in gold answer {text!r}"
    return None


class Correctness:
    name = "correctness"

    def __init__(self, math_timeout_s: float = 5.0,
                 code_limits: code_exec.SandboxLimits | None = None,
                 math_second_opinion: bool = True):
        self.math_timeout_s = math_timeout_s
        self.math_second_opinion = math_second_opinion   # math-verify where we cannot read
        self.code_limits = code_limits or code_exec.SandboxLimits()

    def __call__(self, s: Sample) -> Verdict:
        return self.verify(s)[0]

    def verify(self, s: Sample) -> tuple[Verdict, str | None]:
        """(verdict, the final answer or program that was checked)."""
        if s.kind == "code":
            return self._verify_code(s)
        gold = s.reference.get("answer")
        problem = gold_problem(gold)
        if problem:
            return reject(self.name, "gold_unparseable", problem), None
        pred = extract_answer(s.answer) if s.reasoning is not None else None
        if pred is None:
            pred = extract_answer(s.response)
        if pred is None:
            return reject(self.name, "no_answer", "no final answer found"), None
        if math_equal(str(gold), pred, timeout_s=self.math_timeout_s,
                      second_opinion=self.math_second_opinion):
            return accept(self.name), pred
        return reject(self.name, "wrong_answer", f"answer {pred!r}, gold {str(gold)!r}"), pred

    def _verify_code(self, s: Sample) -> tuple[Verdict, str | None]:
        test, entry_point = s.reference.get("test"), s.reference.get("entry_point")
        if not test or not entry_point:
            return reject(self.name, "gold_unparseable",
                          "code reference needs 'test' and 'entry_point'"), None
        code = code_exec.extract_code(s.answer) or code_exec.extract_code(s.response)
        if code is None:
            return reject(self.name, "no_code", "no code block found"), None
        program = code
        if not re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            # A completion of the prompt's function body: put the header back.
            program = s.problem + code
        result = code_exec.run_python_tests(
            program, code_exec.humaneval_test_code(test, entry_point), limits=self.code_limits)
        if result.passed:
            return accept(self.name), code
        detail = f"{result.status}: {result.reason}"
        if result.stderr.strip():
            detail += " | " + result.stderr.strip().splitlines()[-1][:300]
        return reject(self.name, f"code_{result.status}", detail), code


def limits_from_config(c) -> code_exec.SandboxLimits:
    """The sandbox limits of the `filters.correctness` section (every key required:
    the defaults are declared in filters/config.py)."""
    return dataclasses.replace(
        code_exec.SandboxLimits(), wall_time_s=c["code_wall_time_s"],
        cpu_time_s=c["code_cpu_time_s"], memory_bytes=int(c["code_memory_mb"]) << 20)
