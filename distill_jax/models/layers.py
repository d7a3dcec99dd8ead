"""Building blocks every decoder layer shares: RMSNorm, the SwiGLU MLP, the 2-D
token matmul, the per-call attention inputs, and the two helpers that name a
parameter's dtype and logical axes. The attention variants (`transformer.Attention`,
`mla.LatentAttention`) and feed-forwards (`Mlp`, `moe.MoeBlock`) are built from them.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.config import ModelConfig

Array = jax.Array
MODES = ("train", "prefill", "decode")


def dtype(name: str) -> Any:
    return jnp.dtype(name)


def logical(init, names):
    """An initializer whose params carry logical axis names (see sharding.py)."""
    return nn.with_logical_partitioning(init, names)


def segment_positions(segment_ids: Array) -> Array:
    """Index of each token within its segment. [batch, length] -> [batch, length]."""
    length = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1)
    segment_start = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - segment_start


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any
    axis_name: str | None = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", logical(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


@flax.struct.dataclass
class AttentionInputs:
    """Everything attention needs besides the hidden states, for one call's mode.

      train    attention of the tokens over themselves through the dispatch
               (`attention.self_attention`, kernel chosen by cfg.attention_impl);
               no keys/values leave the layer
      prefill  the same, and each layer's cache entries are returned
      decode   the new tokens attend to the cache's first `window` slots and to
               each other (`attention.cached_attention`, which builds each block's
               mask from the cache's segment ids and positions)
    """
    segment_ids: Any                 # [B, T] of this call's tokens (0 = padding)
    positions: Any                   # [B, T]
    cache_segment_ids: Any = None    # decode: [B, window] of the cache
    cache_positions: Any = None      # decode: [B, window]
    mode: str = flax.struct.field(pytree_node=False, default="train")
    window: int = flax.struct.field(pytree_node=False, default=0)


def token_matmul(x: Array, kernel: Array, **kwargs) -> Array:
    """x [..., d] @ kernel [d, ...], computed as one [tokens, d] x [d, f] product.

    XLA:CPU fuses the backward of 2-D products far better (the 3-D form cost
    ~1.4x per SwiGLU and ~1.6x on the LM head); on TPU and GPU the reshape is
    free. Batch is the major axis, so the flattened rows keep its sharding.
    """
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, **kwargs)
    return y.reshape(*lead, *kernel.shape[1:])


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), `width` wide (default the config's
    intermediate_size; an MoE's shared experts are one such MLP)."""

    cfg: ModelConfig
    width: int | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        cdtype, pdtype = dtype(cfg.dtype), dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)

        def dense(name, y, shape, axes):
            kernel = self.param(f"{name}_kernel", logical(init, axes), shape, pdtype)
            out = token_matmul(y, kernel.astype(cdtype))
            if cfg.mlp_bias:
                bias = self.param(f"{name}_bias", logical(nn.initializers.zeros, (axes[1],)),
                                  (shape[1],), pdtype)
                out = out + bias.astype(cdtype)
            return out

        d, f = cfg.hidden_size, self.width or cfg.intermediate_size
        gate = dense("gate", x, (d, f), ("embed", "mlp"))
        up = dense("up", x, (d, f), ("embed", "mlp"))
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return dense("down", hidden, (f, d), ("mlp", "embed"))
