"""Memory and mesh planning: will a run fit, per device, before anything is allocated?

`plan_training` estimates one device's peak bytes during a training step:

  params       exact: every parameter's shard under the mesh and the logical rules
  optimizer    AdamW's two moments, sharded like the params (param dtype)
  gradients    the gradient tree plus the accumulator the microbatch scan keeps
  activations  what the backward pass keeps, per layer, under the remat policy
               (`saved_per_token`, `attention_copies`), for this device's tokens
               of one microbatch
  working      the transient peak on top: the larger of two moments,
                 the loss's backward: unchunked (train.loss_chunk_size=0) the
                   float32 [tokens, vocab] logits and their gradient; chunked
                   (loss_chunk_size positions of every row at a time), one chunk's
                   [rows, chunk, vocab] logits and their gradient (and an online
                   teacher's chunk logits), plus the float32 gradient of the final
                   hidden states and their reordered copy
                 one layer's backward: its forward rebuilt in full, plus the
                   attention kernel's own working set (`attention_working`)
               and, with fsdp > 1, the weights that moment gathers (one layer's, or
               the LM head's, in the compute dtype, the next layer's prefetched)
               and their gradient before its reduce-scatter
  teacher      online or on-policy KD: the teacher's params, its output for one microbatch
               (float32 logits, or with a chunked loss its final hidden states),
               and one layer's forward working set, attention included
  batch        the int32 input arrays of this device's rows
  sampling     on-policy training (kd.mode="on_policy", `add_on_policy_sampling`):
               between steps the student samples with the state's own params; its
               slots' cache and working set (`plan_sampling`'s terms past params)
               take the place of the step's transients (gradients, activations,
               working, batch), which do not exist then: the term is what the
               sampler needs beyond them (0 when the step's are larger)

and `plan_sampling` the continuous-batching sampler's: the teacher's params, the
KV cache of its resident decode slots (slots x (prompt bucket + max_new_tokens) x
`kv_cache.bytes_per_token`: 2 x layers x kv_heads x head_dim for grouped-query
attention, layers x (kv_lora_rank + rope) for latent attention, in the compute
dtype), an insert's prefill (one layer's working set and the prefill's own
cache), a decode step's working set, the weights an FSDP-sharded layer gathers,
one decode call's outputs and a step's logits. `slots_that_fit` is the largest
slot count that fits a device, and `resolve_num_slots` the generate stage's count
(sampling config num_slots, 0 = the planner's).

Mixture-of-experts and latent-attention models (cfg.moe, cfg.mla) are planned
layer kind by layer kind (`ModelConfig.layer_stacks`: DeepSeek's first dense
layers, then the MoE layers). The mesh has four axes (data, fsdp, expert,
tensor); the batch (training rows, decode slots) splits over data x fsdp x
expert (`sharding.BATCH_AXES`), routed experts [E, d, f] over expert (E), fsdp
(d) and tensor (f), and the expert axis must divide num_experts. Params are exact
from the shapes and the logical rules, the float32 router included. An MoE
layer's working set (`routed_bytes_per_token`) is what `moe.sharded_experts`
holds: the router's float32 [tokens, E] logits and scores, the tokens of the
expert-axis peers it all-gathers (expert x the local tokens), the tokens x k x
expert routed rows of d and f through the experts, and the float32 combine; its
shared experts count as a dense SwiGLU of num_shared x expert width. Where
ragged_dot is not native (GPU: XLA's RaggedDotRewriter; CPU: JAX's fallback) it
runs as one dense dot over the routed rows expanded over the local experts
(`ragged_dot_bytes_per_token`, fitted on CPU): for DeepSeek-R1 56 GiB per
1024-token prefill on a GPU, which moves its smallest GPU box;
XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true removes the forward's
(`ragged_dot_expands`). A latent
attention layer's train/prefill expands per-head k and v (padded to one head
size) next to the latent (`saved_per_token`); its decode is the absorbed form
over the latent cache, which is replicated over `tensor` (one latent "head").
Weights are held in param_dtype: an FP8 checkpoint is dequantised on load
(`models.hf_io`), so FP8-resident weights are not planned (`weights_note` says
what they would take), and `smallest_hardware` names the smallest TPU slice or
GPU box (`HARDWARE`) on which a generate config holds a useful number of slots.

Attention is planned for the kernel that will run (`attention_kernel`: the model's
`attention_impl` resolved by `models.attention.resolve` for the row length and the
backend, `backend=` or this process's; `auto` is splash on TPU, cudnn on GPU,
blockwise elsewhere above `AUTO_XLA_MAX_LEN` tokens). `xla` materializes [rows, heads, L, L] float32
scores and probabilities: they are kept per layer (remat none/dots) and live in a
layer's backward. The flash kernels (blockwise, splash, cudnn) keep no [L, L]
matrix: their residuals are O(L) (q, k, v, the output, a float32 logsumexp per head
and query) and their working set is a few [rows, heads, tile, tile] float32 tiles,
plus, in the backward, float32 gradients of q (all three kernels) and of k, v and
blocked copies of q, k, v, out, dout (blockwise, which is plain JAX).

The activation and working-set terms are a model of what XLA keeps, written
from the layer's structure (which tensors each policy saves) and checked
against measured peaks on CPU (benchmarks/memory_plan_vs_measured.py,
BENCHMARKS.md: xla attention, unchunked loss, one device); they are estimates,
the params/optimizer/gradient/cache terms are exact. The flash-kernel, chunked-loss
and FSDP-gather terms are written from the kernels' and XLA's structure and are
not yet measured; neither are the MoE and latent-attention terms (written
from moe.py's and mla.py's structure). `suggest_training` searches the (data,
fsdp, expert, tensor) factorizations of the device count (expert > 1 only for an
MoE model) (and, failing those, remat and microbatching)
for plans that fit, so a refusal says what would work; a refusal also says when
no mesh can fit because one row's layer inputs alone exceed a device (only
sharding the sequence, which distill_jax does not do, would fit it).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

from distill_jax import models, sharding, storage
from distill_jax.models import attention as attention_kernels
from distill_jax.models import kv_cache
from distill_jax.sampling import engine

GIB = 1024 ** 3
# Headroom kept free for XLA's own scratch, fragmentation and the runtime.
DEFAULT_HEADROOM = 0.10
BACKENDS = ("tpu", "gpu", "cpu")
# Kernels that never materialize [L, L]: online softmax over tiles of this edge.
FLASH_KERNELS = ("blockwise", "splash", "cudnn")
FLASH_TILE = {"blockwise": attention_kernels.DEFAULT_BLOCK,
              "splash": attention_kernels.SPLASH_TILE, "cudnn": 128}
# Microbatch counts `suggest_training` tries beyond the config's.
MICROBATCH_STEPS = (2, 4, 8, 16)
# num_slots=0 where the device reports no memory (CPU): this many, rounded to the multiple.
DEFAULT_NUM_SLOTS = 64
# The most slots `slots_that_fit` returns.
MAX_SLOTS = 4096


class PlanError(ValueError):
    """A configuration that cannot fit; the message says what would."""


@dataclasses.dataclass
class MemoryPlan:
    kind: str                        # "train" | "sample"
    mesh: dict[str, int]
    terms: dict[str, int]            # bytes per device, by component
    device_memory: int | None        # bytes per device (None: unknown, no verdict)
    headroom: float = DEFAULT_HEADROOM
    notes: list[str] = dataclasses.field(default_factory=list)
    backend: str | None = None       # the platform planned for
    attention: str | None = None     # the attention kernel planned for
    slots: int | None = None         # sample plans: the decode slots, all hosts

    @property
    def total(self) -> int:
        return int(sum(self.terms.values()))

    @property
    def fits(self) -> bool | None:
        if self.device_memory is None:
            return None
        return self.total <= (1.0 - self.headroom) * self.device_memory

    def table(self) -> str:
        where = "".join(f", {k} {v}" for k, v in (("backend", self.backend),
                                                  ("attention", self.attention)) if v)
        lines = [f"{self.kind} plan, mesh {self.mesh}{where} — per device:"]
        for name, value in self.terms.items():
            lines.append(f"  {name:<12}{_fmt(value):>12}")
        lines.append(f"  {'total':<12}{_fmt(self.total):>12}")
        if self.device_memory is not None:
            usable = (1.0 - self.headroom) * self.device_memory
            lines.append(f"  device {_fmt(self.device_memory)}, usable {_fmt(usable)} "
                         f"({self.headroom:.0%} headroom): "
                         + ("fits" if self.fits else "DOES NOT FIT"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mesh": self.mesh, "terms": self.terms, "total": self.total,
                "device_memory": self.device_memory, "fits": self.fits, "notes": self.notes,
                "backend": self.backend, "attention": self.attention, "slots": self.slots}


def _fmt(nbytes: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{int(nbytes)} B"


def _bytes(dtype) -> int:
    return np.dtype(dtype).itemsize


def _axis_size(mesh: Mapping[str, int], axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(int(mesh.get(a, 1)) for a in axes)


def _mesh(mesh: Mapping[str, int]) -> dict[str, int]:
    """Every mesh axis's size (absent: 1), in sharding.MESH_AXES order; `expert` is
    left out where it is 1, as a dense model never sees it (so plans of dense
    models keep their three-axis meshes)."""
    sizes = {a: int(mesh.get(a, 1)) for a in sharding.MESH_AXES}
    if sizes["expert"] == 1:
        del sizes["expert"]
    return sizes


def data_parallel(mesh: Mapping[str, int]) -> int:
    """How many ways rows and decode slots split: data x fsdp x expert
    (sharding.BATCH_AXES; `sharding.data_parallel_size` of a built mesh)."""
    return _axis_size(mesh, sharding.BATCH_AXES)


def _dp_words(mesh: Mapping[str, int]) -> str:
    """"data 4 x fsdp 2" (and " x expert E" where it is > 1), for messages."""
    words = f"data {mesh.get('data', 1)} x fsdp {mesh.get('fsdp', 1)}"
    return words + (f" x expert {mesh['expert']}" if mesh.get("expert", 1) > 1 else "")


def check_expert_axis(cfg: models.ModelConfig, mesh: Mapping[str, int]) -> None:
    """PlanError unless the mesh's expert axis divides the routed experts (a dense
    model may have one: there it is one more data-parallel axis)."""
    expert = int(mesh.get("expert", 1))
    if expert < 1:
        raise PlanError(f"mesh expert={expert}: mesh axes must be positive")
    if cfg.moe is not None and cfg.moe.num_experts % expert:
        e = cfg.moe.num_experts
        divisors = [x for x in range(1, e + 1) if e % x == 0]
        raise PlanError(f"mesh expert={expert} does not divide num_experts={e}"
                        + (f" of {cfg.name}" if cfg.name else "")
                        + f": the expert axis splits the routed experts evenly; use one of "
                        f"{divisors}")


def _layer_kinds(cfg: models.ModelConfig) -> list[tuple[int, bool]]:
    """(layers, whether their feed-forward is the mixture of experts) per scanned
    stack: one entry for a dense model, (dense, MoE) for DeepSeek-V3."""
    return [(count, moe) for _, _, count, moe in cfg.layer_stacks]


def _attention_head_dim(cfg: models.ModelConfig) -> int:
    """The head size the attention kernels see: head_dim, or for latent attention
    the q/k head dim and v_head_dim padded to one size (models/mla.py)."""
    if cfg.mla is not None:
        return max(cfg.mla.qk_head_dim, cfg.mla.v_head_dim)
    return cfg.head_dim


def default_backend() -> str:
    """This process's platform: "tpu", "gpu" or "cpu"."""
    return jax.devices()[0].platform


def attention_kernel(cfg: models.ModelConfig, seq_len: int, backend: str | None = None) -> str:
    """The kernel `cfg.attention_impl` runs at rows of `seq_len` tokens on `backend`
    (default: this process's), as the model resolves it; PlanError for a kernel the
    backend cannot run."""
    try:
        return attention_kernels.resolve(cfg.attention_impl, seq_len,
                                         backend or default_backend())
    except ValueError as e:
        raise PlanError(str(e)) from None


@functools.lru_cache(maxsize=32)
def _param_layout(cfg: models.ModelConfig) -> tuple[tuple[tuple[int, ...], Any, str | None,
                                                         bool], ...]:
    """(shape, mesh PartitionSpec, the layer stack it belongs to (None: not a layer
    param), whether it is float32 whatever param_dtype) of every parameter;
    traced once per architecture, with param_dtype bfloat16 so the leaves the
    model pins to float32 (the MoE router) show as such."""
    shapes = jax.tree_util.tree_leaves_with_path(models.param_shapes(cfg))
    specs = jax.tree_util.tree_leaves(models.param_logical_axes(cfg),
                                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    stacks = {name for name, *_ in cfg.layer_stacks}
    out = []
    for (path, x), spec in zip(shapes, specs):
        top = str(getattr(path[0], "key", path[0]))
        stacked = bool(len(spec)) and spec[0] == "layers" and top in stacks
        out.append((tuple(x.shape), sharding.logical_to_mesh_spec(spec),
                    top if stacked else None, np.dtype(x.dtype) == np.float32))
    return tuple(out)


def _layout(cfg: models.ModelConfig):
    return _param_layout(cfg.replace(remat_policy="none", dtype="bfloat16",
                                     param_dtype="bfloat16", attention_impl="xla"))


def _param_bytes(cfg: models.ModelConfig, mesh: tuple[tuple[str, int], ...], itemsize: int) -> int:
    mesh = dict(mesh)
    total = 0
    for shape, spec, _, pinned in _layout(cfg):
        shard = []
        for d, axes in itertools.zip_longest(shape, spec):
            parts = _axis_size(mesh, axes)
            if d % parts:     # sharding.shard_params refuses this too
                raise PlanError(f"a parameter of shape {shape} has a dimension of {d}, which "
                                f"mesh axes {axes} (x{parts}) do not divide")
            shard.append(d // parts)
        total += math.prod(shard) * (4 if pinned else itemsize)
    return total


_param_bytes_cached = functools.lru_cache(maxsize=4096)(_param_bytes)


def param_bytes_per_device(cfg: models.ModelConfig, mesh: Mapping[str, int],
                           dtype=None) -> int:
    """Exact bytes of one device's parameter shards: each leaf's shard under the
    mesh and the logical rules (routed experts over expert, fsdp and tensor), in
    `dtype` (default param_dtype) except the leaves the model keeps in float32
    (the MoE router and its bias); PlanError where the mesh does not divide a
    sharded dimension or the expert axis does not divide num_experts."""
    check_expert_axis(cfg, mesh)
    key = tuple((a, int(mesh.get(a, 1))) for a in sharding.MESH_AXES)
    return _param_bytes_cached(cfg, key, _bytes(dtype or cfg.param_dtype))


def gathered_layer_params(cfg: models.ModelConfig, tensor: int, expert: int = 1) -> int:
    """Parameters of one layer on a device once FSDP has gathered them (split
    over `tensor`, and an MoE layer's routed experts over `expert`, only): what
    a layer's forward or backward works with. With two kinds of layer (DeepSeek's
    dense and MoE stacks), the larger."""
    mesh = {"tensor": tensor, "expert": expert}
    per_stack: dict[str, int] = {}
    for shape, spec, stack, _ in _layout(cfg):
        if stack is not None:
            per_stack[stack] = per_stack.get(stack, 0) + math.prod(
                -(-d // _axis_size(mesh, axes)) for d, axes in itertools.zip_longest(shape, spec))
    counts = {name: count for name, _, count, _ in cfg.layer_stacks}
    return max(total // counts[name] for name, total in per_stack.items())


def saved_per_token(cfg: models.ModelConfig, policy: str, tensor: int,
                    moe_layer: bool = False) -> float:
    """Values (not bytes) one layer keeps per token for the backward pass, besides
    attention matrices (`attention_copies`) and an MoE layer's router and routed
    experts (`routed_bytes_per_token`). D-sized tensors are replicated over
    `tensor`; heads and mlp tensors split over it.

      none:  9 D + 2 q + kv + 5 F — every residual JAX's autodiff keeps: the norms'
             inputs, normalized values and outputs, q/k before and after rope, v,
             the attention output, gate, up, sigmoid(gate), silu(gate), the product
      dots:  2 D + 2 q + kv + 2 F — the outputs of the matmuls (q, k, v, the
             attention output, o, gate, up)
      dots_with_no_batch_dims: 2 D + q + kv + 2 F — the same less the attention einsums
      save_qkv_proj: D + q + kv — the layer input and the named q, k, v
      full:  D — the layer input

    (q = heads x head_dim, kv = 2 x kv_heads x head_dim, F = intermediate size;
    in an MoE layer (`moe_layer`) F is its shared experts' width, num_shared x
    expert width, 0 without.) The coefficients of `none` and `dots` were read off
    XLA's buffers on CPU and agree with the measured peaks in BENCHMARKS.md. With
    a flash kernel the attention's residuals are the same q, k, v and output, plus
    its logsumexp (`attention_working`).

    Latent attention (cfg.mla, models/mla.py) expands k and v per head and pads
    q, k, v to one head size w = max(qk_head_dim, v_head_dim): q = heads x w, kv
    = 2 x heads x w, and beside them, per token, none keeps heads x (nope + v +
    2 rope) (the expanded [c W_uk ; c W_uv], the broadcast and roped RoPE parts)
    and 2 q_lora_rank + 2 (kv_lora_rank + rope) + kv_lora_rank replicated values
    (the query bottleneck and its norm, the kv projection, the normed latent,
    the cached latent); dots the bottleneck matmuls' outputs (q_lora_rank +
    kv_lora_rank + rope) and the expansion's (heads x (nope + v));
    save_qkv_proj keeps D + the latent, the one tensor mla.py names.
    """
    d = cfg.hidden_size
    width = _attention_head_dim(cfg)
    q = cfg.num_heads * width / tensor
    kv = 2 * cfg.num_kv_heads * width / tensor
    if moe_layer and cfg.moe is not None:
        ff = cfg.moe.shared_intermediate_size / tensor
    else:
        ff = cfg.intermediate_size / tensor
    extra = 0.0
    if cfg.mla is not None:
        mla = cfg.mla
        heads = cfg.num_heads / tensor
        rank_q = mla.q_lora_rank or 0
        if policy == "none":
            extra = (heads * (mla.qk_nope_head_dim + mla.v_head_dim + 2 * mla.qk_rope_head_dim)
                     + 2 * rank_q + 2 * mla.latent_dim + mla.kv_lora_rank)
        elif policy in ("dots", "dots_with_no_batch_dims"):
            extra = heads * (mla.qk_nope_head_dim + mla.v_head_dim) + rank_q + mla.latent_dim
        elif policy == "save_qkv_proj":
            return d + mla.latent_dim
    if policy == "none":
        return 9 * d + 2 * q + kv + 5 * ff + extra
    if policy == "dots":
        return 2 * d + 2 * q + kv + 2 * ff + extra
    if policy == "dots_with_no_batch_dims":
        return 2 * d + q + kv + 2 * ff + extra
    if policy == "save_qkv_proj":
        return d + q + kv
    if policy == "full":
        return d
    raise ValueError(f"unknown remat policy {policy!r}")


def routed_bytes_per_token(cfg: models.ModelConfig, policy: str, tensor: int,
                           expert: int = 1) -> float:
    """Bytes per local token that an MoE layer's router and routed experts keep for
    the backward pass under `policy` (`none`: everything, which is also the
    forward working set of a prefill or a teacher's layer); 0 for a dense model.
    Written from moe.py (estimates, not measured):

      router    float32 [E] logits and softmax probabilities and the load-balancing
                loss's (3 x E x 4 B; sigmoid scoring: logits, scores, the corrected
                and group-masked choice and the loss's normalised scores, 5 x E x 4 B)
      gather    with expert > 1, `sharded_experts` all-gathers the tokens of the
                expert-axis peers: expert x (d in the compute dtype + k float32
                weights and int32 ids)
      pairs     expert x k routed (token, expert) rows per local token, every one
                through ragged_dot whichever device holds its expert: the gathered
                row (d), gate, up, sigmoid(gate), silu(gate) and their product (5 x
                f / tensor, as a dense SwiGLU), the float32 down-projection output
                and its weighted copy (2 d x 4 B), and int32 sort indices and a
                float32 weight (6 x 4 B)
      combine   the float32 [expert x tokens, d] scatter-add target, the
                psum_scatter's float32 [tokens, d] (expert > 1), the cast output

    dots (and dots_with_no_batch_dims) keep the matmul outputs: the float32
    router logits, gate and up (2 f / tensor per pair) and the float32 down
    output (d x 4 B per pair); save_qkv_proj and full keep nothing of it."""
    if cfg.moe is None:
        return 0.0
    moe = cfg.moe
    act = _bytes(cfg.dtype)
    d, e, k = cfg.hidden_size, moe.num_experts, moe.experts_per_token
    f = moe.expert_intermediate_size / tensor
    pairs = expert * k
    if policy == "none":
        router = e * 4 * (5 if moe.scoring == "sigmoid" else 3)
        gather = expert * (d * act + k * 8) if expert > 1 else k * 8
        per_pair = d * act + 5 * f * act + 2 * d * 4 + 6 * 4
        combine = expert * d * 4 + (d * 4 if expert > 1 else 0) + d * act
        return router + gather + pairs * per_pair + combine
    if policy in ("dots", "dots_with_no_batch_dims"):
        return e * 4 + pairs * (2 * f * act + d * 4)
    if policy in ("save_qkv_proj", "full"):
        return 0.0
    raise ValueError(f"unknown remat policy {policy!r}")


def layer_bytes_per_token(cfg: models.ModelConfig, policy: str, tensor: int, expert: int = 1,
                          moe_layer: bool = False) -> float:
    """Bytes per local token of one layer of this kind under `policy` (see
    `saved_per_token` and `routed_bytes_per_token`), attention matrices aside."""
    routed = routed_bytes_per_token(cfg, policy, tensor, expert) if moe_layer else 0.0
    return saved_per_token(cfg, policy, tensor, moe_layer) * _bytes(cfg.dtype) + routed


# XLA flag that lowers a GPU ragged_dot's forward (ragged rows) to a cuDNN grouped
# GEMM instead of the dense expansion (cuDNN >= 9.22; weight gradients still expand).
CUDNN_RAGGED_DOT_FLAG = "--xla_gpu_experimental_use_ragged_dot_fusion=true"


def ragged_dot_expands(backend: str, backward: bool = False) -> bool:
    """Whether `jax.lax.ragged_dot` (the routed experts) runs as a dense dot over a
    group-masked operand E times the routed rows on `backend`, as this process is
    configured: never on TPU (chlo.ragged_dot runs natively); on GPU unless JAX's
    Pallas-Triton lowering is on (jax_ragged_dot_use_gpu_pallas_triton_lowering) or,
    forward only, XLA_FLAGS has CUDNN_RAGGED_DOT_FLAG (XLA's RaggedDotRewriter
    otherwise expands it); always on CPU (JAX's fallback lowering)."""
    if backend == "tpu":
        return False
    if backend == "gpu":
        if jax.config.jax_ragged_dot_use_gpu_pallas_triton_lowering:
            return False
        return backward or CUDNN_RAGGED_DOT_FLAG not in os.environ.get("XLA_FLAGS", "")
    return True


def ragged_dot_bytes_per_token(cfg: models.ModelConfig, tensor: int, expert: int,
                               backend: str, backward: bool = False) -> float:
    """The transient of the routed experts' ragged_dots per local token, as
    `backend` lowers them (`ragged_dot_expands`); 0 for a dense model or a native
    lowering (TPU). Expanded, a ragged_dot is one dense dot over [rows, local
    experts, K]: E / expert times each of the expert x k routed rows a local token
    has (`routed_bytes_per_token`). Fitted to XLA's temporaries of an MoE layer on
    CPU (d 256, f 512, E 8 and 32, float32 and bfloat16): forward 2 d per expanded
    row in the compute dtype (the gate and up operands; with the routed pairs,
    -9% to +31% of XLA's), backward (the weight gradients expand both operands)
    (d + f / tensor) x (2 x compute bytes + 12) (+7% to +13%). GPU's expansion is
    XLA's own pass, assumed alike (not measured)."""
    if cfg.moe is None or not ragged_dot_expands(backend, backward):
        return 0.0
    moe = cfg.moe
    act = _bytes(cfg.dtype)
    expanded = expert * moe.experts_per_token * (moe.num_experts // expert)
    if backward:
        return expanded * (cfg.hidden_size + moe.expert_intermediate_size / tensor) * (2 * act + 12)
    return expanded * 2 * cfg.hidden_size * act


def _max_layer_bytes_per_token(cfg: models.ModelConfig, policy: str, tensor: int,
                               expert: int = 1, backend: str | None = None,
                               backward: bool = False) -> float:
    """The larger kind of layer's `layer_bytes_per_token`: one layer's working set;
    with `backend`, an MoE layer's ragged_dot transient on it too."""
    return max(layer_bytes_per_token(cfg, policy, tensor, expert, moe)
               + (ragged_dot_bytes_per_token(cfg, tensor, expert, backend, backward)
                  if moe and backend else 0.0)
               for _, moe in _layer_kinds(cfg))


def attention_copies(cfg: models.ModelConfig, policy: str,
                     kernel: str | None = None) -> tuple[int, int]:
    """(kept per layer for the backward pass, live while one layer's backward runs)
    counts of [rows, heads, L, L] float32 attention matrices for `kernel` (default
    cfg.attention_impl; resolve "auto" first with `attention_kernel`). XLA
    attention: `none` keeps scores and probabilities, `dots` the scores (a dot's
    output); a layer's backward holds probabilities, their gradient and the
    scores' gradient (plus the recomputed scores when they were not kept). Flash
    kernels (blockwise, splash, cudnn) keep none: they work in tiles
    (`attention_working`)."""
    kernel = kernel or cfg.attention_impl
    if kernel in FLASH_KERNELS:
        return 0, 0
    if kernel != "xla":
        raise ValueError(f"attention kernel {kernel!r}: resolve attention_impl first "
                         "(attention_kernel)")
    kept = {"none": 2, "dots": 1}.get(policy, 0)
    return kept, 3 if kept else 4


def attention_working(cfg: models.ModelConfig, kernel: str, policy: str, rows: int,
                      seq_len: int, tensor: int, backward: bool = True) -> tuple[int, int]:
    """(kept per layer, live in one layer's pass) bytes of a flash kernel besides
    the q, k, v and output `saved_per_token` counts; (0, 0) for xla (its matrices
    are `attention_copies`).

    kept: the float32 logsumexp [rows, heads, L], a residual of every flash kernel,
    kept where the policy keeps the attention's residuals (none, dots*).
    live: the logsumexp again, a few (4: scores, probabilities, their gradients)
    [rows, heads, tile, tile] float32 tiles, and in the backward the float32
    gradient of q (splash, cudnn: dq accumulates in float32); blockwise, plain
    JAX, also holds float32 dk, dv and dout and blocked (transposed) copies of q,
    k, v, out and the gradients: ~ tokens x (2 q + kv) x (4 + compute bytes)."""
    if kernel not in FLASH_KERNELS:
        return 0, 0
    heads = math.ceil(cfg.num_heads / tensor)
    tokens = rows * seq_len
    lse = tokens * heads * 4
    kept = lse if policy in ("none", "dots", "dots_with_no_batch_dims") else 0
    tile = min(FLASH_TILE[kernel], seq_len)
    live = lse + (4 if backward else 2) * rows * heads * tile * tile * 4
    if backward:
        width = _attention_head_dim(cfg)
        q = heads * width
        kv = 2 * math.ceil(cfg.num_kv_heads / tensor) * width
        if kernel == "blockwise":
            live += tokens * (2 * q + kv) * (4 + _bytes(cfg.dtype))
        else:
            live += tokens * q * 4
    return kept, live


def plan_training(cfg: models.ModelConfig, mesh: Mapping[str, int], batch_size: int,
                  seq_len: int, microbatches: int = 1, device_memory: int | None = None,
                  teacher_cfg: models.ModelConfig | None = None, topk: int = 0,
                  headroom: float = DEFAULT_HEADROOM, loss_chunk_size: int = 0,
                  backend: str | None = None) -> MemoryPlan:
    """Per-device peak of one training step (see the module docstring).

    `loss_chunk_size`: train.loss_chunk_size, positions of each row per loss chunk
    (0: the whole microbatch's logits at once). `backend`: the platform the run
    will use ("tpu", "gpu", "cpu"; default this process's), which picks the
    attention kernel of attention_impl="auto"."""
    backend = backend or default_backend()
    mesh = _mesh(mesh)
    batch_shards = data_parallel(mesh)
    tensor, expert = mesh["tensor"], mesh.get("expert", 1)
    if batch_size % (microbatches * batch_shards):
        raise PlanError(f"global batch {batch_size} does not split into {microbatches} "
                        f"microbatches over {batch_shards} data-parallel shards")
    rows = batch_size // microbatches // batch_shards          # per device, per microbatch
    tokens = rows * seq_len
    act = _bytes(cfg.dtype)
    grad_bytes = _bytes(cfg.param_dtype)
    policy = cfg.remat_policy
    kernel = attention_kernel(cfg, seq_len, backend)
    p = param_bytes_per_device(cfg, mesh)
    attention = rows * math.ceil(cfg.num_heads / tensor) * seq_len * seq_len * 4
    kept, live = attention_copies(cfg, policy, kernel)
    flash_kept, flash_live = attention_working(cfg, kernel, policy, rows, seq_len, tensor)
    # Per layer kind (DeepSeek: dense layers, then MoE layers), what it keeps.
    activations = sum(count * (tokens * layer_bytes_per_token(cfg, policy, tensor, expert, moe)
                               + kept * attention + flash_kept)
                      for count, moe in _layer_kinds(cfg))
    vocab = math.ceil(cfg.vocab_size / tensor)
    # FSDP gathers a layer's weights (the next one's prefetched) in the compute
    # dtype, and its gradient exists whole before the reduce-scatter.
    fsdp = mesh["fsdp"] > 1
    layer_gather = (gathered_layer_params(cfg, tensor, expert) * (2 * act + grad_bytes)
                    if fsdp else 0)
    head_gather = cfg.hidden_size * vocab * (act + grad_bytes) if fsdp else 0
    # The loss's backward: unchunked, the float32 [tokens, vocab] logits and their
    # gradient; chunked, one chunk's logits and gradient (and an online teacher's
    # chunk logits), plus the float32 gradient of the hidden states and their
    # reordered copy. A chunk of a whole row is no chunking.
    chunk = loss_chunk_size if 0 < loss_chunk_size < seq_len else 0
    if chunk:
        copies = 2 + (1 if teacher_cfg is not None else 0)
        loss = (copies * rows * chunk * vocab * 4
                + tokens * cfg.hidden_size * (4 + act))
    else:
        loss = 2 * tokens * vocab * 4
    layer = (tokens * _max_layer_bytes_per_token(cfg, "none", tensor, expert, backend,
                                                  backward=True)
             + live * attention + flash_live)
    working = max(loss + head_gather, layer + layer_gather)
    terms = {
        "params": p,
        "optimizer": 2 * p,                                    # AdamW mu, nu
        "gradients": 2 * p,                                    # gradient + accumulator
        "activations": int(activations),
        "working": int(working),
        "batch": int(rows * microbatches * seq_len * 4 * (5 + (2 * topk + 1 if topk else 0))),
    }
    notes = []
    if kept or live:
        share = (kept * cfg.num_layers + live) * attention / max(sum(terms.values()), 1)
        if share > 0.3:
            notes.append(f"{share:.0%} of this is [rows, heads, L, L] attention matrices: XLA "
                         f"attention materializes them; at seq_len={seq_len} use "
                         "model.attention_impl='auto' (splash on TPU, cudnn on GPU, blockwise "
                         "elsewhere) or 'blockwise': flash kernels keep no [L, L] matrix")
    if not chunk and loss + head_gather >= layer + layer_gather:
        share = loss / max(sum(terms.values()), 1)
        if share > 0.3:
            notes.append(f"{share:.0%} of this is the float32 [tokens, vocab] logits and their "
                         "gradient: set train.loss_chunk_size (e.g. 2048 positions per row) "
                         "to compute the loss chunk by chunk")
    if teacher_cfg is not None:
        t_kernel = attention_kernel(teacher_cfg, seq_len, backend)
        t_heads = math.ceil(teacher_cfg.num_heads / tensor)
        t_attention = (2 * rows * t_heads * seq_len * seq_len * 4 if t_kernel == "xla" else
                       attention_working(teacher_cfg, t_kernel, "full", rows, seq_len, tensor,
                                         backward=False)[1])
        t_out = (tokens * teacher_cfg.hidden_size * _bytes(teacher_cfg.dtype) if chunk
                 else tokens * math.ceil(teacher_cfg.vocab_size / tensor) * 4)
        t_gather = (2 * gathered_layer_params(teacher_cfg, tensor, expert)
                    * _bytes(teacher_cfg.dtype) if fsdp else 0)
        # An MoE teacher's layer also routes this microbatch through its experts.
        t_routed = tokens * (routed_bytes_per_token(teacher_cfg, "none", tensor, expert)
                             + ragged_dot_bytes_per_token(teacher_cfg, tensor, expert, backend))
        terms["teacher"] = int(param_bytes_per_device(teacher_cfg, mesh) + t_out
                               + tokens * teacher_cfg.hidden_size * 4 * 4 + t_attention
                               + t_gather + t_routed)
        notes.append("online or on-policy KD: the teacher's params, one microbatch of its "
                     + ("final hidden states" if chunk else "logits")
                     + " and one layer's forward")
    return MemoryPlan("train", mesh, terms, device_memory, headroom, notes, backend, kernel)


STEP_TRANSIENTS = ("gradients", "activations", "working", "batch")
SAMPLER_TRANSIENTS = ("kv_cache", "prefill", "decode", "gathered", "outputs", "logits")


def add_on_policy_sampling(plan: MemoryPlan, cfg: models.ModelConfig, slots: int,
                           seq_len: int, max_new_tokens: int) -> MemoryPlan:
    """Adds to a training plan the sampling an on-policy run does between steps
    (module docstring, term `sampling`): `slots` rows of the student (all hosts)
    with prompts in the length bucket of seq_len - max_new_tokens. The sampler
    reads the state's params in place, so they are not counted twice."""
    from distill_jax.sampling.sampler import DEFAULT_LENGTH_BUCKETS, bucket
    prompt_len = bucket(max(seq_len - max_new_tokens, 1), DEFAULT_LENGTH_BUCKETS,
                        "on-policy prompt budget")
    sample = plan_sampling(cfg, plan.mesh, slots, prompt_len, max_new_tokens,
                           backend=plan.backend)
    sampler = sum(sample.terms[k] for k in SAMPLER_TRANSIENTS)
    step = sum(plan.terms[k] for k in STEP_TRANSIENTS)
    plan.terms["sampling"] = max(0, sampler - step)
    plan.notes.append(
        f"on-policy: between steps the student samples {slots} slots of prompt bucket "
        f"{prompt_len} + {max_new_tokens} new tokens: {_fmt(sampler)} of cache and "
        f"working set (KV cache {_fmt(sample.terms['kv_cache'])}) in place of the step's "
        f"{_fmt(step)} of transients")
    return plan


def cache_bytes_per_position(cfg: models.ModelConfig, mesh: Mapping[str, int]) -> int:
    """One slot position's KV-cache bytes on a device, all layers:
    `kv_cache.bytes_per_token` with each dimension split as `kv_cache.logical_axes`
    places it (slots aside): grouped-query k and v [layers, kv_heads, head_dim] with
    kv heads over tensor; a latent-attention cache one latent "head" of
    kv_lora_rank + rope per layer, replicated over tensor."""
    heads, k_dim, v_dim = kv_cache.cache_head_shape(cfg)
    axes = kv_cache.logical_axes(cfg)
    total = 0
    for dim, names in ((k_dim, axes.k), (v_dim, axes.v)):
        spec = sharding.logical_to_mesh_spec(jax.sharding.PartitionSpec(*names))
        # [layers, batch, heads, length, dim]: batch and length are the slots'.
        shard = [-(-n // _axis_size(mesh, spec[i]))
                 for i, n in ((0, cfg.num_layers), (2, heads), (4, dim))]
        total += math.prod(shard)
    return total * _bytes(cfg.dtype)


def _decode_bytes_per_token(cfg: models.ModelConfig, tensor: int, expert: int,
                            backend: str) -> float:
    """One decode step's layer working set per slot: the layer's forward (as
    `layer_bytes_per_token` under none) except that latent attention runs the
    absorbed form over its cache instead of expanding k and v per head: per head
    the query in latent space and with its RoPE part (2 x (kv_lora_rank + rope)),
    the attended latent (float32) and the output (v_head_dim)."""
    if cfg.mla is None:
        return _max_layer_bytes_per_token(cfg, "none", tensor, expert, backend)
    mla, act = cfg.mla, _bytes(cfg.dtype)
    heads = cfg.num_heads / tensor
    attn = (heads * (cfg.head_dim + 2 * mla.latent_dim + mla.v_head_dim)
            + 2 * (mla.q_lora_rank or 0) + 2 * mla.latent_dim + mla.kv_lora_rank) * act \
        + heads * mla.kv_lora_rank * 4
    return max(
        (9 * cfg.hidden_size + 5 * (cfg.moe.shared_intermediate_size if moe and cfg.moe
                                    else cfg.intermediate_size) / tensor) * act + attn
        + (routed_bytes_per_token(cfg, "none", tensor, expert)
           + ragged_dot_bytes_per_token(cfg, tensor, expert, backend) if moe else 0)
        for _, moe in _layer_kinds(cfg))


def plan_sampling(cfg: models.ModelConfig, mesh: Mapping[str, int], slots: int, prompt_len: int,
                  max_new_tokens: int, device_memory: int | None = None,
                  headroom: float = DEFAULT_HEADROOM, top_k_out: int = 0,
                  backend: str | None = None, prefill_rows: int | None = None) -> MemoryPlan:
    """Per-device peak of the continuous-batching sampler: `slots` decode rows (all
    hosts) resident on the device, each with a KV cache of `prompt_len` (the
    prompt-length bucket) + `max_new_tokens` positions, sharded over data x fsdp x
    expert (slots) and, grouped-query attention, tensor (kv heads). Terms:

      params    the teacher's parameter shards (exact)
      kv_cache  the slots' cache: local slots x slot_len x `cache_bytes_per_position`
                (grouped-query: 2 x layers x local kv_heads x head_dim; latent:
                layers x (kv_lora_rank + rope), replicated over tensor), in the
                compute dtype (exact)
      prefill   an insert's transient: one layer's forward working set over
                `prefill_rows` prompts (default one per data-parallel shard, the
                engine's `prefill_batch`) through the kernel attention_impl
                picks for `prompt_len` on `backend` (default this process's), the
                larger kind of layer (an MoE layer's routed pairs:
                `routed_bytes_per_token`; latent attention's per-head k and v), plus
                the prefill's own cache (local prefill rows x prompt_len x
                `cache_bytes_per_position`) before it is copied into the slots
                (the slot cache is assumed updated in place, i.e. donated)
      decode    a step's transient: one layer's window of the cache (the layer
                scan copies it: up to local slots x slot_len of one layer), one
                layer's forward over the local slots (`_decode_bytes_per_token`:
                the absorbed form for latent attention, the routed pairs for MoE)
                and a decode block of float32 scores per head
      gathered  with fsdp > 1: the weights XLA gathers over fsdp in the compute
                dtype, one layer's (the next prefetched: 2 x `gathered_layer_params`,
                an MoE layer's routed experts split over expert and tensor only,
                as `moe.sharded_experts` takes them) or the LM head's, the larger
      outputs   one decode call's results: engine.DECODE_STEPS steps x local slots of a
                token id (int32) and its logprob (float32), and with `top_k_out` > 0
                its top-k ids (int32) and logprobs (float32)
      logits    a step's float32 [local slots, vocab] logits and two copies of the
                same shape (log-softmax, the filtered sampling distribution)

    prefill belongs to another program than decode and logits, and they are summed
    all the same: an upper bound by at most the smaller. PlanError when `slots` is
    not a multiple of the data-parallel size (data x fsdp x expert): the engine
    shards slots evenly; or when the expert axis does not divide num_experts."""
    backend = backend or default_backend()
    mesh = _mesh(mesh)
    check_expert_axis(cfg, mesh)
    batch_shards = data_parallel(mesh)
    tensor, expert = mesh["tensor"], mesh.get("expert", 1)
    if slots <= 0 or slots % batch_shards:
        raise PlanError(f"num_slots={slots} is not a positive multiple of the data-parallel "
                        f"size {batch_shards} ({_dp_words(mesh)})")
    prefill_rows = batch_shards if prefill_rows is None else int(prefill_rows)
    local_slots = slots // batch_shards
    local_prefill = math.ceil(prefill_rows / batch_shards)
    # The engine rounds a slot up to whole blocks of its decode attention.
    slot_len = -(-(prompt_len + max_new_tokens) // attention_kernels.DECODE_BLOCK) * \
        attention_kernels.DECODE_BLOCK
    act = _bytes(cfg.dtype)
    per_position = cache_bytes_per_position(cfg, mesh)                 # all layers
    cache = local_slots * slot_len * per_position
    kernel = attention_kernel(cfg, prompt_len, backend)
    heads = math.ceil(cfg.num_heads / tensor)
    if kernel == "xla":
        scores = 2 * local_prefill * heads * prompt_len ** 2 * 4
    else:
        scores = attention_working(cfg, kernel, "full", local_prefill, prompt_len, tensor,
                                   backward=False)[1]
    prefill_tokens = local_prefill * prompt_len
    layer = (prefill_tokens * _max_layer_bytes_per_token(cfg, "none", tensor, expert, backend)
             + scores)
    prefill = layer + prefill_tokens * per_position
    block = attention_kernels.decode_block(slot_len)
    decode = (local_slots * slot_len * per_position / cfg.num_layers
              + local_slots * _decode_bytes_per_token(cfg, tensor, expert, backend)
              + 3 * local_slots * heads * block * 4)
    gathered = 0
    if mesh["fsdp"] > 1:
        head = cfg.hidden_size * math.ceil(cfg.vocab_size / tensor)
        gathered = max(2 * gathered_layer_params(cfg, tensor, expert), head) * act
    outputs = local_slots * engine.DECODE_STEPS * (4 + 4 + 8 * top_k_out)
    terms = {"params": param_bytes_per_device(cfg, mesh), "kv_cache": int(cache),
             "prefill": int(prefill), "decode": int(decode), "gathered": int(gathered),
             "outputs": int(outputs), "logits": int(local_slots * cfg.vocab_size * 4 * 3)}
    notes = [f"{slots} slots ({local_slots} per device) of {slot_len} positions "
             f"(prompt bucket {prompt_len} + {max_new_tokens} new tokens); prefill of up to "
             f"{prefill_rows} prompts"]
    if cfg.mla is not None:
        notes.append(f"latent attention: the cache holds {cfg.mla.latent_dim} values "
                     f"(kv_lora_rank + rope) per token and layer, "
                     f"{_fmt(kv_cache.bytes_per_token(cfg))} per token, replicated over tensor")
    if cfg.moe is not None and ragged_dot_expands(backend):
        notes.append(f"MoE on {backend}: ragged_dot runs as a dense dot over the routed rows "
                     f"expanded over the {cfg.moe.num_experts // expert} local experts (XLA's "
                     "lowering here; planned in prefill and decode)"
                     + (f"; XLA_FLAGS={CUDNN_RAGGED_DOT_FLAG} (cuDNN >= 9.22) runs the "
                        "forward as a grouped GEMM instead" if backend == "gpu" else ""))
    if cfg.moe is not None and expert > 1:
        notes.append(f"MoE: each of the {expert} expert-axis devices all-gathers its peers' "
                     f"tokens, so a prefill routes {expert} x {cfg.moe.experts_per_token} x "
                     f"{prefill_tokens} (token, expert) rows through its experts")
    return MemoryPlan("sample", mesh, terms, device_memory, headroom, notes, backend, kernel,
                      slots)


def slot_multiple(mesh: Mapping[str, int], multiple: int = 1) -> int:
    """The step slot counts come in: the least common multiple of `multiple` (e.g. the
    host count) and the data-parallel size data x fsdp x expert."""
    return math.lcm(int(multiple), data_parallel(mesh))


def slots_that_fit(cfg: models.ModelConfig, mesh: Mapping[str, int], prompt_len: int,
                   max_new_tokens: int, device_memory: int,
                   headroom: float = DEFAULT_HEADROOM, top_k_out: int = 0,
                   backend: str | None = None, multiple: int = 1) -> int:
    """The largest slot count, a multiple of `multiple` and of data x fsdp x expert, whose
    `plan_sampling` fits `device_memory` (doubling, then bisection: the plan grows
    with the slots); 0 when not even one such group fits; at most MAX_SLOTS (or one
    group, where a group is larger)."""
    if device_memory is None:
        raise PlanError("slots_that_fit needs the device memory")
    backend = backend or default_backend()
    step = slot_multiple(mesh, multiple)
    top = max(1, MAX_SLOTS // step)                 # in groups

    def fits(groups: int) -> bool:
        return bool(plan_sampling(cfg, mesh, groups * step, prompt_len, max_new_tokens,
                                  device_memory, headroom, top_k_out, backend).fits)

    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None:
        nxt = min(good * 2, top)
        if nxt == good:
            return good * step
        if fits(nxt):
            good = nxt
        else:
            bad = nxt
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good * step


def _config_mesh(config, num_devices: int) -> dict[str, int]:
    """The config's mesh on `num_devices`; an absent one (None) puts every device on
    data, as sharding.make_mesh does."""
    mesh = config.get("mesh") if hasattr(config, "get") else None
    return resolve_mesh(dict(mesh) if mesh is not None else {"data": -1}, num_devices)


def _choose_slots(cfg: models.ModelConfig, mesh: Mapping[str, int], config, prompt_len: int,
                  device_memory: int | None, headroom: float, backend: str,
                  num_hosts: int) -> tuple[int, str]:
    """(slots, the rule that chose them) for a generate config; see resolve_num_slots.
    0 slots when num_slots=0 and not even one group fits (the caller refuses)."""
    s = config.sampling
    if cfg is not None:
        check_expert_axis(cfg, mesh)
    shards = data_parallel(mesh)
    step = slot_multiple(mesh, num_hosts)
    given = int(config.get("num_slots", 0) or 0)
    if given < 0:
        raise PlanError(f"num_slots={given}: give a positive slot count, or 0 for the "
                        "planner's")
    if given:
        if given % shards or given % num_hosts:
            raise PlanError(
                f"num_slots={given} is not a multiple of the data-parallel size {shards} "
                f"(mesh {_dp_words(mesh)})"
                + (f" and of the {num_hosts} hosts" if num_hosts > 1 else "")
                + f": use a multiple of {step}, e.g. {max(step, given // step * step)}, "
                "or 0 for the planner's count")
        return given, f"num_slots={given}, as configured"
    if device_memory is None:
        slots = max(step, DEFAULT_NUM_SLOTS // step * step)
        return slots, (f"num_slots=0 and the device reports no memory: the default "
                       f"{DEFAULT_NUM_SLOTS}" + (f", rounded to a multiple of {step}"
                                                 if slots != DEFAULT_NUM_SLOTS else ""))
    slots = slots_that_fit(cfg, mesh, prompt_len, s.max_new_tokens, device_memory, headroom,
                           s.return_top_k, backend, num_hosts)
    return slots, (f"num_slots=0: the most that fit ({slots}, a multiple of {step}) in "
                   f"{_fmt(device_memory)} per device with {headroom:.0%} headroom at "
                   f"prompt_len {prompt_len} + max_new_tokens {s.max_new_tokens}"
                   + (f", capped at {MAX_SLOTS}" if slots >= MAX_SLOTS else ""))


def _no_slot_fits(cfg: models.ModelConfig, mesh: Mapping[str, int], num_devices: int,
                  prompt_len: int, max_new_tokens: int, device_memory: int, headroom: float,
                  top_k_out: int, backend: str, num_hosts: int) -> PlanError:
    """The refusal when not even one group of slots fits: the smallest group's plan,
    other meshes' counts that fit, and the max_new_tokens that would fit here."""
    step = slot_multiple(mesh, num_hosts)
    plan = plan_sampling(cfg, mesh, step, prompt_len, max_new_tokens, device_memory,
                         headroom, top_k_out, backend)
    alternatives = []
    for m in mesh_shapes(num_devices, cfg):
        if m == mesh:
            continue
        try:
            n = slots_that_fit(cfg, m, prompt_len, max_new_tokens, device_memory, headroom,
                               top_k_out, backend, num_hosts)
        except PlanError:
            continue
        if n:
            alt = plan_sampling(cfg, m, n, prompt_len, max_new_tokens, device_memory, headroom,
                                top_k_out, backend)
            alt.notes = [f"num_slots={n}"]
            alternatives.append(alt)
    alternatives.sort(key=lambda p: -p.slots)

    def fits(tokens: int) -> bool:
        return bool(plan_sampling(cfg, mesh, step, prompt_len, tokens, device_memory, headroom,
                                  top_k_out, backend).fits)

    if fits(1):
        good, bad = 1, max_new_tokens
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
        otherwise = (f"on this mesh {step} slots fit with max_new_tokens <= {good} (or a "
                     "shorter prompt_len); else add devices")
    else:
        otherwise = (f"on this mesh the params alone take {_fmt(plan.terms['params'])} per "
                     "device: shard them (mesh fsdp or tensor"
                     + (", or expert for the routed experts" if cfg.moe is not None else "")
                     + ") or add devices")
    lines = [f"not even {step} slots (the data-parallel size"
             + (f" and the {num_hosts} hosts" if num_hosts > 1 else "")
             + ") fit: num_slots=0 finds no slot count", _refusal(plan, alternatives[:3], None,
                                                                  otherwise)]
    return PlanError("\n".join(lines))


def resolve_num_slots(config, prompt_len: int, num_devices: int | None = None,
                      device_memory: int | None = None, backend: str | None = None,
                      num_hosts: int = 1) -> tuple[int, str]:
    """The generate stage's slot count and the rule that chose it (for the log).

    `config.num_slots` > 0 is used as given, refused (PlanError, a ValueError) when it
    is not a multiple of the data-parallel size (data x fsdp x expert of the config's mesh on
    `num_devices`, default jax.device_count()) or of `num_hosts`. 0 is the planner's
    count: `slots_that_fit` for the teacher, `prompt_len` (the prompt-length bucket)
    and sampling.max_new_tokens in `device_memory` (default what the device reports,
    `device_memory_bytes()`), PlanError saying what would fit when not even one group
    fits; where the device reports no memory (CPU), DEFAULT_NUM_SLOTS rounded down to
    a multiple of the data-parallel size and the host count (at least one)."""
    backend = backend or default_backend()
    num_devices = num_devices or jax.device_count()
    if device_memory is None:
        device_memory = device_memory_bytes()
    mesh = _config_mesh(config, num_devices)
    cfg = None
    if not int(config.get("num_slots", 0) or 0) and device_memory is not None:
        cfg = _model_from_config(config.teacher, config.tokenizer.path)
    slots, rule = _choose_slots(cfg, mesh, config, prompt_len, device_memory, DEFAULT_HEADROOM,
                                backend, num_hosts)
    if not slots:
        s = config.sampling
        raise _no_slot_fits(cfg, mesh, num_devices, prompt_len, s.max_new_tokens, device_memory,
                            DEFAULT_HEADROOM, s.return_top_k, backend, num_hosts)
    return slots, rule


def mesh_shapes(num_devices: int, cfg: models.ModelConfig | None = None) -> list[dict[str, int]]:
    """Every (data, fsdp, tensor) with product num_devices, tensor a power of two <= 8;
    for an MoE `cfg`, also with an expert axis > 1 that divides num_experts (and the
    devices): every (data, fsdp, expert, tensor)."""
    experts = [1]
    if cfg is not None and cfg.moe is not None:
        experts = [e for e in range(1, num_devices + 1)
                   if num_devices % e == 0 and cfg.moe.num_experts % e == 0]
    out = []
    for tensor in (1, 2, 4, 8):
        if num_devices % tensor:
            continue
        for expert in experts:
            if (num_devices // tensor) % expert:
                continue
            rest = num_devices // tensor // expert
            for fsdp in range(1, rest + 1):
                if rest % fsdp == 0:
                    out.append(_mesh({"data": rest // fsdp, "fsdp": fsdp, "expert": expert,
                                      "tensor": tensor}))
    return out


def suggest_training(cfg: models.ModelConfig, num_devices: int, batch_size: int, seq_len: int,
                     microbatches: int, device_memory: int, teacher_cfg=None, topk: int = 0,
                     headroom: float = DEFAULT_HEADROOM, limit: int = 3,
                     loss_chunk_size: int = 0, backend: str | None = None) -> list[MemoryPlan]:
    """Plans that fit on `num_devices` (meshes with an expert axis for an MoE model):
    first other meshes with the same remat and
    microbatches, then more remat, then more microbatches; fewest-bytes first within
    each tier. Empty when nothing fits on this many devices."""
    backend = backend or default_backend()
    policies = [cfg.remat_policy] + [p for p in ("save_qkv_proj", "full")
                                     if p != cfg.remat_policy]
    for policy in policies:
        for mb in sorted({microbatches, *[m for m in MICROBATCH_STEPS if m > microbatches]}):
            found = []
            for mesh in mesh_shapes(num_devices, cfg):
                try:
                    plan = plan_training(cfg.replace(remat_policy=policy), mesh, batch_size,
                                         seq_len, mb, device_memory, teacher_cfg, topk, headroom,
                                         loss_chunk_size, backend)
                except PlanError:
                    continue
                if plan.fits:
                    plan.notes.append(f"remat_policy={policy}, microbatches={mb}")
                    found.append(plan)
            if found:
                return sorted(found, key=lambda x: x.total)[:limit]
    return []


def devices_needed(cfg: models.ModelConfig, batch_size: int, seq_len: int, device_memory: int,
                   teacher_cfg=None, topk: int = 0, headroom: float = DEFAULT_HEADROOM,
                   max_devices: int = 4096, loss_chunk_size: int = 0,
                   backend: str | None = None) -> tuple[int, MemoryPlan] | None:
    """The smallest power-of-two device count (with full remat allowed) that fits."""
    backend = backend or default_backend()
    n = 1
    while n <= max_devices:
        plans = suggest_training(cfg, n, batch_size, seq_len, 1, device_memory, teacher_cfg,
                                 topk, headroom, limit=1, loss_chunk_size=loss_chunk_size,
                                 backend=backend)
        if plans:
            return n, plans[0]
        n *= 2
    return None


def sequence_floor(cfg: models.ModelConfig, seq_len: int) -> int:
    """Bytes per device that no mesh lowers: one row's layer inputs, which full
    remat keeps for every layer, replicated over `tensor` (one row is the least a
    data-parallel shard holds). Above a device's usable memory, only sharding the
    sequence (context parallelism) would fit the run."""
    return cfg.num_layers * seq_len * cfg.hidden_size * _bytes(cfg.dtype)


# ------------------------------------------------------------------- hardware

# Per-chip memory the planner uses, as the R1 configs and the README state it: TPU
# HBM in GiB; GPUs at the physical memory nvidia-smi shows (81559 MiB for an H100
# 80GB, 143771 MiB for an H200 141GB; run JAX with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95,
# as JAX otherwise takes, and reports, 75% of a GPU). (platform, GiB per chip,
# chips per host, chip counts a slice or box comes in.)
ACCELERATORS: dict[str, tuple[str, float, int, tuple[int, ...]]] = {
    "v5p": ("tpu", 95.0, 4, tuple(2 ** i for i in range(2, 13))),          # v5p-8 .. v5p-8192
    "v6e": ("tpu", 32.0, 4, (1, 4, 8, 16, 32, 64, 128, 256)),
    "v5e": ("tpu", 16.0, 4, (1, 4, 8, 16, 32, 64, 128, 256)),
    "H100": ("gpu", 79.6, 8, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    "H200": ("gpu", 140.4, 8, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
}
# The slots a generate plan should hold to be worth running: a useful decode batch.
MIN_USEFUL_SLOTS = 32


@dataclasses.dataclass(frozen=True)
class Hardware:
    """A TPU slice or a GPU box (or several boxes) by its usual name."""
    family: str          # a key of ACCELERATORS
    chips: int

    @property
    def platform(self) -> str:
        return ACCELERATORS[self.family][0]

    @property
    def device_memory_gib(self) -> float:
        return ACCELERATORS[self.family][1]

    @property
    def device_memory(self) -> int:
        return int(self.device_memory_gib * GIB)

    @property
    def chips_per_host(self) -> int:
        # v5e/v6e slices of up to 8 chips are one host; a GPU box is 8 GPUs.
        if self.family in ("v5e", "v6e") and self.chips <= 8:
            return self.chips
        return min(ACCELERATORS[self.family][2], self.chips)

    @property
    def hosts(self) -> int:
        return max(1, self.chips // self.chips_per_host)

    @property
    def name(self) -> str:
        if self.family == "v5p":                 # v5p names count TensorCores, 2 per chip
            return f"v5p-{2 * self.chips}"
        if self.family == "v5e":
            return f"v5litepod-{self.chips}"
        if self.platform == "tpu":
            return f"{self.family}-{self.chips}"
        if self.chips <= 8:
            return f"{self.chips}x{self.family}"
        return f"{self.chips // 8} x 8x{self.family}"

    def describe(self) -> str:
        unit = "chips" if self.platform == "tpu" else "GPUs"
        return f"{self.name} ({self.chips} {unit} of {self.device_memory_gib:g} GiB)"


def weights_note(cfg: models.ModelConfig) -> str:
    """What the weights take in param_dtype over all devices, and that FP8-resident
    weights are not supported (what they would take)."""
    count = sum(math.prod(shape) for shape, *_ in _layout(cfg))
    total = param_bytes_per_device(cfg, {})
    return (f"weights: {count / 1e9:.1f}B params in {cfg.param_dtype} (router float32) = "
            f"{total / 1e9:,.0f} GB ({_fmt(total)}) over all devices. FP8-resident weights are "
            "not supported: an FP8 checkpoint (DeepSeek-V3/R1 as published) is dequantised to "
            f"param_dtype as it loads; FP8 weights would take about {count / 1e9:,.0f} GB "
            f"({_fmt(count)}, 1 B per param, plus float32 scales per 128x128 block)")


def smallest_hardware(cfg: models.ModelConfig, prompt_len: int, max_new_tokens: int,
                      min_slots: int = MIN_USEFUL_SLOTS, top_k_out: int = 0,
                      families=tuple(ACCELERATORS), headroom: float = DEFAULT_HEADROOM,
                      ) -> dict[str, tuple[Hardware, MemoryPlan] | None]:
    """Per accelerator family, the smallest slice or box (ACCELERATORS' chip counts)
    on which some mesh (`mesh_shapes`, tensor within a host, slots a multiple of the
    hosts) holds at least `min_slots` decode slots of prompt_len + max_new_tokens
    positions, with that mesh's plan at the most slots that fit (plan.slots); None
    where no size up to the family's largest does. Sizes whose total memory is
    below the weights are skipped without planning."""
    weights = param_bytes_per_device(cfg, {})
    out: dict[str, tuple[Hardware, MemoryPlan] | None] = {}
    for family in families:
        platform, _, _, sizes = ACCELERATORS[family]
        out[family] = None
        for chips in sizes:
            hw = Hardware(family, chips)
            if weights > (1 - headroom) * hw.device_memory * chips:
                continue
            counts = []
            for mesh in mesh_shapes(chips, cfg):
                if mesh["tensor"] > hw.chips_per_host or data_parallel(mesh) % hw.hosts:
                    continue
                try:
                    n = slots_that_fit(cfg, mesh, prompt_len, max_new_tokens, hw.device_memory,
                                       headroom, top_k_out, platform, hw.hosts)
                except PlanError:
                    continue
                counts.append((n, mesh))
            most = max((n for n, _ in counts), default=0)
            if most >= min_slots:       # the most slots; of equals, the fewest bytes
                plans = [plan_sampling(cfg, mesh, n, prompt_len, max_new_tokens,
                                       hw.device_memory, headroom, top_k_out, platform)
                         for n, mesh in counts if n == most]
                out[family] = (hw, min(plans, key=lambda p: p.total))
                break
    return out


def hardware_report(cfg: models.ModelConfig, prompt_len: int, max_new_tokens: int,
                    min_slots: int = MIN_USEFUL_SLOTS, top_k_out: int = 0,
                    families=tuple(ACCELERATORS), headroom: float = DEFAULT_HEADROOM) -> str:
    """`smallest_hardware` as lines for distill-plan, after the weights note; for a
    GPU family whose answer is more than one 8-GPU box, why one box does not do."""
    weights = param_bytes_per_device(cfg, {})
    fp8 = sum(math.prod(shape) for shape, *_ in _layout(cfg))       # ~1 B per param
    lines = [weights_note(cfg),
             f"smallest hardware holding the {cfg.param_dtype} weights and >= {min_slots} slots "
             f"of {prompt_len} + {max_new_tokens} positions ({headroom:.0%} headroom):"]
    for family, found in smallest_hardware(cfg, prompt_len, max_new_tokens, min_slots,
                                           top_k_out, families, headroom).items():
        platform, gib, _, sizes = ACCELERATORS[family]
        if found is None:
            biggest = Hardware(family, sizes[-1])
            lines.append(f"  {family}: nothing up to {biggest.describe()}")
            continue
        hw, plan = found
        usable = (1 - headroom) * hw.device_memory
        lines.append(f"  {family}: {hw.describe()}, mesh {plan.mesh}: {plan.slots} slots, "
                     f"{_fmt(plan.total)} of {_fmt(usable)} usable per device")
        if platform == "gpu" and hw.chips > 8:
            box = Hardware(family, 8)
            hbm = box.chips * box.device_memory
            why = (f"{_fmt(weights)} of weights exceed its {_fmt(hbm)} "
                   f"(8 x {gib:g} GiB)" if weights > hbm else
                   f"{_fmt(weights)} of weights leave too little of its "
                   f"{_fmt((1 - headroom) * hbm)} usable for {min_slots} slots")
            if weights > hbm and fp8 <= (1 - headroom) * hbm:
                why += (f"; FP8-resident weights (~{_fmt(fp8)}) would fit its "
                        f"{_fmt((1 - headroom) * hbm)} usable, but are not supported")
            lines.append(f"    one {box.name} box does not hold it: {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI

def device_memory_bytes() -> int | None:
    """This machine's per-device memory, where the backend reports it (GPU, TPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _model_from_config(mc, tokenizer_path: str | None) -> models.ModelConfig:
    """As the stages build it (a preset takes the tokenizer's vocabulary when the
    tokenizer is at hand, else the preset's)."""
    vocab_size = None
    if mc.get("preset") and tokenizer_path and storage.exists(tokenizer_path):
        from distill_jax.tokenizer import load_tokenizer
        vocab_size = load_tokenizer(tokenizer_path).vocab_size
    try:
        return models.config_from_section(mc, vocab_size)
    except ValueError as e:          # CheckpointError is one too
        raise PlanError(f"{e}; to plan a preset instead: --config.model.checkpoint= "
                        "--config.model.preset=<name>") from None


def resolve_mesh(mesh: Mapping[str, int], num_devices: int) -> dict[str, int]:
    sizes = {a: int(mesh.get(a, 1)) for a in sharding.MESH_AXES}
    known = math.prod(v for v in sizes.values() if v != -1)
    if list(sizes.values()).count(-1) > 1:
        raise PlanError(f"mesh {sizes}: at most one axis may be -1")
    if -1 in sizes.values():
        if num_devices % known:
            raise PlanError(f"mesh {sizes} does not divide {num_devices} devices")
        sizes[next(a for a, v in sizes.items() if v == -1)] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise PlanError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, the plan has "
                        f"{num_devices}")
    return _mesh(sizes)


def plan_from_config(config, num_devices: int, device_memory: int | None,
                     headroom: float = DEFAULT_HEADROOM, prompt_len: int = 1024,
                     backend: str | None = None) -> MemoryPlan:
    """The plan of a `distill-train` config (sections model/data/train/kd/mesh) or a
    `distill-generate` config (teacher/sampling/mesh) on `num_devices` devices of
    `device_memory` bytes of platform `backend` (default this process's). Raises
    PlanError, with what would fit, when it does not.

    A generate plan is of the sampler's slots (`plan_sampling`) at `prompt_len`, the
    prompt-length bucket: config.num_slots, or with num_slots=0 the planner's count
    (`resolve_num_slots`'s rules: the most that fit `device_memory`, or
    DEFAULT_NUM_SLOTS where it is unknown); the plan's first note says which."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise PlanError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    mesh = _config_mesh(config, num_devices)
    if "train" in config:
        cfg = _model_from_config(config.model, config.data.tokenizer_path)
        kc = config.kd
        teacher = (_model_from_config(kc.teacher, kc.teacher.tokenizer_path
                                      or config.data.tokenizer_path)
                   if kc.mode in ("online", "on_policy") else None)
        topk = kc.topk if kc.mode == "offline" else 0
        tc = config.train
        chunk = int(tc.get("loss_chunk_size", 0) or 0)
        seq_len = config.data.seq_len
        plan = plan_training(cfg, mesh, tc.batch_size, seq_len, tc.microbatches,
                             device_memory, teacher, topk, headroom, chunk, backend)
        if kc.mode == "on_policy" and plan.fits is not False:
            oc = config.on_policy
            add_on_policy_sampling(plan, cfg, oc.num_slots or tc.batch_size, seq_len,
                                   oc.max_new_tokens)
            if plan.fits is False:          # the step fits; the sampling does not
                raise PlanError(
                    f"{plan.table()}\non-policy training does not fit: the step and the "
                    "student's sampling share the device; lower on_policy.num_slots (the "
                    "slots sampled at once), on_policy.max_new_tokens or train.batch_size "
                    "(with microbatches), or add devices")
        if plan.fits is False:
            needed = devices_needed(cfg, tc.batch_size, seq_len, device_memory, teacher, topk,
                                    headroom, loss_chunk_size=chunk, backend=backend)
            otherwise = ""
            floor = sequence_floor(cfg, seq_len)
            if needed is None and floor > (1 - headroom) * device_memory:
                otherwise = (
                    f"one row of {seq_len} tokens keeps {_fmt(floor)} of layer inputs per "
                    f"device even with remat_policy=full ({cfg.num_layers} layers x "
                    f"{seq_len} x {cfg.hidden_size} x {_bytes(cfg.dtype)} B, replicated "
                    "over tensor): no mesh of these devices fits it without sharding the "
                    "sequence (context parallelism, which distill_jax does not implement); "
                    "use devices with more memory or shorten data.seq_len")
            raise PlanError(_refusal(plan, suggest_training(
                cfg, num_devices, tc.batch_size, seq_len, tc.microbatches, device_memory,
                teacher, topk, headroom, loss_chunk_size=chunk, backend=backend),
                needed, otherwise))
        return plan
    if "sampling" in config:
        t = config.teacher
        cfg = _model_from_config(t, config.tokenizer.path)
        s = config.sampling
        num_hosts = jax.process_count()
        slots, rule = _choose_slots(cfg, mesh, config, prompt_len, device_memory, headroom,
                                    backend, num_hosts)
        if not slots:
            raise _no_slot_fits(cfg, mesh, num_devices, prompt_len, s.max_new_tokens,
                                device_memory, headroom, s.return_top_k, backend, num_hosts)
        plan = plan_sampling(cfg, mesh, slots, prompt_len, s.max_new_tokens, device_memory,
                             headroom, s.return_top_k, backend)
        plan.notes.insert(0, rule)
        if cfg.moe is not None or cfg.mla is not None:
            plan.notes.append(weights_note(cfg))
        if plan.fits is False:
            fitting = []
            for m in mesh_shapes(num_devices, cfg):
                try:
                    p = plan_sampling(cfg, m, slots, prompt_len, s.max_new_tokens,
                                      device_memory, headroom, s.return_top_k, backend)
                except PlanError:            # slots do not divide this mesh's data x fsdp x expert
                    continue
                if p.fits:
                    p.notes = []
                    fitting.append(p)
            here = slots_that_fit(cfg, mesh, prompt_len, s.max_new_tokens, device_memory,
                                  headroom, s.return_top_k, backend, num_hosts)
            hint = "lower num_slots or max_new_tokens, or add devices"
            if here:
                hint += f" (num_slots={here} fits on this mesh; num_slots=0 picks it)"
            raise PlanError(_refusal(plan, sorted(fitting, key=lambda p: p.total)[:3], None,
                                     hint))
        return plan
    raise PlanError("not a distill-train or distill-generate config (no train or sampling "
                    "section)")


def config_hardware_report(config, prompt_len: int = 1024, min_slots: int = MIN_USEFUL_SLOTS,
                           moe_only: bool = False) -> str | None:
    """`hardware_report` of a distill-generate config's teacher at its
    sampling.max_new_tokens and return_top_k and `prompt_len` (the prompt bucket);
    None for a train config, or with `moe_only` for a teacher without experts."""
    if "sampling" not in config:
        return None
    cfg = _model_from_config(config.teacher, config.tokenizer.path)
    if moe_only and cfg.moe is None:
        return None
    s = config.sampling
    return hardware_report(cfg, prompt_len, s.max_new_tokens, min_slots, s.return_top_k)


def _refusal(plan: MemoryPlan, alternatives: list[MemoryPlan],
             needed: tuple[int, MemoryPlan] | None, otherwise: str = "") -> str:
    lines = [f"this {plan.kind} run does not fit: {_fmt(plan.total)} per device, "
             f"{_fmt((1 - plan.headroom) * plan.device_memory)} usable", plan.table()]
    if alternatives:
        lines.append(f"on the same {math.prod(plan.mesh.values())} devices these fit:")
        for alt in alternatives:
            lines.append(f"  mesh {alt.mesh}: {_fmt(alt.total)} per device"
                         + (f" ({'; '.join(alt.notes)})" if alt.notes else ""))
    else:
        lines.append(f"no mesh of {math.prod(plan.mesh.values())} devices of "
                     f"{_fmt(plan.device_memory)} fits it"
                     + (" (with any remat policy and up to 16 microbatches)"
                        if plan.kind == "train" else ""))
        if needed is not None:
            n, p = needed
            lines.append(f"it fits on {n} such devices: mesh {p.mesh}, {_fmt(p.total)} per "
                         f"device ({'; '.join(p.notes)})")
        else:
            lines.append(otherwise or "no device count up to 4096 fits it either: shorten "
                         "data.seq_len, lower train.batch_size, or use bigger devices")
    return "\n".join(lines)
