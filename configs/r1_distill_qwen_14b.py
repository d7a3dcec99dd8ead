"""DeepSeek-R1-Distill-Qwen-14B recipe: SFT of Qwen2.5-14B on R1 traces.

R1 paper: lr 7e-5 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
The shared recipe, and what makes 32k fit: training.config.r1_distill_config.

The smallest hardware on which distill-plan says it fits, 32768 tokens x 64 rows
(mesh = data,fsdp,tensor; microbatches; planned / usable GiB per device at the
default 10% headroom). `HARDWARE` below holds these rows as data and
tests/test_r1_config_plans.py checks each, and that the next smaller option does
not fit:

  TPU v5p, 95 GiB/chip  v5p-16 (8 chips)        1,8,1      4    83.6 / 85.5
  TPU v6e, 32 GiB/chip  v6e-32 (32 chips)       1,8,4      8    28.4 / 28.8
  GPU, H100 79.6 GiB    8xH100 box              1,8,1      8    59.9 / 71.6

GPU: it needs the whole 8xH100 box: on 4 H100s fp32 params, AdamW moments,
gradient and accumulator alone are 20 B x 14.77e9 / 4 = 68.8 GiB per GPU, and one
row's layer inputs under full remat add 48 x 32768 x 5120 x 2 B = 15.0 GiB.
TPU v5e: no slice fits: those 15.0 GiB of one row's layer inputs exceed the
14.4 GiB usable of a chip on any mesh (only sequence sharding would fit it).

Plan a row without the checkpoint (README, "R1 at 32k"):

  distill-plan --config=configs/r1_distill_qwen_14b.py --backend=tpu \\
      --num_devices=8 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=qwen2.5-14b
"""
from distill_jax.training.config import r1_distill_config

PRESET = "qwen2.5-14b"
# The docstring's table as data, for tests/test_r1_config_plans.py.
HARDWARE = [
    dict(hardware='v5p-16', platform='tpu', chips=8, device_memory_gib=95,
         mesh=dict(data=1, fsdp=8, tensor=1), microbatches=4, remat_policy='full',
         smaller=dict(hardware='v5p-8', chips=4, device_memory_gib=95)),
    dict(hardware='v6e-32', platform='tpu', chips=32, device_memory_gib=32,
         mesh=dict(data=1, fsdp=8, tensor=4), microbatches=8, remat_policy='full',
         smaller=dict(hardware='v6e-16', chips=16, device_memory_gib=32)),
    dict(hardware='8xH100', platform='gpu', chips=8, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=8, tensor=1), microbatches=8, remat_policy='full',
         smaller=None),
]
# Platforms where no slice fits without sharding the sequence.
NEEDS_SEQUENCE_SHARDING = [
    dict(hardware='TPU v5e', platform='tpu', device_memory_gib=16),
]


def get_config():
    c = r1_distill_config("r1-distill-qwen-14b", "/ckpt/Qwen2.5-14B",
                          learning_rate=7e-5, microbatches=4)
    return c
