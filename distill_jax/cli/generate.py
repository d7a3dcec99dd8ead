"""distill-generate: n teacher samples per prompt into resumable JSONL shards.

  distill-generate --config=configs/generate_gsm8k.py \\
      --config.teacher.checkpoint=/ckpt/Qwen2.5-Math-7B-Instruct \\
      --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B-Instruct --config.output_dir=/data/traces
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.sampling.generate", "generate_traces")


if __name__ == "__main__":
    run()
