"""The correctness filter: math answers against the gold answer, code against
its tests in the sandbox. It also reports the final answer it checked, which
the curated dataset keeps."""
from __future__ import annotations

import dataclasses
import re

from distill_jax.filters import choice, code_exec, io_judge
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
                 math_second_opinion: bool = True, io_compare: str = "tokens",
                 io_case_time_s: float = 2.0, io_stop_on_first_failure: bool = True):
        self.math_timeout_s = math_timeout_s
        self.math_second_opinion = math_second_opinion   # math-verify where we cannot read
        self.code_limits = code_limits or code_exec.SandboxLimits()
        # stdin/stdout problems: how outputs compare, each input's time limit, and whether
        # to stop at the first failing case (filtering: yes; evaluation reports them all).
        io_judge.comparer(io_compare)        # an unknown rule fails here, before any work
        self.io_compare = io_compare
        self.io_case_time_s = io_case_time_s
        self.io_stop_on_first_failure = io_stop_on_first_failure

    def __call__(self, s: Sample) -> Verdict:
        return self.verify(s)[0]

    def verify(self, s: Sample) -> tuple[Verdict, str | None]:
        """(verdict, the final answer or program that was checked). A record with no
        reference at all is `unverifiable` (the stage decides whether that passes)."""
        if not s.reference:
            return reject(self.name, "unverifiable", "the record has no reference answer"), None
        if s.kind == "code":
            return self._verify_code(s)
        if s.kind == "choice":
            return self._verify_choice(s)
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

    def _verify_choice(self, s: Sample) -> tuple[Verdict, str | None]:
        """Multiple choice: the letter the response chooses against the gold letter."""
        gold, options = s.reference.get("answer"), s.reference.get("options")
        if not gold or not isinstance(options, list) or not options:
            return reject(self.name, "gold_unparseable",
                          "a choice reference needs 'answer' (a letter) and 'options'"), None
        letter = choice.extract_choice(s.response, options)
        if letter is None:
            return reject(self.name, "no_answer", "no option chosen"), None
        if choice.choice_equal(str(gold), letter):
            return accept(self.name), letter
        return reject(self.name, "wrong_answer", f"chose {letter}, gold {gold}"), letter

    def _verify_code(self, s: Sample) -> tuple[Verdict, str | None]:
        """I/O cases in the reference: judged on stdin/stdout; else a HumanEval-style
        `test` and `entry_point`: judged by the trusted harness."""
        try:
            io_cases = io_judge.io_cases_from_reference(s.reference)
        except ValueError as e:
            return reject(self.name, "gold_unparseable", str(e)), None
        test, entry_point = s.reference.get("test"), s.reference.get("entry_point")
        if io_cases is None and (not test or not entry_point):
            return reject(self.name, "gold_unparseable",
                          "code reference needs I/O cases ('io_tests', APPS' 'input_output', "
                          "LiveCodeBench's 'public_test_cases') or 'test' and "
                          "'entry_point'"), None
        code = code_exec.extract_code(s.answer) or code_exec.extract_code(s.response)
        if code is None:
            return reject(self.name, "no_code", "no code block found"), None
        if io_cases is not None:
            result = io_judge.run_io_tests(
                code, io_cases, limits=self.code_limits, case_time_s=self.io_case_time_s,
                compare=self.io_compare, stop_on_first_failure=self.io_stop_on_first_failure)
            if result.passed:
                return accept(self.name), code
            return reject(self.name, f"code_{result.status}", f"{result.status}: "
                          f"{result.reason}"), code
        program = code
        if not re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            # A completion of the prompt's function body: put the header back.
            program = s.problem + code
        # The prompt is trusted: its helpers (HumanEval's `poly`, `encode_cyclic`) run in
        # the harness, so a program cannot redefine what the tests check it with.
        result = code_exec.run_python_tests(
            program, code_exec.humaneval_test_code(test, entry_point), limits=self.code_limits,
            entry_point=entry_point, context=s.problem if _is_python(s.problem) else "")
        if result.passed:
            return accept(self.name), code
        detail = f"{result.status}: {result.reason}"
        if result.stderr.strip():
            detail += " | " + result.stderr.strip().splitlines()[-1][:300]
        return reject(self.name, f"code_{result.status}", detail), code


def _is_python(text: str) -> bool:
    try:
        compile(text, "<prompt>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def limits_from_config(c) -> code_exec.SandboxLimits:
    """The sandbox limits of the `filters.correctness` section (every key required:
    the defaults are declared in filters/config.py)."""
    return dataclasses.replace(
        code_exec.SandboxLimits(), wall_time_s=c["code_wall_time_s"],
        cpu_time_s=c["code_cpu_time_s"], memory_bytes=int(c["code_memory_mb"]) << 20)
