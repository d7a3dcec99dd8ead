"""DeepSeek-R1-Distill-Llama-70B recipe: SFT of Llama-3.3-70B-Instruct on R1 traces.

R1 paper: lr 2e-5 with cosine decay to a tenth, 32k context, batch 64, 2-3 epochs.
The shared recipe, and what makes 32k fit: training.config.r1_distill_config.

The smallest hardware on which distill-plan says it fits, 32768 tokens x 64 rows
(mesh = data,fsdp,tensor; microbatches; planned / usable GiB per device at the
default 10% headroom). `HARDWARE` below holds these rows as data and
tests/test_r1_config_plans.py checks each, and that the next smaller option does
not fit:

  TPU v5p, 95 GiB/chip  v5p-64 (32 chips)       1,32,1     2    80.9 / 85.5
  GPU, H200 140.4 GiB   2 x 8xH200 boxes        1,16,1     4   101.2 / 126.4
  GPU, H100 79.6 GiB    4 x 8xH100 boxes        1,8,4      8    69.0 / 71.6

No single 8-GPU box holds it. Params, AdamW moments, gradient and accumulator
in bfloat16 (param_dtype below) are 10 B x 70.55e9 = 657 GiB: 82.1 GiB per GPU of
one 8xH200 box, and one row's layer inputs under full remat add
80 x 32768 x 8192 x 2 B = 40.0 GiB per device on any mesh (replicated over
tensor; a device holds at least one row): 122 GiB before the working set, over
the 126.4 usable once it is added (the planner's best 8xH200 plan: 134.5 GiB).
Two 8xH200 boxes or four 8xH100 boxes fit. fp32 master weights would be
20 B/param = 1314 GiB, more than 8 x 140.4 GiB before any activation (the
planner then needs 32 H200s, 64 H100s or a v5p-128).
TPU v5e and v6e: no slice fits: those 40.0 GiB of one row's layer inputs exceed a
chip (14.4 / 28.8 GiB usable) on any mesh; only sharding the sequence (context
parallelism) would fit it.

Plan a row without the checkpoint (README, "R1 at 32k"):

  distill-plan --config=configs/r1_distill_llama_70b.py --backend=tpu \\
      --num_devices=32 --device_memory_gib=95 \\
      --config.model.checkpoint= --config.model.preset=llama-3.3-70b
"""
from distill_jax.training.config import r1_distill_config

PRESET = "llama-3.3-70b"
# The docstring's table as data, for tests/test_r1_config_plans.py.
HARDWARE = [
    dict(hardware='v5p-64', platform='tpu', chips=32, device_memory_gib=95,
         mesh=dict(data=1, fsdp=32, tensor=1), microbatches=2, remat_policy='full',
         smaller=dict(hardware='v5p-32', chips=16, device_memory_gib=95)),
    dict(hardware='2 x 8xH200', platform='gpu', chips=16, device_memory_gib=140.4,
         mesh=dict(data=1, fsdp=16, tensor=1), microbatches=4, remat_policy='full',
         smaller=dict(hardware='8xH200', chips=8, device_memory_gib=140.4)),
    dict(hardware='4 x 8xH100', platform='gpu', chips=32, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=8, tensor=4), microbatches=8, remat_policy='full',
         smaller=dict(hardware='2 x 8xH100', chips=16, device_memory_gib=79.6)),
]
# Platforms where no slice fits without sharding the sequence.
NEEDS_SEQUENCE_SHARDING = [
    dict(hardware='TPU v5e', platform='tpu', device_memory_gib=16),
    dict(hardware='TPU v6e', platform='tpu', device_memory_gib=32),
]


def get_config():
    c = r1_distill_config("r1-distill-llama-70b", "/ckpt/Llama-3.3-70B-Instruct",
                          learning_rate=2e-5, microbatches=2)
    c.model.param_dtype = "bfloat16"   # 10 B/param for params + AdamW + gradients (see above)
    return c
