"""One Flax linen decoder for Llama 2/3/3.1, Qwen2/2.5, Qwen3, Qwen3-MoE and
DeepSeek-V3/R1.

The family differs only in switches on `ModelConfig`: q/k/v (and o) biases,
q/k RMSNorm, RoPE scaling, tied embeddings; a layer's attention is grouped-query
(`Attention`, here) or latent (`mla.LatentAttention`, cfg.mla), its feed-forward
a SwiGLU (`layers.Mlp`) or a mixture of experts (`moe.MoeBlock`, cfg.moe). Layers
are stacked with `nn.scan` so compile time does not grow with depth, one stack per
kind of layer (`ModelConfig.layer_stacks`: DeepSeek's first dense layers are their
own stack); every parameter [L, ...] carries the logical axis "layers" first.
Parameters and key activations are annotated with logical axis names that
`distill_jax.sharding` maps onto the mesh.

Conventions:
- `segment_ids` [batch, length]: tokens attend only to earlier tokens of the
  same segment; id 0 marks padding (attends to and is attended by nothing).
- `positions` default to the index within each segment, so left padding and
  packed sequences get the positions each document would have alone.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from distill_jax.models import attention
from distill_jax.models.config import ModelConfig
from distill_jax.models.kv_cache import KVCache
from distill_jax.models.layers import (MODES, AttentionInputs, Mlp, RMSNorm, dtype as _dtype,
                                       logical as _logical, segment_positions)
from distill_jax.models.mla import LatentAttention
from distill_jax.models.moe import MoeBlock
from distill_jax.models.rope import apply_rope, rope_attention_factor, rope_inv_freq

Array = jax.Array
__all__ = ["Attention", "AttentionInputs", "DecoderLayer", "MODES", "Transformer",
           "segment_positions"]


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
        inv_freq, factor = rope_inv_freq(cfg), rope_attention_factor(cfg)
        q = apply_rope(q, inputs.positions, inv_freq, factor)
        k = apply_rope(k, inputs.positions, inv_freq, factor)
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


class DecoderLayer(nn.Module):
    """Pre-norm block. `moe`: this layer's feed-forward is the mixture of experts.
    One call of the layer scan: `layer` is its index in the whole model, with which
    it cuts its own slice out of the full cache (decode)."""

    cfg: ModelConfig
    moe: bool = False

    @nn.compact
    def __call__(self, x: Array, inputs: AttentionInputs, cache_kv, layer):
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        layer_cache = None
        if cache_kv is not None:
            layer_cache = tuple(jax.lax.dynamic_index_in_dim(c, layer, 0, keepdims=False)
                                for c in cache_kv)
        attend = LatentAttention if cfg.mla is not None else Attention
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_norm")(x)
        h, new_kv = attend(cfg, name="attn")(h, inputs, layer_cache)
        x = x + h
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attn_norm")(x)
        x = x + (MoeBlock(cfg, name="mlp") if self.moe else Mlp(cfg, name="mlp"))(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_kv  # (scan carry, per-layer output: this layer's new cache entries)

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
        # The full cache is broadcast into each scan and every layer slices its own by
        # index, so a model with two stacks never copies a stack's part of the cache.
        stacks = {name: nn.scan(layer, variable_axes={"params": 0, "intermediates": 0},
                                split_rngs={"params": True},
                                in_axes=(nn.broadcast, nn.broadcast, 0), length=count,
                                unroll=cfg.scan_unroll,
                                metadata_params={nn.PARTITION_NAME: "layers"})(cfg, moe)
                  for name, _, count, moe in cfg.layer_stacks}
        # setup names submodules by attribute: the param trees are "layers" (every
        # layer, or the MoE ones) and "dense_layers" (DeepSeek's first dense layers).
        self.dense_layers = stacks.get("dense_layers")
        self.layers = stacks.get("layers")
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
        """Embedding and the layer stacks: (hidden [B, T, D], per-layer cache entries
        (k, v) [layers, ...] or None in train mode)."""
        x = jnp.take(self.embedding, tokens, axis=0).astype(_dtype(self.cfg.dtype))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        outputs = []
        for name, first, count, _ in self.cfg.layer_stacks:
            x, new_kv = getattr(self, name)(x, inputs, cache_kv,
                                            jnp.arange(first, first + count, dtype=jnp.int32))
            outputs.append(new_kv)
        if inputs.mode == "train":
            return x, None
        return x, tuple(jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
                        for parts in zip(*outputs))

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


def count_active_params(cfg: ModelConfig) -> int:
    """Parameters one token passes through: all of them for a dense model; an MoE
    model's total less the routed experts a token does not use (E - k of E in each
    MoE layer). The embedding counts whole, as in the published "A3B"/"37B active"."""
    total = count_params(cfg)
    if cfg.moe is None:
        return total
    moe = cfg.moe
    per_expert = 3 * cfg.hidden_size * moe.expert_intermediate_size
    moe_layers = sum(count for _, _, count, is_moe in cfg.layer_stacks if is_moe)
    return total - moe_layers * (moe.num_experts - moe.experts_per_token) * per_expert


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
