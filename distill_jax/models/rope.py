"""Rotary position embeddings: the frequencies of each scaling a config can name
(linear, Llama 3.1, YaRN) and their application to q/k heads.

All tables are computed in float32 numpy exactly as transformers computes them,
so logits match its models to float32 rounding.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.models.config import ModelConfig, yarn_mscale

Array = jax.Array


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [rope_dim // 2] in float32, with the config's scaling."""
    dim = cfg.rope_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    pos_freqs = (np.float32(cfg.rope_theta) ** exponents).astype(np.float32)
    inv_freq = (1.0 / pos_freqs).astype(np.float32)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    if scaling.kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, and
        # interpolate smoothly in between (by wavelength against the original context).
        old_context = scaling.original_max_position_embeddings
        low_freq_wavelen = old_context / scaling.low_freq_factor
        high_freq_wavelen = old_context / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_context / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    if scaling.kind == "yarn":
        # YaRN: dimensions that turn fewer than beta_slow times over the original
        # context are interpolated (divided by factor), those that turn more than
        # beta_fast times are kept, with a linear ramp in between.
        def correction_dim(rotations):
            return (dim * math.log(scaling.original_max_position_embeddings
                                   / (rotations * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))
        low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
        if scaling.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low))
                       / np.float32(high - low), 0, 1).astype(np.float32)
        keep = (1 - ramp).astype(np.float32)
        interpolated = (1.0 / (np.float32(scaling.factor) * pos_freqs)).astype(np.float32)
        return (interpolated * (1 - keep) + inv_freq * keep).astype(np.float32)
    raise ValueError(f"unsupported rope scaling kind {scaling.kind!r}")


def rope_attention_factor(cfg: ModelConfig) -> float:
    """YaRN's factor on cos and sin (1 for every other scaling): mscale(factor,
    mscale) / mscale(factor, mscale_all_dim) when both are set, else mscale(factor)."""
    rs = cfg.rope_scaling
    if rs is None or rs.kind != "yarn":
        return 1.0
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    if rs.mscale and rs.mscale_all_dim:
        return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
    return yarn_mscale(rs.factor)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray, scale: float = 1.0,
               interleaved: bool = False) -> Array:
    """Rotary embedding, rotate-half convention. x: [batch, length, heads, rope_dim].

    `interleaved` (DeepSeek's weights): dimensions pair as (x0, x1), (x2, x3), ...;
    they are first gathered into halves (evens, odds), so the result is the
    rotate-half layout of the de-interleaved vector. Queries and keys go through
    the same permutation, so their dot products are those of the interleaved form.
    `scale` multiplies cos and sin (YaRN's attention factor)."""
    if interleaved:
        x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, L, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]             # [B, L, 1, D]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)
