"""DeepSeek-R1-Distill-Llama-8B recipe: SFT of Llama-3.1-8B on R1 traces (lr 5e-5)."""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/r1-distill-llama-8b"
    c.model.checkpoint = "/ckpt/Llama-3.1-8B"
    c.data.tokenizer_path = "/ckpt/Llama-3.1-8B"
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
    c.train.learning_rate = 5e-5
    c.train.final_lr_fraction = 0.1
    c.train.export_dir = "runs/r1-distill-llama-8b/export"
    c.mesh.fsdp = -1
    return c
