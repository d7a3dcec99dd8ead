"""DeepSeek-R1 as the teacher (671B mixture of experts, 37B active per token; the
DeepSeek-V3 shapes): sampling R1 traces with R1's own decoding.

Decoding as the R1 paper recommends: temperature 0.6, top-p 0.95, up to 32,768
new tokens. Set the checkpoint (the hub's FP8 files load as they are, see below)
and the tokenizer (the same directory) on the command line.

Memory, in bf16 (distill-plan states all of this, `planning.hardware_report`):

  weights   671.03e9 params x 2 B = 1,342 GB (1250.1 GiB; the float32 router adds
            0.2 GB). The hub's checkpoint is FP8 (e4m3, a float32 scale per 128x128
            block): at 1 B per param that would be ~671 GB (625 GiB), but our loader
            dequantises FP8 to param_dtype as it reads (models/hf_io.py):
            FP8-resident weights are not supported, so the plan is for bf16.
  KV cache  latent attention caches one latent "head" per token and layer:
            61 layers x (512 + 64 rope) x 2 B = 70,272 B per token, replicated
            over `tensor` (every query head reads it). One R1-length slot, prompt
            bucket 1024 + 32768 new = 33,792 positions: 2.21 GiB; 32 slots
            70.8 GiB, split over data x fsdp x expert.

One 8xH200 box does not hold the weights: 8 x 140.4 GiB = 1123.2 GiB (1.21 TB) of
HBM < 1250.1 GiB (1.34 TB). FP8-resident weights (625 GiB) would fit it with
~386 GiB to spare for slots (at 90% usable), if they were supported. In bf16 the
smallest hardware holding the weights and >= 32 slots of 33,792 positions
(planner, not measured; planned / usable GiB per device at 10% headroom; mesh =
data, fsdp, expert, tensor):

  TPU v5p, 95 GiB/chip  v5p-64 (32 chips)       1,8,4,1    320 slots   85.2 / 85.5
  TPU v6e, 32 GiB/chip  v6e-128 (128 chips)     1,8,4,4    128 slots   26.9 / 28.8
  TPU v5e, 16 GiB/chip  no slice up to v5litepod-256
  GPU, H200 140.4 GiB   4 x 8xH200 (32 GPUs)    1,4,4,2    112 slots  125.6 / 126.4
  GPU, H100 79.6 GiB    32 x 8xH100 (256 GPUs)  1,16,2,8    64 slots   70.8 / 71.6

GPUs need more than the weights suggest because of how XLA lowers the routed
experts' `ragged_dot` there: its RaggedDotRewriter runs it as one dense dot over
a group-masked operand of [rows, local experts, d], so a prefill's routed rows
are expanded over the experts, k x tokens x E x 2 d x 2 B = 8 x 1024 x 256 x 2 x
7168 x 2 B = 56 GiB per device for one 1024-token prompt, whatever the expert
axis (TPUs run ragged_dot natively). With
XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true (a cuDNN grouped GEMM
for the forward, cuDNN >= 9.22; not tried here) the planner drops that term and
says 2 x 8xH200 (mesh 1,4,4,1: 160 slots) and 4 x 8xH100 (1,8,4,1: 128 slots).

Why not smaller: 2 x 8xH100 have 16 x 71.6 = 1146 GiB usable < 1250.1 GiB of
weights; 2 x 8xH200 hold the weights (78 GiB per GPU) but not those 56 GiB on
top. v5p-32 has 16 x 85.5 = 1368 GiB usable, enough for the weights and 32
slots (1321 GiB) only if every parameter split 16 ways, and none of the meshes
does it: fsdp 16 gathers a whole MoE layer's 256 experts over fsdp
(256 x 3 x 7168 x 2048 x 2 B = 21 GiB, the next layer's prefetched too), expert
16 replicates the 17.1e9 params outside the routed experts (32 GiB per chip) next
to 76 GiB of experts; the planner's best v5p-32 mesh (expert 4 x tensor 4) takes
90.9 GiB per chip for 4 slots. v6e-64 (1843 GiB usable) and v5litepod-256 fail
on the same per-chip terms: sharded weights (22.6 / 6.8 GiB) plus a layer's
gathered experts, the prefill's routed pairs (each expert-axis device routes its
peers' tokens too: expert x 8 x 1024 rows of 7168) and its slots' cache exceed a
chip (32.9 of 28.8 / 14.8 of 14.4 GiB at best) — estimates, see planning.py.

The config's mesh (fsdp -1, expert 4, tensor 2) is the first row's on 32 GPUs;
on v5p-64 it holds 224 slots. `HARDWARE` holds the table as data;
tests/test_moe_plans.py plans every row, that the next smaller option holds no
32 slots on any mesh, and that `planning.smallest_hardware` finds these rows.

  distill-plan --config=configs/generate_deepseek_r1.py --backend=gpu \\
      --num_devices=32 --device_memory_gib=140.4 \\
      --config.teacher.checkpoint= --config.teacher.preset=deepseek-r1
"""
import ml_collections

from distill_jax.sampling.config import default_config

PRESET = "deepseek-r1"
PROMPT_LEN = 1024        # the prompt bucket the table is planned at (distill-plan's default)
# The docstring's table as data, for tests/test_moe_plans.py.
HARDWARE = [
    dict(hardware='4 x 8xH200', family='H200', platform='gpu', chips=32,
         device_memory_gib=140.4, mesh=dict(data=1, fsdp=4, expert=4, tensor=2), slots=112,
         smaller=dict(hardware='2 x 8xH200', chips=16)),
    dict(hardware='32 x 8xH100', family='H100', platform='gpu', chips=256,
         device_memory_gib=79.6, mesh=dict(data=1, fsdp=16, expert=2, tensor=8), slots=64,
         smaller=dict(hardware='16 x 8xH100', chips=128)),
    dict(hardware='v5p-64', family='v5p', platform='tpu', chips=32, device_memory_gib=95,
         mesh=dict(data=1, fsdp=8, expert=4, tensor=1), slots=320,
         smaller=dict(hardware='v5p-32', chips=16)),
    dict(hardware='v6e-128', family='v6e', platform='tpu', chips=128, device_memory_gib=32,
         mesh=dict(data=1, fsdp=8, expert=4, tensor=4), slots=128,
         smaller=dict(hardware='v6e-64', chips=64)),
]
# With XLA_FLAGS=planning.CUDNN_RAGGED_DOT_FLAG (the docstring's last GPU line).
HARDWARE_CUDNN_RAGGED_DOT = [
    dict(hardware='2 x 8xH200', family='H200', mesh=dict(data=1, fsdp=4, expert=4, tensor=1),
         slots=160),
    dict(hardware='4 x 8xH100', family='H100', mesh=dict(data=1, fsdp=8, expert=4, tensor=1),
         slots=128),
]
# Families where no slice or box up to the largest holds 32 slots.
NOT_ON = ['v5e']


def get_config():
    c = default_config()
    c.output_dir = "artifacts/traces/deepseek_r1"
    c.teacher.checkpoint = "/ckpt/DeepSeek-R1"
    c.tokenizer.path = "/ckpt/DeepSeek-R1"
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 32768
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "expert": 4, "tensor": 2})
    return c
