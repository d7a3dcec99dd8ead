"""DeepSeek-R1-Distill-Qwen-1.5B recipe: SFT of Qwen2.5-Math-1.5B on R1 traces.

R1 paper: lr 1e-4 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
The shared recipe, and what makes 32k fit: training.config.r1_distill_config.

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

Plan a row without the checkpoint (README, "R1 at 32k"):

  distill-plan --config=configs/r1_distill_qwen_1p5b.py --backend=tpu \\
      --num_devices=4 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=qwen2.5-math-1.5b
"""
from distill_jax.training.config import r1_distill_config

PRESET = "qwen2.5-math-1.5b"
# The docstring's table as data, for tests/test_r1_config_plans.py.
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
    c = r1_distill_config("r1-distill-qwen-1.5b", "/ckpt/Qwen2.5-Math-1.5B",
                          learning_rate=1e-4, microbatches=2)
    # The Math base's config.json says 4096 positions; R1-Distill trained it at 32k and
    # ships max_position_embeddings=131072 (same rope_theta): so does this export.
    c.model.overrides.max_position_embeddings = 131072
    return c
