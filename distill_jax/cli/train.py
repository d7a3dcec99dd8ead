"""distill-train: SFT (and optional soft-target KD) of a student on curated traces.

  distill-train --config=configs/r1_distill_qwen_1p5b.py \\
      --config.model.checkpoint=/ckpt/Qwen2.5-Math-1.5B \\
      --config.data.path=/data/curated/gsm8k/tfds --config.data.tokenizer_path=/ckpt/Qwen2.5-Math-1.5B \\
      --config.workdir=/runs/r1-qwen-1p5b

Rerunning the same command resumes from the latest checkpoint in the workdir. Any
path may be a bucket URL (gs://bucket/run; see distill_jax/storage.py).
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.training.run", "train")


if __name__ == "__main__":
    run()
