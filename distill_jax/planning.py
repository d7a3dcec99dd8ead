"""Memory and mesh planning: will a run fit, per device, before anything is allocated?

`plan_training` estimates one device's peak bytes during a training step:

  params       exact: every parameter's shard under the mesh and the logical rules
  optimizer    AdamW's two moments, sharded like the params (param dtype)
  gradients    the gradient tree plus the accumulator the microbatch scan keeps
  activations  what the backward pass keeps, per layer, under the remat policy
               (`saved_per_token`, `attention_copies`), for this device's tokens
               of one microbatch
  working      the transient peak on top: the larger of the loss's backward (the
               float32 logits and their gradient) and one layer's backward (its
               forward rebuilt in full, plus the attention matrices it works on)
  teacher      online KD: the teacher's params and its float32 logits
  batch        the int32 input arrays of this device's rows

and `plan_sampling` the sampler's: the teacher's params plus its KV cache
(2 x layers x rows x cache length x kv_heads x head_dim, in the compute dtype)
and a prefill's working set.

The activation and working-set terms are a model of what XLA keeps, written
from the layer's structure (which tensors each policy saves) and checked
against measured peaks on CPU (benchmarks/memory_plan_vs_measured.py,
BENCHMARKS.md); they are estimates, the params/optimizer/gradient/cache terms
are exact. `suggest_meshes` searches the (data, fsdp, tensor) factorizations of
the device count (and, failing those, remat and microbatching) for plans that
fit, so a refusal says what would work.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Mapping

import jax
import numpy as np

from distill_jax import models, sharding

GIB = 1024 ** 3
# Headroom kept free for XLA's own scratch, fragmentation and the runtime.
DEFAULT_HEADROOM = 0.10


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

    @property
    def total(self) -> int:
        return int(sum(self.terms.values()))

    @property
    def fits(self) -> bool | None:
        if self.device_memory is None:
            return None
        return self.total <= (1.0 - self.headroom) * self.device_memory

    def table(self) -> str:
        lines = [f"{self.kind} plan, mesh {self.mesh} — per device:"]
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
                "device_memory": self.device_memory, "fits": self.fits, "notes": self.notes}


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
    return math.prod(mesh[a] for a in axes)


@functools.lru_cache(maxsize=32)
def _param_layout(cfg: models.ModelConfig) -> tuple[tuple[tuple[int, ...], Any], ...]:
    """(shape, mesh PartitionSpec) of every parameter; traced once per architecture."""
    shapes = jax.tree_util.tree_leaves(models.param_shapes(cfg))
    specs = jax.tree_util.tree_leaves(models.param_logical_axes(cfg),
                                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return tuple((tuple(x.shape), sharding.logical_to_mesh_spec(spec))
                 for x, spec in zip(shapes, specs))


def param_bytes_per_device(cfg: models.ModelConfig, mesh: Mapping[str, int],
                           dtype=None) -> int:
    """Exact bytes of one device's parameter shards; PlanError where the mesh does
    not divide a sharded dimension."""
    itemsize = _bytes(dtype or cfg.param_dtype)
    layout = _param_layout(cfg.replace(remat_policy="none", dtype="float32",
                                       param_dtype="float32"))
    total = 0
    for shape, spec in layout:
        shard = []
        for d, axes in itertools.zip_longest(shape, spec):
            parts = _axis_size(mesh, axes)
            if d % parts:     # sharding.shard_params refuses this too
                raise PlanError(f"a parameter of shape {shape} has a dimension of {d}, which "
                                f"mesh axes {axes} (x{parts}) do not divide")
            shard.append(d // parts)
        total += math.prod(shard) * itemsize
    return total


def saved_per_token(cfg: models.ModelConfig, policy: str, tensor: int) -> float:
    """Values (not bytes) one layer keeps per token for the backward pass, besides
    attention matrices (`attention_copies`). D-sized tensors are replicated over
    `tensor`; heads and mlp tensors split over it.

      none:  9 D + 2 q + kv + 5 F — every residual JAX's autodiff keeps: the norms'
             inputs, normalized values and outputs, q/k before and after rope, v,
             the attention output, gate, up, sigmoid(gate), silu(gate), the product
      dots:  2 D + 2 q + kv + 2 F — the outputs of the matmuls (q, k, v, the
             attention output, o, gate, up)
      dots_with_no_batch_dims: 2 D + q + kv + 2 F — the same less the attention einsums
      save_qkv_proj: D + q + kv — the layer input and the named q, k, v
      full:  D — the layer input

    (q = heads x head_dim, kv = 2 x kv_heads x head_dim, F = intermediate size.)
    The coefficients of `none` and `dots` were read off XLA's buffers on CPU and
    agree with the measured peaks in BENCHMARKS.md.
    """
    d = cfg.hidden_size
    q = cfg.num_heads * cfg.head_dim / tensor
    kv = 2 * cfg.num_kv_heads * cfg.head_dim / tensor
    ff = cfg.intermediate_size / tensor
    if policy == "none":
        return 9 * d + 2 * q + kv + 5 * ff
    if policy == "dots":
        return 2 * d + 2 * q + kv + 2 * ff
    if policy == "dots_with_no_batch_dims":
        return 2 * d + q + kv + 2 * ff
    if policy == "save_qkv_proj":
        return d + q + kv
    if policy == "full":
        return d
    raise ValueError(f"unknown remat policy {policy!r}")


def attention_copies(cfg: models.ModelConfig, policy: str) -> tuple[int, int]:
    """(kept per layer for the backward pass, live while one layer's backward runs)
    counts of [rows, heads, L, L] float32 attention matrices with XLA attention:
    `none` keeps scores and probabilities, `dots` the scores (a dot's output);
    a layer's backward holds probabilities, their gradient and the scores'
    gradient (plus the recomputed scores when they were not kept). Flash (cudnn)
    attention keeps none: it works in tiles."""
    if cfg.attention_impl == "cudnn":
        return 0, 0
    kept = {"none": 2, "dots": 1}.get(policy, 0)
    return kept, 3 if kept else 4


def plan_training(cfg: models.ModelConfig, mesh: Mapping[str, int], batch_size: int,
                  seq_len: int, microbatches: int = 1, device_memory: int | None = None,
                  teacher_cfg: models.ModelConfig | None = None, topk: int = 0,
                  headroom: float = DEFAULT_HEADROOM) -> MemoryPlan:
    """Per-device peak of one training step (see the module docstring)."""
    mesh = {a: int(mesh[a]) for a in sharding.MESH_AXES}
    batch_shards = mesh["data"] * mesh["fsdp"]
    tensor = mesh["tensor"]
    if batch_size % (microbatches * batch_shards):
        raise PlanError(f"global batch {batch_size} does not split into {microbatches} "
                        f"microbatches over {batch_shards} data-parallel shards")
    rows = batch_size // microbatches // batch_shards          # per device, per microbatch
    tokens = rows * seq_len
    act = _bytes(cfg.dtype)
    policy = cfg.remat_policy
    p = param_bytes_per_device(cfg, mesh)
    attention = rows * math.ceil(cfg.num_heads / tensor) * seq_len * seq_len * 4
    kept, live = attention_copies(cfg, policy)
    per_layer = tokens * saved_per_token(cfg, policy, tensor) * act + kept * attention
    # The transient peak is the larger of two moments: the loss's backward (the
    # float32 logits and their gradient) and one layer's backward (its forward
    # rebuilt in full, plus the attention matrices it works on).
    vocab = math.ceil(cfg.vocab_size / tensor)
    working = max(2 * tokens * vocab * 4,
                  tokens * saved_per_token(cfg, "none", tensor) * act + live * attention)
    terms = {
        "params": p,
        "optimizer": 2 * p,                                    # AdamW mu, nu
        "gradients": 2 * p,                                    # gradient + accumulator
        "activations": int(cfg.num_layers * per_layer),
        "working": int(working),
        "batch": int(rows * microbatches * seq_len * 4 * (5 + (2 * topk + 1 if topk else 0))),
    }
    notes = []
    if kept or live:
        share = (kept * cfg.num_layers + live) * attention / max(
            sum(terms.values()), 1)
        if share > 0.3:
            notes.append(f"{share:.0%} of this is [rows, heads, L, L] attention matrices: XLA "
                         f"attention materializes them; at seq_len={seq_len} use "
                         "model.attention_impl='cudnn' (flash attention, GPU) or shorter "
                         "sequences")
    if teacher_cfg is not None:
        terms["teacher"] = int(param_bytes_per_device(teacher_cfg, mesh)
                               + tokens * vocab * 4 + tokens * teacher_cfg.hidden_size * 4 * 4)
        notes.append("online KD: the teacher's params and one microbatch of its logits")
    return MemoryPlan("train", mesh, terms, device_memory, headroom, notes)


def plan_sampling(cfg: models.ModelConfig, mesh: Mapping[str, int], rows: int, prompt_len: int,
                  max_new_tokens: int, device_memory: int | None = None,
                  headroom: float = DEFAULT_HEADROOM, top_k_out: int = 0) -> MemoryPlan:
    """Per-device peak of one sampler program: `rows` = prompts x n, all hosts."""
    mesh = {a: int(mesh[a]) for a in sharding.MESH_AXES}
    batch_shards = mesh["data"] * mesh["fsdp"]
    tensor = mesh["tensor"]
    local_rows = math.ceil(rows / batch_shards)
    cache_len = prompt_len + max_new_tokens
    act = _bytes(cfg.dtype)
    kv_heads = math.ceil(cfg.num_kv_heads / tensor)
    cache = 2 * cfg.num_layers * local_rows * cache_len * kv_heads * cfg.head_dim * act
    # Prefill of one layer (its largest transient) and the per-step outputs kept.
    prefill_rows = local_rows                # prompts are prefilled once, then repeated
    prefill = (prefill_rows * prompt_len * saved_per_token(cfg, "none", tensor) * act
               + 2 * prefill_rows * math.ceil(cfg.num_heads / tensor) * prompt_len ** 2 * 4)
    outputs = local_rows * max_new_tokens * (4 + 4 + 8 * top_k_out)
    terms = {"params": param_bytes_per_device(cfg, mesh), "kv_cache": int(cache),
             "working": int(prefill + local_rows * cfg.vocab_size * 4 * 3), "outputs": int(outputs)}
    return MemoryPlan("sample", mesh, terms, device_memory, headroom)


def mesh_shapes(num_devices: int) -> list[dict[str, int]]:
    """Every (data, fsdp, tensor) with product num_devices, tensor a power of two <= 8."""
    out = []
    for tensor in (1, 2, 4, 8):
        if num_devices % tensor:
            continue
        rest = num_devices // tensor
        for fsdp in range(1, rest + 1):
            if rest % fsdp == 0:
                out.append({"data": rest // fsdp, "fsdp": fsdp, "tensor": tensor})
    return out


def suggest_training(cfg: models.ModelConfig, num_devices: int, batch_size: int, seq_len: int,
                     microbatches: int, device_memory: int, teacher_cfg=None, topk: int = 0,
                     headroom: float = DEFAULT_HEADROOM, limit: int = 3) -> list[MemoryPlan]:
    """Plans that fit on `num_devices`: first other meshes with the same remat and
    microbatches, then more remat, then more microbatches; fewest-bytes first within
    each tier. Empty when nothing fits on this many devices."""
    policies = [cfg.remat_policy] + [p for p in ("save_qkv_proj", "full")
                                     if p != cfg.remat_policy]
    for policy in policies:
        for mb in sorted({microbatches, *[m for m in (2, 4, 8, 16) if m > microbatches]}):
            found = []
            for mesh in mesh_shapes(num_devices):
                try:
                    plan = plan_training(cfg.replace(remat_policy=policy), mesh, batch_size,
                                         seq_len, mb, device_memory, teacher_cfg, topk, headroom)
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
                   max_devices: int = 4096) -> tuple[int, MemoryPlan] | None:
    """The smallest power-of-two device count (with full remat allowed) that fits."""
    n = 1
    while n <= max_devices:
        plans = suggest_training(cfg, n, batch_size, seq_len, 1, device_memory, teacher_cfg,
                                 topk, headroom, limit=1)
        if plans:
            return n, plans[0]
        n *= 2
    return None


# ---------------------------------------------------------------------------- CLI

def device_memory_bytes() -> int | None:
    """This machine's per-device memory, where the backend reports it (GPU, TPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _model_from_config(mc, tokenizer_path: str | None) -> models.ModelConfig:
    """As the stages build it (a preset takes the tokenizer's vocabulary when the
    tokenizer is at hand, else the preset's)."""
    import os
    vocab_size = None
    if mc.get("preset") and tokenizer_path and os.path.exists(tokenizer_path):
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
    return sizes


def plan_from_config(config, num_devices: int, device_memory: int | None,
                     headroom: float = DEFAULT_HEADROOM, prompt_len: int = 1024) -> MemoryPlan:
    """The plan of a `distill-train` config (sections model/data/train/kd/mesh) or a
    `distill-generate` config (teacher/sampling/mesh). Raises PlanError, with what
    would fit, when it does not."""
    mesh = resolve_mesh(dict(config.mesh), num_devices)
    if "train" in config:
        cfg = _model_from_config(config.model, config.data.tokenizer_path)
        kc = config.kd
        teacher = (_model_from_config(kc.teacher, kc.teacher.tokenizer_path
                                      or config.data.tokenizer_path)
                   if kc.mode == "online" else None)
        topk = kc.topk if kc.mode == "offline" else 0
        tc = config.train
        plan = plan_training(cfg, mesh, tc.batch_size, config.data.seq_len, tc.microbatches,
                             device_memory, teacher, topk, headroom)
        if plan.fits is False:
            raise PlanError(_refusal(plan, suggest_training(
                cfg, num_devices, tc.batch_size, config.data.seq_len, tc.microbatches,
                device_memory, teacher, topk, headroom),
                devices_needed(cfg, tc.batch_size, config.data.seq_len, device_memory,
                               teacher, topk, headroom)))
        return plan
    if "sampling" in config:
        t = config.teacher
        cfg = _model_from_config(t, config.tokenizer.path)
        s = config.sampling
        rows = config.max_batch * jax.process_count()
        plan = plan_sampling(cfg, mesh, rows, prompt_len, s.max_new_tokens, device_memory,
                             headroom, s.return_top_k)
        if plan.fits is False:
            fitting = [p for p in (plan_sampling(cfg, m, rows, prompt_len, s.max_new_tokens,
                                                 device_memory, headroom, s.return_top_k)
                                   for m in mesh_shapes(num_devices)) if p.fits]
            raise PlanError(_refusal(plan, sorted(fitting, key=lambda p: p.total)[:3], None,
                                     "lower max_batch or max_new_tokens, or add devices"))
        return plan
    raise PlanError("not a distill-train or distill-generate config (no train or sampling "
                    "section)")


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
                     f"{_fmt(plan.device_memory)} fits it (with any remat policy and up to "
                     "16 microbatches)")
        if needed is not None:
            n, p = needed
            lines.append(f"it fits on {n} such devices: mesh {p.mesh}, {_fmt(p.total)} per "
                         f"device ({'; '.join(p.notes)})")
        else:
            lines.append(otherwise or "no device count up to 4096 fits it either: shorten "
                         "data.seq_len, lower train.batch_size, or use bigger devices")
    return "\n".join(lines)
