"""DeepSeek-R1-Distill-Qwen-32B recipe: SFT of Qwen2.5-32B on R1 traces.

R1 paper: lr 6e-5 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
The shared recipe, and what makes 32k fit: training.config.r1_distill_config.

The smallest hardware on which distill-plan says it fits, 32768 tokens x 64 rows
(mesh = data,fsdp,tensor; microbatches; planned / usable GiB per device at the
default 10% headroom). `HARDWARE` below holds these rows as data and
tests/test_r1_config_plans.py checks each, and that the next smaller option does
not fit:

  TPU v5p, 95 GiB/chip  v5p-32 (16 chips)       1,16,1     4    74.6 / 85.5
  TPU v6e, 32 GiB/chip  v6e-256 (256 chips)     1,64,4     1    28.6 / 28.8
  GPU, H200 140.4 GiB   8xH200 box              1,8,1      8   112.6 / 126.4
  GPU, H100 79.6 GiB    2 x 8xH100 boxes        1,8,2      8    67.7 / 71.6

GPU: one 8xH100 box does not fit: fp32 params, AdamW moments, gradient and
accumulator are 20 B x 32.76e9 = 610 GiB, 76.3 GiB per GPU before any activation
(71.6 usable); one 8xH200 box does, and so do two 8xH100 boxes.
TPU v5e: no slice fits: one row's layer inputs under full remat are
64 x 32768 x 5120 x 2 B = 20.0 GiB per chip on any mesh (14.4 usable); v6e fits
only as a full v6e-256 pod, with little room.

Plan a row without the checkpoint (README, "R1 at 32k"):

  distill-plan --config=configs/r1_distill_qwen_32b.py --backend=tpu \\
      --num_devices=16 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=qwen2.5-32b
"""
from distill_jax.training.config import r1_distill_config

PRESET = "qwen2.5-32b"
# The docstring's table as data, for tests/test_r1_config_plans.py.
HARDWARE = [
    dict(hardware='v5p-32', platform='tpu', chips=16, device_memory_gib=95,
         mesh=dict(data=1, fsdp=16, tensor=1), microbatches=4, remat_policy='full',
         smaller=dict(hardware='v5p-16', chips=8, device_memory_gib=95)),
    dict(hardware='v6e-256', platform='tpu', chips=256, device_memory_gib=32,
         mesh=dict(data=1, fsdp=64, tensor=4), microbatches=1, remat_policy='full',
         smaller=dict(hardware='v6e-128', chips=128, device_memory_gib=32)),
    dict(hardware='8xH200', platform='gpu', chips=8, device_memory_gib=140.4,
         mesh=dict(data=1, fsdp=8, tensor=1), microbatches=8, remat_policy='full',
         smaller=dict(hardware='8xH100', chips=8, device_memory_gib=79.6)),
    dict(hardware='2 x 8xH100', platform='gpu', chips=16, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=8, tensor=2), microbatches=8, remat_policy='full',
         smaller=dict(hardware='8xH100', chips=8, device_memory_gib=79.6)),
]
# Platforms where no slice fits without sharding the sequence.
NEEDS_SEQUENCE_SHARDING = [
    dict(hardware='TPU v5e', platform='tpu', device_memory_gib=16),
]


def get_config():
    c = r1_distill_config("r1-distill-qwen-32b", "/ckpt/Qwen2.5-32B",
                          learning_rate=6e-5, microbatches=4)
    return c
