"""Evaluation of a checkpoint on GSM8K test with the R1 protocol (k samples at
temperature 0.6, top-p 0.95; pass@1 averaged over k, pass@k, cons@k).

  distill-evaluate --config=configs/evaluate_gsm8k.py --config.model.checkpoint=/runs/x/export \\
      --config.output_dir=/runs/x/eval/gsm8k
Other sets: --config.problems.path=../shared/data/math500_test.jsonl --config.problems.format=math500
(aime24, humaneval likewise; format=jsonl with id/problem/answer fields for your own).
"""
from distill_jax.evaluation.config import default_config


def get_config():
    return default_config()
