"""distill-evaluate: pass@1 (averaged over k samples), pass@k and cons@k of a checkpoint.

  distill-evaluate --config=configs/evaluate_gsm8k.py --config.model.checkpoint=/runs/x/export

Any path (checkpoint, tokenizer, benchmark files, output_dir) may be a bucket URL
(gs://bucket/...; see distill_jax/storage.py).
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.evaluation.runner", "evaluate")


if __name__ == "__main__":
    run()
