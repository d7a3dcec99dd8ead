"""Rejection filtering: verifiers (math answers, sandboxed code), quality filters,
decontamination, and the stage that turns teacher traces into a curated dataset."""
from distill_jax.filters.math_answer import extract_answer, math_equal

__all__ = ["extract_answer", "math_equal"]
