"""DeepSeek-R1-Distill-Llama-70B recipe: SFT of Llama-3.3-70B-Instruct on R1 traces
(lr 2e-5, as in the R1 paper). Needs a pod slice: plan it first —

  distill-plan --config=configs/r1_distill_llama_70b.py --num_devices=64 --device_memory_gib=32 \\
      --config.model.checkpoint= --config.model.preset=llama-3.3-70b
"""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/r1-distill-llama-70b"
    c.model.checkpoint = "/ckpt/Llama-3.3-70B-Instruct"
    c.data.tokenizer_path = "/ckpt/Llama-3.3-70B-Instruct"
    # R1's chat format (the R1-Distill models' own): its markers <｜User｜>,
    # <｜Assistant｜>, <｜end▁of▁sentence｜> are not tokens of the base tokenizer, so they
    # are added as special tokens (new embedding rows at the mean of the real ones) and
    # the export carries the extended tokenizer and this template.
    c.data.chat_template = "deepseek-r1"
    c.data.add_chat_tokens = True
    c.data.seq_len = 32768
    c.model.remat_policy = "full"
    c.model.param_dtype = "bfloat16"   # fp32 master weights + Adam would need 16 B/param
    c.train.batch_size = 64
    c.train.num_epochs = 2
    c.train.learning_rate = 2e-5
    c.train.final_lr_fraction = 0.1
    c.train.export_dir = "runs/r1-distill-llama-70b/export"
    c.mesh.fsdp = -1
    return c
