"""DeepSeek-R1-Distill-Qwen-7B recipe: SFT of Qwen2.5-Math-7B on R1 traces.

R1 paper: lr 8e-5 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
The shared recipe, and what makes 32k fit: training.config.r1_distill_config.

The smallest hardware on which distill-plan says it fits, 32768 tokens x 64 rows
(mesh = data,fsdp,tensor; microbatches; planned / usable GiB per device at the
default 10% headroom). `HARDWARE` below holds these rows as data and
tests/test_r1_config_plans.py checks each, and that the next smaller option does
not fit:

  TPU v5p, 95 GiB/chip  v5p-8 (4 chips)         1,4,1      8    67.1 / 85.5
  TPU v5e, 16 GiB/chip  v5litepod-64 (64 chips) 1,16,4     4    12.5 / 14.4
  TPU v6e, 32 GiB/chip  v6e-16 (16 chips)       1,16,1     4    25.5 / 28.8
  GPU, H100 79.6 GiB    8xH100 box              1,8,1      4    49.1 / 71.6

GPU: the planner fits it on 4 H100s (8 microbatches) or 2 H200s.

Plan a row without the checkpoint (README, "R1 at 32k"):

  distill-plan --config=configs/r1_distill_qwen_7b.py --backend=tpu \\
      --num_devices=4 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=qwen2.5-math-7b
"""
from distill_jax.training.config import r1_distill_config

PRESET = "qwen2.5-math-7b"
# The docstring's table as data, for tests/test_r1_config_plans.py.
HARDWARE = [
    dict(hardware='v5p-8', platform='tpu', chips=4, device_memory_gib=95,
         mesh=dict(data=1, fsdp=4, tensor=1), microbatches=8, remat_policy='full',
         smaller=None),
    dict(hardware='v5litepod-64', platform='tpu', chips=64, device_memory_gib=16,
         mesh=dict(data=1, fsdp=16, tensor=4), microbatches=4, remat_policy='full',
         smaller=dict(hardware='v5litepod-32', chips=32, device_memory_gib=16)),
    dict(hardware='v6e-16', platform='tpu', chips=16, device_memory_gib=32,
         mesh=dict(data=1, fsdp=16, tensor=1), microbatches=4, remat_policy='full',
         smaller=dict(hardware='v6e-8', chips=8, device_memory_gib=32)),
    dict(hardware='8xH100', platform='gpu', chips=8, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=8, tensor=1), microbatches=4, remat_policy='full',
         smaller=None),
]
# Platforms where no slice fits without sharding the sequence.
NEEDS_SEQUENCE_SHARDING = []


def get_config():
    c = r1_distill_config("r1-distill-qwen-7b", "/ckpt/Qwen2.5-Math-7B",
                          learning_rate=8e-5, microbatches=8)
    # The Math base's config.json says 4096 positions; R1-Distill trained it at 32k and
    # ships max_position_embeddings=131072 (same rope_theta): so does this export.
    c.model.overrides.max_position_embeddings = 131072
    return c
