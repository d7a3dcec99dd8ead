"""Qwen3-30B-A3B as the teacher (30.5B mixture of experts, 3.3B active per token):
sampling reasoning traces with R1's decoding.

Decoding as the R1 paper recommends: temperature 0.6, top-p 0.95, up to 32,768
new tokens (Qwen3's thinking mode opens the turn with "<think>\\n", the default
assistant prefix). Set the checkpoint and the tokenizer (the same directory) on
the command line.

Memory, in bf16 (distill-plan states all of this, `planning.hardware_report`):

  weights   30.53e9 params x 2 B = 61.1 GB (56.9 GiB; the float32 router, 12.6e6
            values, included). FP8 weights would be ~31 GB, but FP8-resident
            weights are not supported (an FP8 checkpoint is dequantised on load).
  KV cache  grouped-query attention, k and v: 2 x 48 layers x 4 kv heads x 128
            x 2 B = 98,304 B per token, kv heads split over `tensor` (<= 4). One
            R1-length slot, prompt bucket 1024 + 32768 new = 33,792 positions:
            3.09 GiB; 32 slots 99.0 GiB.

Weights + 32 slots = 155.9 GiB, before any working set. The smallest hardware
holding the weights and >= 32 slots of 33,792 positions (planner, not measured;
planned / usable GiB per device at 10% headroom; mesh = data, fsdp, expert, tensor):

  GPU, H100 79.6 GiB    4xH100                  1,1,1,4     61 slots   71.3 / 71.6
  GPU, H200 140.4 GiB   2xH200                  1,1,1,2     56 slots  125.7 / 126.4
  TPU v5p, 95 GiB/chip  v5p-8 (4 chips)         1,1,1,4     89 slots   85.0 / 85.5
  TPU v6e, 32 GiB/chip  v6e-8 (8 chips)         1,1,2,4     52 slots   28.6 / 28.8
  TPU v5e, 16 GiB/chip  v5litepod-16            1,4,1,4     48 slots   13.9 / 14.4

On GPUs XLA runs the routed experts' ragged_dot as a dense dot over [rows, local
experts, d] (its RaggedDotRewriter): a 1024-token prefill expands to
8 x 1024 x 128 x 2 x 2048 x 2 B = 8 GiB per device, which costs slots; with
XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true (cuDNN >= 9.22, not
tried here) the same boxes hold 72 and 61 slots.

Why not smaller (usable memory < 155.9 GiB): 2xH100 2 x 71.6 = 143.3 GiB, 1xH200
126.4 GiB, v6e-4 and v5litepod-8 4 x 28.8 = 8 x 14.4 = 115.2 GiB; v5p-8 is the
smallest v5p slice. Any 8xH100 or 8xH200 box holds it with room.

The config's mesh (expert 2, tensor -1) holds 60 slots on 4xH100 (the planner's
best there is tensor 4 alone, 61: splitting kv heads or slots costs the same cache,
and an expert axis replicates the 1.5e9 non-expert params and all-gathers its
peers' tokens in every MoE layer). `HARDWARE` holds the table as data;
tests/test_moe_plans.py plans every row, that the next smaller option holds no 32
slots on any mesh, and that `planning.smallest_hardware` finds these rows.

  distill-plan --config=configs/generate_qwen3_30b_a3b.py --backend=gpu \\
      --num_devices=4 --device_memory_gib=79.6 \\
      --config.teacher.checkpoint= --config.teacher.preset=qwen3-30b-a3b
"""
import ml_collections

from distill_jax.sampling.config import default_config

PRESET = "qwen3-30b-a3b"
PROMPT_LEN = 1024        # the prompt bucket the table is planned at (distill-plan's default)
# The docstring's table as data, for tests/test_moe_plans.py.
HARDWARE = [
    dict(hardware='4xH100', family='H100', platform='gpu', chips=4, device_memory_gib=79.6,
         mesh=dict(data=1, fsdp=1, tensor=4), slots=61,
         smaller=dict(hardware='2xH100', chips=2)),
    dict(hardware='2xH200', family='H200', platform='gpu', chips=2, device_memory_gib=140.4,
         mesh=dict(data=1, fsdp=1, tensor=2), slots=56,
         smaller=dict(hardware='1xH200', chips=1)),
    dict(hardware='v5p-8', family='v5p', platform='tpu', chips=4, device_memory_gib=95,
         mesh=dict(data=1, fsdp=1, tensor=4), slots=89, smaller=None),
    dict(hardware='v6e-8', family='v6e', platform='tpu', chips=8, device_memory_gib=32,
         mesh=dict(data=1, fsdp=1, expert=2, tensor=4), slots=52,
         smaller=dict(hardware='v6e-4', chips=4)),
    dict(hardware='v5litepod-16', family='v5e', platform='tpu', chips=16, device_memory_gib=16,
         mesh=dict(data=1, fsdp=4, tensor=4), slots=48,
         smaller=dict(hardware='v5litepod-8', chips=8)),
]
# With XLA_FLAGS=planning.CUDNN_RAGGED_DOT_FLAG (the docstring's GPU note).
HARDWARE_CUDNN_RAGGED_DOT = [
    dict(hardware='4xH100', family='H100', mesh=dict(data=1, fsdp=1, tensor=4), slots=72),
    dict(hardware='2xH200', family='H200', mesh=dict(data=1, fsdp=1, tensor=2), slots=61),
]
# Families where no slice or box up to the largest holds 32 slots.
NOT_ON = []


def get_config():
    c = default_config()
    c.output_dir = "artifacts/traces/qwen3_30b_a3b"
    c.teacher.checkpoint = "/ckpt/Qwen3-30B-A3B"
    c.tokenizer.path = "/ckpt/Qwen3-30B-A3B"
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 32768
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "expert": 2, "tensor": -1})
    return c
