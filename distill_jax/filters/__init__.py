"""Rejection filtering: verifiers (math answers, sandboxed code), quality filters,
decontamination, and the stage that turns teacher traces into a curated dataset."""
from distill_jax.filters.code_exec import (ExecResult, SandboxLimits, extract_code, run_many,
                                           run_python_tests)
from distill_jax.filters.io_judge import IOResult, io_cases_from_reference, run_io_tests
from distill_jax.filters.math_answer import extract_answer, math_equal

__all__ = ["ExecResult", "SandboxLimits", "extract_answer", "extract_code", "math_equal",
           "run_many", "run_python_tests", "IOResult", "io_cases_from_reference", "run_io_tests"]
