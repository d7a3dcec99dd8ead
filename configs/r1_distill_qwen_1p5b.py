"""DeepSeek-R1-Distill-Qwen-1.5B recipe: SFT of Qwen2.5-Math-1.5B on R1 traces.

R1 paper: lr 1e-4 with cosine decay to 1e-5, 32k context, batch 64, 2-3 epochs.
Full remat and FSDP over all devices keep a 32k context within memory.
"""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/r1-distill-qwen-1.5b"
    c.model.checkpoint = "/ckpt/Qwen2.5-Math-1.5B"
    c.data.tokenizer_path = "/ckpt/Qwen2.5-Math-1.5B"
    # R1's chat format (the R1-Distill models' own): its markers <｜User｜>,
    # <｜Assistant｜>, <｜end▁of▁sentence｜> are not tokens of the base tokenizer, so they
    # are added as special tokens (new embedding rows at the mean of the real ones) and
    # the export carries the extended tokenizer and this template.
    c.data.chat_template = "deepseek-r1"
    c.data.add_chat_tokens = True
    c.data.seq_len = 32768
    c.model.remat_policy = "full"
    c.train.batch_size = 64
    c.train.num_epochs = 2
    c.train.learning_rate = 1e-4
    c.train.final_lr_fraction = 0.1
    c.train.export_dir = "runs/r1-distill-qwen-1.5b/export"
    c.mesh.fsdp = -1
    return c
