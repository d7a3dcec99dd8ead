"""Llama / Qwen decoder family: configs, the Flax module, HF checkpoint I/O."""
from distill_jax.models.config import (PRESETS, ModelConfig, RopeScaling, config_from_hf,
                                       get_config, to_hf_config)
from distill_jax.models.hf_io import config_from_section, load_hf_checkpoint, save_hf_checkpoint
from distill_jax.models.transformer import (Transformer, count_params, init_params,
                                            param_logical_axes, param_shapes)

__all__ = [
    "PRESETS", "ModelConfig", "RopeScaling", "Transformer", "config_from_hf",
    "config_from_section", "count_params",
    "get_config", "init_params", "load_hf_checkpoint", "param_logical_axes", "param_shapes",
    "save_hf_checkpoint", "to_hf_config",
]
