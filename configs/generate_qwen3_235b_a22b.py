"""Qwen3-235B-A22B as the teacher (235B mixture of experts, 22B active per token):
sampling reasoning traces with R1's decoding.

Decoding as the R1 paper recommends: temperature 0.6, top-p 0.95, up to 32,768
new tokens (Qwen3's thinking mode opens the turn with "<think>\\n", the default
assistant prefix). Set the checkpoint and the tokenizer (the same directory) on
the command line.

Memory, in bf16 (distill-plan states all of this, `planning.hardware_report`):

  weights   235.09e9 params x 2 B = 470.3 GB (438.0 GiB; the float32 router, 49e6
            values, included). FP8 weights would be ~235 GB, but FP8-resident
            weights are not supported (an FP8 checkpoint is dequantised on load).
  KV cache  grouped-query attention, k and v: 2 x 94 layers x 4 kv heads x 128
            x 2 B = 192,512 B per token, kv heads split over `tensor` (<= 4). One
            R1-length slot, prompt bucket 1024 + 32768 new = 33,792 positions:
            6.06 GiB; 32 slots 193.9 GiB.

Weights + 32 slots = 631.9 GiB, before any working set. The smallest hardware
holding the weights and >= 32 slots of 33,792 positions (planner, not measured;
planned / usable GiB per device at 10% headroom; mesh = data, fsdp, expert, tensor):

  GPU, H200 140.4 GiB   8xH200                  1,2,1,4     68 slots  126.3 / 126.4
  GPU, H100 79.6 GiB    2 x 8xH100 (16 GPUs)    1,4,1,4     64 slots   71.0 / 71.6
  TPU v5p, 95 GiB/chip  v5p-16 (8 chips)        1,2,1,4     36 slots   85.3 / 85.5
  TPU v6e, 32 GiB/chip  v6e-32 (32 chips)       1,4,2,4     64 slots   28.6 / 28.8
  TPU v5e, 16 GiB/chip  v5litepod-64            1,8,2,4     48 slots   13.8 / 14.4

On GPUs XLA runs the routed experts' ragged_dot as a dense dot over [rows, local
experts, d] (its RaggedDotRewriter): a 1024-token prefill expands to
8 x 1024 x 128 x 2 x 4096 x 2 B = 16 GiB per device, which costs slots; with
XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true (cuDNN >= 9.22, not
tried here) the same boxes hold 88 and 108 slots.

Why not smaller (usable memory < 631.9 GiB): one 8xH100 box 8 x 71.6 = 573.1 GiB
(it holds the weights, 438.0 GiB, but only ~22 slots: 135 GiB left / 6.06), 4xH200
4 x 126.4 = 505.4 GiB, v5p-8 4 x 85.5 = 342 GiB (less than the weights), v6e-16
16 x 28.8 = v5litepod-32 32 x 14.4 = 460.8 GiB.

The config's mesh (fsdp -1, expert 2, tensor 4) holds 68 slots on 8 H200s (the
row's 68 have no expert axis), 64 on 16 H100s and 64 on v6e-32 (its row's mesh). `HARDWARE` holds the
table as data; tests/test_moe_plans.py plans every row, that the next smaller
option holds no 32 slots on any mesh, and that `planning.smallest_hardware` finds
these rows.

  distill-plan --config=configs/generate_qwen3_235b_a22b.py --backend=gpu \\
      --num_devices=8 --device_memory_gib=140.4 \\
      --config.teacher.checkpoint= --config.teacher.preset=qwen3-235b-a22b
"""
import ml_collections

from distill_jax.sampling.config import default_config

PRESET = "qwen3-235b-a22b"
PROMPT_LEN = 1024        # the prompt bucket the table is planned at (distill-plan's default)
# The docstring's table as data, for tests/test_moe_plans.py.
HARDWARE = [
    dict(hardware='8xH200', family='H200', platform='gpu', chips=8, device_memory_gib=140.4,
         mesh=dict(data=1, fsdp=2, tensor=4), slots=68,
         smaller=dict(hardware='4xH200', chips=4)),
    dict(hardware='2 x 8xH100', family='H100', platform='gpu', chips=16,
         device_memory_gib=79.6, mesh=dict(data=1, fsdp=4, tensor=4), slots=64,
         smaller=dict(hardware='8xH100', chips=8)),
    dict(hardware='v5p-16', family='v5p', platform='tpu', chips=8, device_memory_gib=95,
         mesh=dict(data=1, fsdp=2, tensor=4), slots=36,
         smaller=dict(hardware='v5p-8', chips=4)),
    dict(hardware='v6e-32', family='v6e', platform='tpu', chips=32, device_memory_gib=32,
         mesh=dict(data=1, fsdp=4, expert=2, tensor=4), slots=64,
         smaller=dict(hardware='v6e-16', chips=16)),
    dict(hardware='v5litepod-64', family='v5e', platform='tpu', chips=64, device_memory_gib=16,
         mesh=dict(data=1, fsdp=8, expert=2, tensor=4), slots=48,
         smaller=dict(hardware='v5litepod-32', chips=32)),
]
# With XLA_FLAGS=planning.CUDNN_RAGGED_DOT_FLAG (the docstring's GPU note).
HARDWARE_CUDNN_RAGGED_DOT = [
    dict(hardware='8xH200', family='H200', mesh=dict(data=1, fsdp=2, tensor=4), slots=88),
    dict(hardware='2 x 8xH100', family='H100', mesh=dict(data=1, fsdp=4, tensor=4), slots=108),
]
# Families where no slice or box up to the largest holds 32 slots.
NOT_ON = []


def get_config():
    c = default_config()
    c.output_dir = "artifacts/traces/qwen3_235b_a22b"
    c.teacher.checkpoint = "/ckpt/Qwen3-235B-A22B"
    c.tokenizer.path = "/ckpt/Qwen3-235B-A22B"
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 32768
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "expert": 2, "tensor": 4})
    return c
