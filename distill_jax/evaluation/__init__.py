"""Evaluation: pass@k / cons@k estimators (and, later, the evaluation runner)."""
from distill_jax.evaluation.metrics import pass_at_k

__all__ = ["pass_at_k"]
