"""Teacher sampling on GSM8K train with the R1 recipe's prompt and decoding settings.

Set the teacher and tokenizer paths on the command line (see distill_jax/cli/generate.py).
For a random tiny teacher (smoke tests): --config.teacher.checkpoint= --config.teacher.preset=tiny-qwen2
"""
from distill_jax.sampling.config import default_config


def get_config():
    return default_config()
