"""A tiny student trained from scratch on CPU: smoke runs and the tests.

  distill-train --config=configs/sft_tiny_cpu.py --config.data.path=curated.jsonl \\
      --config.data.tokenizer_path=artifacts/demo/tokenizer.model --config.workdir=runs/tiny
"""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/sft-tiny-cpu"
    c.data.path = "artifacts/curated/demo/curated.jsonl"
    c.data.seq_len = 256
    c.model.preset = "tiny-llama"
    c.model.dtype = "float32"             # CPU: bf16 matmuls are emulated and slow
    c.train.batch_size = 4
    c.train.num_epochs = 2
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.export_dtype = "float32"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c
