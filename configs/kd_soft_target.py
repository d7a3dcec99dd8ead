"""SFT on curated traces plus Hinton's soft-target KL against an online teacher
that shares the student's tokenizer (here Qwen2.5-Math-7B -> Qwen2.5-Math-1.5B).
The two pad their vocabularies differently (152,064 and 151,936 rows for the same
151,665 tokens): KD runs over the shared real vocabulary (training/kd_vocab.py).

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, T = 2.
For offline KD from the sampler's stored top-k logprobs instead:
  --config.kd.mode=offline --config.kd.topk=20
"""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/kd-qwen-math-7b-to-1p5b"
    c.model.checkpoint = "/ckpt/Qwen2.5-Math-1.5B"
    c.data.tokenizer_path = "/ckpt/Qwen2.5-Math-1.5B"
    # R1's chat format (the R1-Distill models' own): its markers <｜User｜>,
    # <｜Assistant｜>, <｜end▁of▁sentence｜> are not tokens of the base tokenizer, so they
    # are added as special tokens (new embedding rows at the mean of the real ones) and
    # the export carries the extended tokenizer and this template.
    c.data.chat_template = "deepseek-r1"
    c.data.add_chat_tokens = True
    c.data.seq_len = 8192
    c.model.remat_policy = "full"
    c.train.learning_rate = 1e-4
    c.kd.mode = "online"
    c.kd.alpha = 0.5
    c.kd.temperature = 2.0
    c.kd.kind = "forward_kl"
    c.kd.teacher.checkpoint = "/ckpt/Qwen2.5-Math-7B"
    return c
