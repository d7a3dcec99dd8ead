"""Model configuration: one frozen dataclass for the whole Llama/Qwen family.

`ModelConfig` is hashable so it can be a static argument of `jax.jit`. The
presets carry the exact values of the published `config.json` files, so a
checkpoint downloaded from the hub loads into `get_config(name)` unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from distill_jax.models import attention

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_qkv_proj")
ATTENTION_IMPLS = attention.IMPLS    # see models/attention.py


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `kind` is "linear" or "llama3" (Llama 3.1+)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


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
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

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
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")


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
        qk_norm=model_type == "qwen3",
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
    if cfg.qk_norm != (cfg.model_type == "qwen3"):
        raise ValueError("q/k RMSNorm is exactly what distinguishes qwen3")
    if cfg.bos_token_id is not None:
        hf["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_id is not None:
        hf["eos_token_id"] = (list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
                              else cfg.eos_token_id)
    return hf
