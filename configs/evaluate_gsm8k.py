"""Evaluation of a checkpoint on GSM8K test with the R1 protocol (k samples at
temperature 0.6, top-p 0.95; pass@1 averaged over k, pass@k, cons@k).

  distill-evaluate --config=configs/evaluate_gsm8k.py --config.model.checkpoint=/runs/x/export \\
      --config.output_dir=/runs/x/eval/gsm8k
Several benchmarks in one run: configs/evaluate_r1.py.
"""
from distill_jax.evaluation.config import benchmark, benchmarks, default_config


def get_config():
    c = default_config()
    c.output_dir = "artifacts/eval/gsm8k"
    c.benchmarks = benchmarks(gsm8k=benchmark("../shared/data/gsm8k_test.jsonl", "gsm8k", k=4))
    c.sampling.max_new_tokens = 2048
    return c
