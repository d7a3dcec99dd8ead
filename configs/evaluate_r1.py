"""The R1 paper's evaluation (Table 5) in one run: every benchmark with its k, the
paper's sampling (temperature 0.6, top-p 0.95, 32,768 new tokens), one model load,
and a combined table (summary.md) in the paper's column order.

  distill-evaluate --config=configs/evaluate_r1.py --config.model.checkpoint=/runs/x/export \\
      --config.output_dir=/runs/x/eval/r1

AIME 2024 and MATH-500 come from ../shared/data. GPQA Diamond, AIME 2025 and
LiveCodeBench / Codeforces are licensed or gated: download them yourself and name
the files here (or with --config.benchmarks.<name>.path=...); a benchmark whose
path is "" is left out of the run.
"""
from distill_jax.evaluation.config import R1_K, benchmark, default_config


def get_config():
    c = default_config()
    c.benchmarks.gpqa_diamond = benchmark("", "gpqa", R1_K["gpqa"], kind="choice")
    c.benchmarks.aime25 = benchmark("", "aime", R1_K["aime"])
    c.benchmarks.livecodebench = benchmark("", "code_io", R1_K["livecodebench"], kind="code")
    c.benchmarks.codeforces = benchmark("", "code_io", R1_K["codeforces"], kind="code")
    return c
