"""On-policy distillation of a distilled student: DeepSeek-R1-Distill-Qwen-1.5B
samples math prompts, DeepSeek-R1-Distill-Qwen-7B grades every token it wrote,
and the student minimises the reverse KL to it on its own samples (GKD with
lambda = 1; `--config.kd.kind=sampled_token` for the per-token policy-gradient
form Thinking Machines and NeMo-RL use). The R1-Distill-Qwen models share one
tokenizer (the 7B pads its vocabulary to 152,064 rows, the 1.5B to 151,936: the
KL runs over the shared real ids, training/kd_vocab.py).

  distill-train --config=configs/on_policy_r1_distill_qwen_1p5b.py \\
      --config.model.checkpoint=/ckpt/DeepSeek-R1-Distill-Qwen-1.5B \\
      --config.kd.teacher.checkpoint=/ckpt/DeepSeek-R1-Distill-Qwen-7B

Each step: 16 GSM8K training prompts x 4 samples of up to 8,192 tokens, one row
of 9,216 positions each; 200 steps (Thinking Machines report most of their AIME
gain within ~150). The learning rate is RL-sized (1e-6, constant after warmup):
the update follows the student's own samples, and large steps on them diverge
where SFT's would not. Held-out: the reverse KL on MATH-500 prompts every 25 steps.

Memory (distill-plan with the two presets, --backend=tpu/gpu): the step's
transients and the sampler's 64 slots of 1024 + 8192 positions never coexist;
the plan's `sampling` term is what the sampler needs beyond the step's.

  distill-plan --config=configs/on_policy_r1_distill_qwen_1p5b.py --backend=tpu \\
      --num_devices=4 --device_memory_gib=95 --config.model.checkpoint= \\
      --config.model.preset=deepseek-r1-distill-qwen-1.5b --config.kd.teacher.checkpoint= \\
      --config.kd.teacher.preset=qwen2.5-math-7b --config.data.tokenizer_path=<tokenizer>
"""
from distill_jax.training.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/on-policy-r1-distill-qwen-1p5b"
    c.model.checkpoint = "/ckpt/DeepSeek-R1-Distill-Qwen-1.5B"
    c.model.remat_policy = "full"
    c.model.attention_impl = "auto"
    c.data.tokenizer_path = c.model.checkpoint
    c.data.chat_template = "deepseek-r1"     # the tokenizer has R1's markers already
    c.data.seq_len = 9216                    # prompt (<= 1024) + 8192 sampled tokens

    c.kd.mode = "on_policy"
    c.kd.kind = "reverse_kl"
    c.kd.teacher.checkpoint = "/ckpt/DeepSeek-R1-Distill-Qwen-7B"
    c.kd.teacher.remat_policy = "none"       # forward only

    c.on_policy.prompts.path = "../shared/data/gsm8k_train.jsonl"
    c.on_policy.prompts.format = "gsm8k"
    c.on_policy.eval_prompts.path = "../shared/data/math500_test.jsonl"
    c.on_policy.eval_prompts.format = "math500"
    c.on_policy.eval_prompts.limit = 64
    c.on_policy.eval_every = 25
    c.on_policy.n = 4
    c.on_policy.max_new_tokens = 8192

    c.train.batch_size = 64                  # 16 prompts x 4 samples
    c.train.microbatches = 4
    c.train.num_steps = 200
    c.train.learning_rate = 1e-6
    c.train.warmup_steps = 10
    c.train.final_lr_fraction = 1.0
    c.train.loss_chunk_size = 2048
    c.train.checkpoint_every = 25
    c.train.export_dir = "runs/on-policy-r1-distill-qwen-1p5b/export"
    c.mesh.fsdp = -1
    return c
