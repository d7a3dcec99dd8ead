"""DeepSeek-R1-Distill-Qwen-1.5B recipe: SFT of Qwen2.5-Math-1.5B on R1 traces.

R1 paper: lr 1e-4 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
What makes 32k fit: full remat, flash attention (attention_impl="auto": splash on
TPU, cudnn on GPU: no [rows, heads, L, L] scores) and a chunked loss
(train.loss_chunk_size: no [tokens, vocab] float32 logits).

The smallest hardware on which distill-plan says it fits, 32768 tokens x 64 rows
(mesh = data,fsdp,tensor; microbatches; planned / usable GiB per device at the
default 10% headroom). `HARDWARE` below holds these rows as data and
tests/test_r1_config_plans.py checks each, and that the next smaller option does
not fit:

  TPU v5p, 95 GiB/chip  v5p-8 (4 chips)         1,4,1      2    60.8 / 85.5
  TPU v5e, 16 GiB/chip  v5litepod-4 (4 chips)   1,4,1     16    14.2 / 14.4
  TPU v6e, 32 GiB/chip  v6e-4 (4 chips)         1,4,1      8    20.9 / 28.8
  GPU, H100 79.6 GiB    8xH100 box              1,8,1      1    56.9 / 71.6

GPU: the planner fits it on a single H100 (16 microbatches) or H200.

The config's own mesh (all devices on fsdp) and microbatches are the first row's;
for another row set --config.mesh.fsdp=F --config.mesh.tensor=T
--config.train.microbatches=M. Plan it without the checkpoint, from the preset
of the same architecture:

  distill-plan --config=configs/r1_distill_qwen_1p5b.py --backend=tpu \\
      --num_devices=4 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=qwen2.5-math-1.5b

GPU rows use the physical memory: run with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 and
train.device_memory_gib=79.6 (H100) or 140.4 (H200); JAX otherwise takes, and
reports, 75% of a GPU.
"""
from distill_jax.training.config import base_config

# The architecture's preset: what distill-plan builds without the checkpoint.
PRESET = "qwen2.5-math-1.5b"
# Where the planner says this config fits (see the docstring); HARDWARE[0] is the
# config's own mesh and microbatches. `smaller`: the next smaller option, where
# nothing fits (any mesh, remat, up to 16 microbatches).
HARDWARE = [
    dict(hardware='v5p-8', platform='tpu', chips=4, device_memory_gib=95,
         mesh=dict(data=1, fsdp=4, tensor=1), microbatches=2, remat_policy='full',
         smaller=None),
    dict(hardware='v5litepod-4', platform='tpu', chips=4, device_memory_gib=16,
         mesh=dict(data=1, fsdp=4, tensor=1), microbatches=16, remat_policy='full',
         smaller=dict(hardware='v5litepod-1', chips=1, device_memory_gib=16)),
    dict(hardware='v6e-4', platform='tpu', chips=4, device_memory_gib=32,
         mesh=dict(data=1, fsdp=4, tensor=1), microbatches=8, remat_policy='full',
         smaller=dict(hardware='v6e-1', chips=1, device_memory_gib=32)),
    dict(hardware='8xH100', platform='gpu', chips=8, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=8, tensor=1), microbatches=1, remat_policy='full',
         smaller=None),
]
# Platforms where no slice fits without sharding the sequence.
NEEDS_SEQUENCE_SHARDING = []


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
    # The Math base's config.json says 4096 positions; R1-Distill trained it at 32k and
    # ships max_position_embeddings=131072 (same rope_theta): so does this export.
    c.model.overrides.max_position_embeddings = 131072
    c.model.remat_policy = "full"
    c.model.attention_impl = "auto"
    c.train.batch_size = 64
    c.train.microbatches = 2
    c.train.loss_chunk_size = 2048     # positions of each row per loss chunk
    c.train.num_epochs = 2
    c.train.learning_rate = 1e-4
    c.train.final_lr_fraction = 0.1
    c.train.export_dir = "runs/r1-distill-qwen-1.5b/export"
    c.mesh.fsdp = -1
    return c
