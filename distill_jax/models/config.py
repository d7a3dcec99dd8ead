"""Model configuration: one frozen dataclass for the Llama/Qwen/DeepSeek family.

`ModelConfig` is hashable so it can be a static argument of `jax.jit`. The
presets carry the exact values of the published `config.json` files, so a
checkpoint downloaded from the hub loads into `get_config(name)` unchanged.

Two optional parts describe the mixture-of-experts teachers: `moe` (a
`MoeConfig`: routed and shared experts, the router, the first dense layers) and
`mla` (an `MlaConfig`: DeepSeek's multi-head latent attention). A dense
Llama/Qwen model has neither.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from distill_jax.models import attention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
ROUTER_SCORINGS = ("softmax", "sigmoid")
MOE_DISPATCHES = ("ragged", "dense")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_qkv_proj")
ATTENTION_IMPLS = attention.IMPLS    # see models/attention.py


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `kind` is "linear", "llama3" (Llama 3.1+) or "yarn"
    (DeepSeek-V3/R1, Qwen3 long context: `beta_fast`/`beta_slow` bound the ramp
    between extrapolated and interpolated frequencies; `mscale`/`mscale_all_dim`
    give the attention-scale correction, 0 = absent as in config.json)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """A mixture-of-experts feed-forward (Qwen3-MoE, DeepSeek-V3/R1).

    Every layer from `first_dense_layers` on routes each token to
    `experts_per_token` of `num_experts` SwiGLU experts of width
    `expert_intermediate_size`, plus `num_shared_experts` always-on experts (one
    SwiGLU of num_shared x that width); the first layers keep the dense MLP of
    `ModelConfig.intermediate_size` (DeepSeek-V3's first_k_dense_replace).

    Router: `scoring="softmax"` (Qwen3-MoE) is softmax over experts then top-k,
    renormalised when `norm_topk_prob`. `scoring="sigmoid"` (DeepSeek-V3) takes
    sigmoid scores, picks experts by score + a learned correction bias within
    the `topk_groups` best of `num_groups` expert groups (a group's score is its
    two best), and weighs them by their uncorrected scores (renormalised when
    `norm_topk_prob`) times `routed_scaling_factor`.

    `dispatch` is how the routed experts run, not what they are: "ragged" sorts
    the token-expert pairs by expert and runs `jax.lax.ragged_dot` (dropless:
    no capacity, no token is ever dropped); "dense" runs every expert on every
    token and weighs by the routing: the reference the tests compare against.
    `aux_loss_coef` weighs the load-balancing loss a trainer adds for an MoE
    student (Switch/Qwen form, see `moe.load_balancing_loss`).
    """

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    scoring: str = "softmax"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    num_groups: int = 1
    topk_groups: int = 1
    first_dense_layers: int = 0
    aux_loss_coef: float = 0.0
    dispatch: str = "ragged"

    def __post_init__(self):
        if self.scoring not in ROUTER_SCORINGS:
            raise ValueError(f"router scoring {self.scoring!r} is not implemented; "
                             f"supported: {ROUTER_SCORINGS}")
        if self.dispatch not in MOE_DISPATCHES:
            raise ValueError(f"moe dispatch {self.dispatch!r}; choose from {MOE_DISPATCHES}")
        if not 0 < self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} must be in "
                             f"1..num_experts={self.num_experts}")
        if self.num_experts % self.num_groups:
            raise ValueError(f"num_groups={self.num_groups} does not divide "
                             f"num_experts={self.num_experts}")
        if not 0 < self.topk_groups <= self.num_groups:
            raise ValueError(f"topk_groups={self.topk_groups} must be in 1..num_groups="
                             f"{self.num_groups}")
        if self.num_groups > 1 and self.scoring != "sigmoid":
            raise ValueError("group-limited routing (num_groups > 1) is implemented for "
                             "sigmoid scoring (DeepSeek-V3) only")
        if self.num_groups > 1 and self.num_experts // self.num_groups < 2:
            raise ValueError("group-limited routing scores a group by its two best experts: "
                             "each group needs at least 2")
        if self.topk_groups * (self.num_experts // self.num_groups) < self.experts_per_token:
            raise ValueError(f"topk_groups={self.topk_groups} groups of "
                             f"{self.num_experts // self.num_groups} experts hold fewer than "
                             f"experts_per_token={self.experts_per_token}")

    @property
    def shared_intermediate_size(self) -> int:
        return self.num_shared_experts * self.expert_intermediate_size


@dataclasses.dataclass(frozen=True)
class MlaConfig:
    """DeepSeek-V2/V3 multi-head latent attention.

    Queries go through a rank-`q_lora_rank` bottleneck (None: one projection);
    keys and values are one shared latent of `kv_lora_rank` per token plus one
    shared RoPE key of `qk_rope_head_dim`, expanded per head to a no-RoPE key of
    `qk_nope_head_dim` and a value of `v_head_dim`. A decode cache holds only the
    latent and the RoPE key (kv_lora_rank + qk_rope_head_dim per token and
    layer). `rope_interleave`: the RoPE dimensions pair as (x0, x1), (x2, x3), ...
    as in DeepSeek's weights (transformers' default for deepseek_v3).
    """

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    rope_interleave: bool = True

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """What a decode cache holds per token and layer."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus numerics of a decoder-only transformer.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` is
    what parameters are stored in (fp32 master weights with bf16 compute is the
    usual training setup). Logits are always returned in float32.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False          # Qwen2/2.5: bias on q, k, v projections
    o_bias: bool = False            # Llama `attention_bias` also biases o_proj
    mlp_bias: bool = False
    qk_norm: bool = False           # Qwen3: RMSNorm over head_dim of q and k
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1
    attention_impl: str = "auto"    # auto | xla | blockwise | splash | cudnn
    moe: MoeConfig | None = None    # qwen3_moe, deepseek_v3
    mla: MlaConfig | None = None    # deepseek_v3
    name: str = ""

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}; choose from {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"unknown attention_impl {self.attention_impl!r}; choose from {ATTENTION_IMPLS}")
        if self.rope_dim % 2:
            raise ValueError(f"the RoPE dimension must be even, got {self.rope_dim}")
        wants_moe = self.model_type in ("qwen3_moe", "deepseek_v3")
        if wants_moe != (self.moe is not None):
            raise ValueError(f"model_type {self.model_type!r} "
                             + ("needs" if wants_moe else "has no") + " an MoE config (moe)")
        if (self.model_type == "deepseek_v3") != (self.mla is not None):
            raise ValueError("latent attention (mla) is exactly what deepseek_v3 has and "
                             f"{self.model_type!r} has not")
        if self.mla is not None:
            if self.num_kv_heads != self.num_heads:
                raise ValueError("latent attention expands keys and values per head: "
                                 f"num_kv_heads={self.num_kv_heads} must equal num_heads="
                                 f"{self.num_heads}")
            if self.head_dim != self.mla.qk_head_dim:
                raise ValueError(f"head_dim={self.head_dim} must be the q/k head dim "
                                 f"qk_nope_head_dim + qk_rope_head_dim = {self.mla.qk_head_dim}")
        if self.moe is not None and self.moe.first_dense_layers > self.num_layers:
            raise ValueError(f"first_dense_layers={self.moe.first_dense_layers} exceeds "
                             f"num_layers={self.num_layers}")

    @property
    def rope_dim(self) -> int:
        """How many dimensions of each q/k head RoPE rotates."""
        return self.mla.qk_rope_head_dim if self.mla is not None else self.head_dim

    @property
    def layer_stacks(self) -> tuple[tuple[str, int, int, bool], ...]:
        """The scanned stacks of layers: (param name, first layer, count, moe). An
        MoE model whose first layers are dense has two stacks, as in MaxText: one
        scan per kind of layer keeps compile time flat in depth."""
        if self.moe is None:
            return (("layers", 0, self.num_layers, False),)
        dense = self.moe.first_dense_layers
        stacks = []
        if dense:
            stacks.append(("dense_layers", 0, dense, False))
        if self.num_layers > dense:
            stacks.append(("layers", dense, self.num_layers - dense, True))
        return tuple(stacks)

    def attention_scale(self) -> float:
        """Softmax scale of q.k: 1/sqrt(q/k head dim), times YaRN's mscale(factor,
        mscale_all_dim)^2 for latent attention (DeepSeek-V3's correction)."""
        scale = 1.0 / math.sqrt(self.head_dim)
        rs = self.rope_scaling
        if self.mla is not None and rs is not None and rs.kind == "yarn" and rs.mscale_all_dim:
            scale *= yarn_mscale(rs.factor, rs.mscale_all_dim) ** 2
        return scale

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def context_warning(self, seq_len: int) -> str | None:
        """A warning when rows of `seq_len` tokens pass max_position_embeddings (the
        positions the model was configured for), naming the RoPE scaling in force;
        None within it."""
        if seq_len <= self.max_position_embeddings:
            return None
        rs = self.rope_scaling
        scaling = ("no RoPE scaling" if rs is None else
                   f"RoPE scaling {rs.kind} x{rs.factor} from "
                   f"{rs.original_max_position_embeddings} positions")
        return (f"sequences of {seq_len} tokens exceed {self.name or self.model_type}'s "
                f"max_position_embeddings={self.max_position_embeddings} ({scaling}, rope_theta "
                f"{self.rope_theta:g}): positions past it were never trained; raise "
                "max_position_embeddings (model.overrides) if that is intended")


def _qwen2(name, hidden, inter, layers, heads, kv, vocab, tie, max_pos, theta=1e6, eps=1e-6):
    return ModelConfig(
        model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
        rope_theta=theta, rms_norm_eps=eps, tie_word_embeddings=tie, qkv_bias=True,
        max_position_embeddings=max_pos, bos_token_id=151643, eos_token_id=151643, name=name)


def _qwen3(name, hidden, inter, layers, heads, kv, tie, max_pos=40960):
    return ModelConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=128, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=tie, qk_norm=True,
        max_position_embeddings=max_pos, bos_token_id=151643, eos_token_id=151645, name=name)


def _qwen3_moe(name, hidden, inter, moe_inter, layers, heads, kv, experts=128, top_k=8):
    return ModelConfig(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=128, rope_theta=1e6,
        rms_norm_eps=1e-6, qk_norm=True, max_position_embeddings=40960,
        bos_token_id=151643, eos_token_id=151645, name=name,
        moe=MoeConfig(num_experts=experts, experts_per_token=top_k,
                      expert_intermediate_size=moe_inter, norm_topk_prob=True,
                      aux_loss_coef=0.001))


def _deepseek_v3(name):
    """DeepSeek-V3 and R1 share one architecture (R1's config.json differs only in
    its name): 61 layers, the first 3 dense, 256 routed experts of which 8 per
    token in 4 of 8 groups, one shared expert, MLA, YaRN x40 from 4k."""
    return ModelConfig(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        num_layers=61, num_heads=128, num_kv_heads=128, head_dim=192, rope_theta=10000.0,
        rope_scaling=RopeScaling(kind="yarn", factor=40.0, original_max_position_embeddings=4096,
                                 beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        rms_norm_eps=1e-6, max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        name=name,
        moe=MoeConfig(num_experts=256, experts_per_token=8, expert_intermediate_size=2048,
                      num_shared_experts=1, scoring="sigmoid", norm_topk_prob=True,
                      routed_scaling_factor=2.5, num_groups=8, topk_groups=4,
                      first_dense_layers=3, aux_loss_coef=0.001),
        mla=MlaConfig(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                      v_head_dim=128, q_lora_rank=1536))


_LLAMA3_ROPE = RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)


def _llama3(name, hidden, inter, layers, heads, kv):
    return ModelConfig(
        model_type="llama", vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
        rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, rms_norm_eps=1e-5,
        max_position_embeddings=131072, bos_token_id=128000,
        eos_token_id=(128001, 128008, 128009), name=name)


# Values from the published config.json of each model.
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-0.5b": _qwen2("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, True, 32768),
    "qwen2.5-1.5b": _qwen2("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, True, 131072),
    "qwen2.5-7b": _qwen2("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, False, 131072),
    "qwen2.5-14b": _qwen2("qwen2.5-14b", 5120, 13824, 48, 40, 8, 152064, False, 131072, eps=1e-5),
    "qwen2.5-32b": _qwen2("qwen2.5-32b", 5120, 27648, 64, 40, 8, 152064, False, 131072, eps=1e-5),
    "qwen2.5-math-1.5b": _qwen2("qwen2.5-math-1.5b", 1536, 8960, 28, 12, 2, 151936, True, 4096,
                                theta=10000.0),
    "qwen2.5-math-7b": _qwen2("qwen2.5-math-7b", 3584, 18944, 28, 28, 4, 152064, False, 4096,
                              theta=10000.0),
    # DeepSeek-R1-Distill-Qwen-1.5B: the Qwen2.5-Math-1.5B body with a 128k context.
    "deepseek-r1-distill-qwen-1.5b": _qwen2("deepseek-r1-distill-qwen-1.5b", 1536, 8960, 28, 12,
                                            2, 151936, False, 131072, theta=10000.0).replace(
                                                bos_token_id=151646, eos_token_id=151643),
    "llama-3.1-8b": _llama3("llama-3.1-8b", 4096, 14336, 32, 32, 8),
    "llama-3.3-70b": _llama3("llama-3.3-70b", 8192, 28672, 80, 64, 8),
    "qwen3-0.6b": _qwen3("qwen3-0.6b", 1024, 3072, 28, 16, 8, True),
    "qwen3-8b": _qwen3("qwen3-8b", 4096, 12288, 36, 32, 8, False),
    # Mixture-of-experts teachers.
    "qwen3-30b-a3b": _qwen3_moe("qwen3-30b-a3b", 2048, 6144, 768, 48, 32, 4),
    "qwen3-235b-a22b": _qwen3_moe("qwen3-235b-a22b", 4096, 12288, 1536, 94, 64, 4),
    "deepseek-v3": _deepseek_v3("deepseek-v3"),
    "deepseek-r1": _deepseek_v3("deepseek-r1"),
    # Tiny configs for tests and the CPU demo: one of each family's quirks.
    "tiny-llama": ModelConfig(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
        rms_norm_eps=1e-5, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        name="tiny-llama"),
    "tiny-qwen2": ModelConfig(
        model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, tie_word_embeddings=True,
        qkv_bias=True, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        name="tiny-qwen2"),
    "tiny-qwen3": ModelConfig(
        model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=1e6, qk_norm=True,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, name="tiny-qwen3"),
    "tiny-qwen3-moe": ModelConfig(
        model_type="qwen3_moe", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, qk_norm=True,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, name="tiny-qwen3-moe",
        moe=MoeConfig(num_experts=8, experts_per_token=2, expert_intermediate_size=32,
                      norm_topk_prob=True, aux_loss_coef=0.001)),
    "tiny-deepseek-v3": ModelConfig(
        model_type="deepseek_v3", vocab_size=256, hidden_size=64, intermediate_size=128,
        num_layers=3, num_heads=4, num_kv_heads=4, head_dim=24, rope_theta=10000.0,
        rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_max_position_embeddings=64,
                                 beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.8),
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, name="tiny-deepseek-v3",
        moe=MoeConfig(num_experts=8, experts_per_token=3, expert_intermediate_size=32,
                      num_shared_experts=1, scoring="sigmoid", norm_topk_prob=True,
                      routed_scaling_factor=2.5, num_groups=4, topk_groups=2,
                      first_dense_layers=1),
        mla=MlaConfig(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                      q_lora_rank=48)),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A preset by its lower-case hub-like name, e.g. "qwen2.5-1.5b"."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides)


def _rope_scaling_from_hf(raw: Mapping[str, Any] | None) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(raw["factor"]))
    if kind == "llama3":
        return RopeScaling(
            kind="llama3", factor=float(raw["factor"]),
            low_freq_factor=float(raw["low_freq_factor"]),
            high_freq_factor=float(raw["high_freq_factor"]),
            original_max_position_embeddings=int(raw["original_max_position_embeddings"]))
    if kind == "yarn":
        missing = [k for k in ("factor", "original_max_position_embeddings") if k not in raw]
        if missing:
            raise ValueError(f"rope_scaling of type yarn lacks {missing}")
        attention_factor = raw.get("attention_factor")
        return RopeScaling(
            kind="yarn", factor=float(raw["factor"]),
            original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
            beta_fast=float(raw.get("beta_fast") or 32.0),
            beta_slow=float(raw.get("beta_slow") or 1.0),
            mscale=float(raw.get("mscale") or 0.0),
            mscale_all_dim=float(raw.get("mscale_all_dim") or 0.0),
            attention_factor=None if attention_factor is None else float(attention_factor),
            truncate=bool(raw.get("truncate", True)))
    raise ValueError(f"unsupported rope_scaling type {kind!r} "
                     "(supported: default, linear, llama3, yarn)")


def _moe_from_hf(hf: Mapping[str, Any]) -> MoeConfig | None:
    """The MoE part of a config.json; refuses routing settings we do not implement,
    naming the key, before any weight is read."""
    model_type = hf.get("model_type")

    def refuse(key, value, supported):
        raise ValueError(f"{model_type} config.json sets {key}={value!r}: not implemented "
                         f"(supported: {supported})")

    if model_type == "qwen3_moe":
        if int(hf.get("decoder_sparse_step", 1)) != 1:
            refuse("decoder_sparse_step", hf["decoder_sparse_step"], "1: every layer routed")
        if hf.get("mlp_only_layers"):
            refuse("mlp_only_layers", hf["mlp_only_layers"], "[]")
        # The hub's files say num_experts; transformers v5 writes num_local_experts.
        experts = int(hf.get("num_experts") or hf.get("num_local_experts") or 0)
        if not experts:
            refuse("num_experts", hf.get("num_experts"), "> 0")
        return MoeConfig(
            num_experts=experts, experts_per_token=int(hf["num_experts_per_tok"]),
            expert_intermediate_size=int(hf["moe_intermediate_size"]),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))
    if model_type == "deepseek_v3":
        if hf.get("scoring_func", "sigmoid") != "sigmoid":
            refuse("scoring_func", hf["scoring_func"], "sigmoid")
        if hf.get("topk_method", "noaux_tc") != "noaux_tc":
            refuse("topk_method", hf["topk_method"], "noaux_tc")
        if int(hf.get("moe_layer_freq", 1)) != 1:
            refuse("moe_layer_freq", hf["moe_layer_freq"], "1")
        if hf.get("hidden_act", "silu") != "silu":
            refuse("hidden_act", hf["hidden_act"], "silu")
        return MoeConfig(
            num_experts=int(hf["n_routed_experts"]),
            experts_per_token=int(hf["num_experts_per_tok"]),
            expert_intermediate_size=int(hf["moe_intermediate_size"]),
            num_shared_experts=int(hf.get("n_shared_experts") or 0), scoring="sigmoid",
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
            num_groups=int(hf.get("n_group") or 1), topk_groups=int(hf.get("topk_group") or 1),
            first_dense_layers=int(hf.get("first_k_dense_replace", 0)),
            aux_loss_coef=float(hf.get("aux_loss_alpha", 0.0)))
    return None


def _mla_from_hf(hf: Mapping[str, Any]) -> MlaConfig | None:
    if hf.get("model_type") != "deepseek_v3":
        return None
    q_rank = hf.get("q_lora_rank")
    return MlaConfig(kv_lora_rank=int(hf["kv_lora_rank"]),
                     qk_nope_head_dim=int(hf["qk_nope_head_dim"]),
                     qk_rope_head_dim=int(hf["qk_rope_head_dim"]),
                     v_head_dim=int(hf["v_head_dim"]),
                     q_lora_rank=None if q_rank is None else int(q_rank),
                     rope_interleave=bool(hf.get("rope_interleave", True)))


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
    """Builds a ModelConfig from a transformers `config.json` dict."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r} in config.json "
            f"(architectures={hf.get('architectures')}); supported: {SUPPORTED_MODEL_TYPES}")
    if hf.get("use_sliding_window"):
        raise ValueError("config.json sets use_sliding_window=true; sliding-window attention "
                         "is not supported")
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    head_dim = hf.get("head_dim") or hidden // heads
    mla = _mla_from_hf(hf)
    if mla is not None:
        # transformers' head_dim for deepseek_v3 is the RoPE part; ours is all of q/k.
        head_dim = mla.qk_head_dim
        if int(hf.get("num_key_value_heads") or heads) != heads:
            raise ValueError(f"deepseek_v3 config.json sets num_key_value_heads="
                             f"{hf['num_key_value_heads']} != num_attention_heads={heads}: "
                             "latent attention expands keys and values for every head")
        if hf.get("attention_bias"):
            raise ValueError("deepseek_v3 config.json sets attention_bias=true: not implemented")
    # transformers v5 nests rope settings under rope_parameters; v4 uses top-level keys.
    rope_params = hf.get("rope_parameters") or {}
    rope_theta = hf.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    rope_scaling = hf.get("rope_scaling")
    if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
        rope_scaling = rope_params
    attention_bias = bool(hf.get("attention_bias", False))
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = tuple(eos)
    kwargs = dict(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        rope_theta=float(rope_theta),
        rope_scaling=_rope_scaling_from_hf(rope_scaling),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        moe=_moe_from_hf(hf),
        mla=mla,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        initializer_range=float(hf.get("initializer_range", 0.02)),
        name=hf.get("_name_or_path", "") or "",
    )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; only silu (SwiGLU)")
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def to_hf_config(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """The transformers `config.json` dict that rebuilds this architecture."""
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
        "use_cache": True,
    }
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        scaling: dict[str, Any] = {"rope_type": rs.kind, "factor": rs.factor}
        if rs.kind == "llama3":
            scaling.update(low_freq_factor=rs.low_freq_factor, high_freq_factor=rs.high_freq_factor,
                           original_max_position_embeddings=rs.original_max_position_embeddings)
        if rs.kind == "yarn":
            scaling.update(original_max_position_embeddings=rs.original_max_position_embeddings,
                           beta_fast=rs.beta_fast, beta_slow=rs.beta_slow, truncate=rs.truncate)
            if rs.mscale:
                scaling["mscale"] = rs.mscale
            if rs.mscale_all_dim:
                scaling["mscale_all_dim"] = rs.mscale_all_dim
            if rs.attention_factor is not None:
                scaling["attention_factor"] = rs.attention_factor
        hf["rope_scaling"] = scaling
    if cfg.model_type == "qwen2":
        if not cfg.qkv_bias or cfg.o_bias:
            raise ValueError("qwen2 checkpoints always have q/k/v bias and no o_proj bias")
        hf["use_sliding_window"] = False
    else:
        if cfg.qkv_bias != cfg.o_bias:
            raise ValueError(f"{cfg.model_type} ties q/k/v and o_proj biases (attention_bias)")
        hf["attention_bias"] = cfg.qkv_bias
    if cfg.model_type == "llama":
        hf["mlp_bias"] = cfg.mlp_bias
    elif cfg.mlp_bias:
        raise ValueError(f"{cfg.model_type} has no MLP bias")
    if cfg.qk_norm != (cfg.model_type in ("qwen3", "qwen3_moe")):
        raise ValueError("q/k RMSNorm is exactly what distinguishes qwen3 and qwen3_moe")
    moe, mla = cfg.moe, cfg.mla
    if cfg.model_type == "qwen3_moe":
        hf.update(num_experts=moe.num_experts, num_experts_per_tok=moe.experts_per_token,
                  moe_intermediate_size=moe.expert_intermediate_size,
                  norm_topk_prob=moe.norm_topk_prob, router_aux_loss_coef=moe.aux_loss_coef,
                  decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False)
        if (moe.num_shared_experts or moe.scoring != "softmax" or moe.first_dense_layers
                or moe.routed_scaling_factor != 1.0):
            raise ValueError("qwen3_moe routes by softmax over every layer, with no shared "
                             "experts and no scaling factor")
    if cfg.model_type == "deepseek_v3":
        if moe.scoring != "sigmoid":
            raise ValueError("deepseek_v3 routes by sigmoid scores (noaux_tc)")
        hf.update(n_routed_experts=moe.num_experts, num_experts_per_tok=moe.experts_per_token,
                  moe_intermediate_size=moe.expert_intermediate_size,
                  n_shared_experts=moe.num_shared_experts, norm_topk_prob=moe.norm_topk_prob,
                  routed_scaling_factor=moe.routed_scaling_factor, n_group=moe.num_groups,
                  topk_group=moe.topk_groups, first_k_dense_replace=moe.first_dense_layers,
                  scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1,
                  aux_loss_alpha=moe.aux_loss_coef,
                  kv_lora_rank=mla.kv_lora_rank, q_lora_rank=mla.q_lora_rank,
                  qk_nope_head_dim=mla.qk_nope_head_dim, qk_rope_head_dim=mla.qk_rope_head_dim,
                  v_head_dim=mla.v_head_dim, rope_interleave=mla.rope_interleave,
                  head_dim=mla.qk_rope_head_dim, num_nextn_predict_layers=0)
    if cfg.bos_token_id is not None:
        hf["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        hf["eos_token_id"] = (list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
                              else cfg.eos_token_id)
    return hf
