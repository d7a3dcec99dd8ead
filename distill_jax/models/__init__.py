"""Llama / Qwen / Qwen3-MoE / DeepSeek-V3 decoder family: configs, the Flax module,
HF checkpoint I/O."""
from distill_jax.models.config import (PRESETS, MlaConfig, ModelConfig, MoeConfig, RopeScaling,
                                       config_from_hf, get_config, to_hf_config)
from distill_jax.models.from_config import (RUNTIME_FIELDS, config_from_section,
                                            model_from_section, model_section)
from distill_jax.models.hf_io import load_hf_checkpoint, save_generation_config, save_hf_checkpoint
from distill_jax.models.kv_cache import KVCache
from distill_jax.models.transformer import (Transformer, count_active_params, count_params,
                                            head_logits, init_params,
                                            lm_head, param_logical_axes, param_shapes)
from distill_jax.models.vocab import add_token_rows, resize_vocabulary

__all__ = [
    "KVCache", "PRESETS", "MlaConfig", "ModelConfig", "MoeConfig", "RopeScaling", "Transformer",
    "count_active_params", "head_logits",
    "lm_head", "add_token_rows", "config_from_hf",
    "RUNTIME_FIELDS", "config_from_section", "count_params", "model_from_section", "model_section",
    "get_config", "init_params", "load_hf_checkpoint", "param_logical_axes", "param_shapes",
    "resize_vocabulary", "save_generation_config", "save_hf_checkpoint", "to_hf_config",
]
