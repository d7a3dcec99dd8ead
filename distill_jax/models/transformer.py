"""One Flax linen decoder for Llama 2/3/3.1, Qwen2/2.5 and Qwen3.

The family differs only in switches on `ModelConfig`: q/k/v (and o) biases,
q/k RMSNorm, RoPE scaling, tied embeddings. Layers are stacked with `nn.scan`
so compile time does not grow with depth; every parameter [L, ...] carries the
logical axis "layers" first. Parameters and key activations are annotated with
logical axis names that `distill_jax.sharding` maps onto the mesh.

Conventions:
- `segment_ids` [batch, length]: tokens attend only to earlier tokens of the
  same segment; id 0 marks padding (attends to and is attended by nothing).
- `positions` default to the index within each segment, so left padding and
  packed sequences get the positions each document would have alone.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import flax
import numpy as np

from distill_jax.models import attention
from distill_jax.models.config import ModelConfig
from distill_jax.models.kv_cache import KVCache

Array = jax.Array


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _logical(init, names):
    return nn.with_logical_partitioning(init, names)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] in float32, with the config's scaling."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
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
    raise ValueError(f"unsupported rope scaling kind {scaling.kind!r}")


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotary embedding, rotate-half convention. x: [batch, length, heads, head_dim]."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, L, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]             # [B, L, 1, Dh]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


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
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _logical(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


MODES = ("train", "prefill", "decode")


@flax.struct.dataclass
class AttentionInputs:
    """Everything attention needs besides the hidden states, for one call's mode.

      train    attention of the tokens over themselves through the dispatch
               (`attention.self_attention`, kernel chosen by cfg.attention_impl);
               no keys/values leave the layer
      prefill  the same, and each layer's keys/values are returned for the cache
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


class Attention(nn.Module):
    cfg: ModelConfig

    def _proj(self, name, x, heads, with_bias):
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        head_axis = "heads" if heads == cfg.num_heads else "kv_heads"
        kernel = self.param(f"{name}_kernel",
                            _logical(nn.initializers.normal(cfg.initializer_range),
                                     ("embed", head_axis, "head_dim")),
                            (cfg.hidden_size, heads, cfg.head_dim), pdtype)
        y = jnp.einsum("bld,dhk->blhk", x, kernel.astype(dtype))
        if with_bias:
            bias = self.param(f"{name}_bias", _logical(nn.initializers.zeros, (head_axis, "head_dim")),
                              (heads, cfg.head_dim), pdtype)
            y = y + bias.astype(dtype)
        return nn.with_logical_constraint(y, ("batch", "length", head_axis, "head_dim"))

    @nn.compact
    def __call__(self, x: Array, inputs: AttentionInputs, layer_cache=None):
        """-> (output [B, T, D], this call's (k, v) [B, T, KVH, Dh] outside train
        mode). `layer_cache` (decode): this layer's (k, v) [B, KVH, slots, Dh]."""
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        q = self._proj("q", x, cfg.num_heads, cfg.qkv_bias)
        k = self._proj("k", x, cfg.num_kv_heads, cfg.qkv_bias)
        v = self._proj("v", x, cfg.num_kv_heads, cfg.qkv_bias)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, inputs.positions, inv_freq)
        k = apply_rope(k, inputs.positions, inv_freq)
        q = checkpoint_name(q, "query_proj")
        k = checkpoint_name(k, "key_proj")
        v = checkpoint_name(v, "value_proj")
        if inputs.mode not in MODES:
            raise ValueError(f"attention mode {inputs.mode!r}; expected one of {MODES}")
        if inputs.mode == "decode":
            # The full cache enters the layer scan; each layer cuts its window from its
            # own slice, so XLA copies per layer only the window, not every layer's.
            k_cache, v_cache = (c[:, :, :inputs.window] for c in layer_cache)
            out = attention.cached_attention(q, k, v, k_cache, v_cache, inputs.cache_segment_ids,
                                             inputs.cache_positions, inputs.segment_ids,
                                             inputs.positions)
        else:
            out = attention.self_attention(q, k, v, inputs.segment_ids, cfg.attention_impl,
                                           inputs.positions)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        o_kernel = self.param("o_kernel",
                              _logical(nn.initializers.normal(cfg.initializer_range),
                                       ("heads", "head_dim", "embed")),
                              (cfg.num_heads, cfg.head_dim, cfg.hidden_size), pdtype)
        y = jnp.einsum("blhk,hkd->bld", out, o_kernel.astype(dtype))
        if cfg.o_bias:
            o_bias = self.param("o_bias", _logical(nn.initializers.zeros, ("embed",)),
                                (cfg.hidden_size,), pdtype)
            y = y + o_bias.astype(dtype)
        return y, (None if inputs.mode == "train" else (k, v))


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)

        def dense(name, y, shape, axes):
            kernel = self.param(f"{name}_kernel", _logical(init, axes), shape, pdtype)
            out = token_matmul(y, kernel.astype(dtype))
            if cfg.mlp_bias:
                bias = self.param(f"{name}_bias", _logical(nn.initializers.zeros, (axes[1],)),
                                  (shape[1],), pdtype)
                out = out + bias.astype(dtype)
            return out

        d, f = cfg.hidden_size, cfg.intermediate_size
        gate = dense("gate", x, (d, f), ("embed", "mlp"))
        up = dense("up", x, (d, f), ("embed", "mlp"))
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return dense("down", hidden, (f, d), ("mlp", "embed"))


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array, inputs: AttentionInputs, layer_cache=None):
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_norm")(x)
        h, new_kv = Attention(cfg, name="attn")(h, inputs, layer_cache)
        x = x + h
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attn_norm")(x)
        x = x + Mlp(cfg, name="mlp")(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_kv  # (scan carry, per-layer output: this layer's new keys/values)

def remat_policy(name: str):
    """Named rematerialization policies (what the backward pass may keep)."""
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
            "query_proj", "key_proj", "value_proj"),
    }
    if name not in policies:
        raise ValueError(f"unknown remat policy {name!r}; choose from none, {sorted(policies)}")
    return policies[name]


def lm_head(params, cfg: ModelConfig) -> tuple[Array, str]:
    """(kernel, layout) of the LM head, for losses that compute logits from
    `Transformer.hidden_states` themselves: ("dv", lm_head [D, V]) or, with tied
    embeddings, ("vd", the embedding table [V, D] as stored, never transposed)."""
    if cfg.tie_word_embeddings:
        return params["embedding"], "vd"
    return params["lm_head"], "dv"


def head_logits(hidden: Array, kernel: Array, dtype: Any, layout: str = "dv") -> Array:
    """float32 logits [..., V] of hidden states [..., D]: one [tokens, D] product (see
    `token_matmul`) in `dtype` with float32 accumulation. layout "dv": kernel [D, V];
    "vd": kernel [V, D] (a tied embedding table)."""
    lead, dim = hidden.shape[:-1], hidden.shape[-1]
    contract = 0 if layout == "dv" else 1
    logits = jax.lax.dot_general(hidden.reshape(-1, dim).astype(dtype), kernel.astype(dtype),
                                 (((1,), (contract,)), ((), ())),
                                 preferred_element_type=jnp.float32)
    return logits.reshape(*lead, -1)


class Transformer(nn.Module):
    """Decoder-only LM with one entry point per mode (apply with `method=`):

      __call__(tokens, positions=None, segment_ids=None)
          training and scoring: float32 logits [B, L, V] of every position
      hidden_states(tokens, positions=None, segment_ids=None)
          training with a chunked loss: the final-normed hidden states [B, L, D],
          whose logits are `head_logits(h, *lm_head(params, cfg))` in cfg.dtype
      prefill(tokens, positions, segment_ids, cache)
          the (left-padded) prompts into an empty `KVCache` from slot 0: returns
          the last position's logits [B, V] (the only ones a sampler needs; the
          full [B, prompt_len, V] float32 tensor would be the largest in the
          program) and the filled cache
      decode(tokens, positions, segment_ids, cache, index, window=None)
          T new tokens per row, written at slot `index` (one for all rows, or one
          per row [B]: rows of a continuous-batching engine sit at different
          fill levels), attending to the cache's first `window` slots (static,
          whole decode blocks; default all) and to each other: logits [B, T, V]
          and the updated cache. A row's numbers do not depend on the window past
          its filled slots, nor on the other rows (`attention.cached_attention`).

    Attention kernels are chosen in `attention.self_attention` from
    cfg.attention_impl; the model never builds a [B, L, L] mask itself.
    """

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        pdtype = _dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        self.embedding = self.param("embedding", _logical(init, ("vocab", "embed")),
                                    (cfg.vocab_size, cfg.hidden_size), pdtype)
        layer = DecoderLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        self.layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=(nn.broadcast, 0), length=cfg.num_layers,
                              unroll=cfg.scan_unroll,
                              metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
        self.final_norm = RMSNorm(cfg.rms_norm_eps, _dtype(cfg.dtype), pdtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _logical(init, ("embed", "vocab")),
                                      (cfg.hidden_size, cfg.vocab_size), pdtype)

    # ------------------------------------------------------------ entry points

    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None) -> Array:
        return self.logits(self.hidden_states(tokens, positions, segment_ids))

    def hidden_states(self, tokens: Array, positions: Array | None = None,
                      segment_ids: Array | None = None) -> Array:
        segment_ids, positions = _segments_and_positions(tokens, segment_ids, positions)
        x, _ = self._decoder(tokens, AttentionInputs(segment_ids, positions, mode="train"))
        return self.final_norm(x)

    def prefill(self, tokens: Array, positions: Array, segment_ids: Array,
                cache: KVCache) -> tuple[Array, KVCache]:
        segment_ids, positions = _segments_and_positions(tokens, segment_ids, positions)
        x, (k, v) = self._decoder(tokens,
                                  AttentionInputs(segment_ids, positions, mode="prefill"))
        last = self.logits(self.final_norm(x[:, -1:, :]))[:, 0]
        return last, cache.write(k, v, segment_ids, positions, 0)

    def decode(self, tokens: Array, positions: Array, segment_ids: Array, cache: KVCache,
               index, window: int | None = None) -> tuple[Array, KVCache]:
        segment_ids, positions = _segments_and_positions(tokens, segment_ids, positions)
        window = cache.slots if window is None else int(window)
        # Slots not yet written have segment 0, so the cache mask hides them.
        inputs = AttentionInputs(segment_ids, positions, cache.segment_ids[:, :window],
                                 cache.positions[:, :window], mode="decode", window=window)
        x, (k, v) = self._decoder(tokens, inputs, (cache.k, cache.v))
        return self.logits(self.final_norm(x)), cache.write(k, v, segment_ids, positions, index)

    # ------------------------------------------------------------ shared parts

    def _decoder(self, tokens: Array, inputs: AttentionInputs, cache_kv=None):
        """Embedding and the layer stack: (hidden [B, T, D], per-layer (k, v) or None)."""
        x = jnp.take(self.embedding, tokens, axis=0).astype(_dtype(self.cfg.dtype))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return self.layers(x, inputs, cache_kv)

    def logits(self, hidden: Array) -> Array:
        if self.cfg.tie_word_embeddings:
            kernel, layout = self.embedding, "vd"
        else:
            kernel, layout = self.lm_head, "dv"
        logits = head_logits(hidden, kernel, _dtype(self.cfg.dtype), layout)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def _segments_and_positions(tokens, segment_ids, positions):
    """Defaults: one segment per row; positions restart at 0 in each segment."""
    if segment_ids is None:
        segment_ids = jnp.ones(jnp.shape(tokens), jnp.int32)
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if positions is None:
        positions = segment_positions(segment_ids)
    return segment_ids, jnp.asarray(positions, jnp.int32)

def _boxed_init(cfg: ModelConfig, key: Array):
    return Transformer(cfg).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def param_shapes(cfg: ModelConfig):
    """Pytree of jax.ShapeDtypeStruct for the params, without allocating anything."""
    return nn.meta.unbox(jax.eval_shape(lambda k: _boxed_init(cfg, k), jax.random.key(0)))


def param_logical_axes(cfg: ModelConfig):
    """Pytree (same structure as params) of PartitionSpecs of logical axis names."""
    boxed = jax.eval_shape(lambda k: _boxed_init(cfg, k), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def count_params(cfg: ModelConfig) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(param_shapes(cfg))))


def init_params(cfg: ModelConfig, key: Array, mesh: jax.sharding.Mesh | None = None,
                rules=None):
    """Random params as a plain pytree. With a mesh, they are created already sharded."""
    def init(k):
        return nn.meta.unbox(_boxed_init(cfg, k))
    if mesh is None:
        return jax.jit(init)(key)
    from distill_jax import sharding
    shardings = sharding.logical_to_shardings(param_logical_axes(cfg), mesh, rules,
                                              shapes=param_shapes(cfg))
    return jax.jit(init, out_shardings=shardings)(key)
