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
import numpy as np

from distill_jax.models.config import ModelConfig

Array = jax.Array
# Finite, so a fully masked row (padding) gives a uniform softmax instead of NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


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


def attention_mask(q_segment_ids: Array, kv_segment_ids: Array, q_positions: Array,
                   kv_positions: Array) -> Array:
    """Causal, same-segment, non-padding mask. -> [batch, q_length, kv_length] bool."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return same_segment & causal & (kv_segment_ids[:, None, :] != 0)


def xla_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Grouped-query attention with softmax in float32.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    mask: [batch, q_len, kv_len]. Returns [batch, q_len, heads, head_dim].
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(head_dim))
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


def cached_xla_attention(q: Array, k_new: Array, v_new: Array, k_cache: Array, v_cache: Array,
                         mask_cache: Array, mask_new: Array) -> Array:
    """Attention over [cache slots ; new tokens] without concatenating them.

    The cache is only read here: softmax runs jointly over both score blocks,
    so the result equals attention over the concatenation, while the caller
    writes the new keys/values into the cache once, outside the layer scan
    (in place inside the decode loop) instead of copying the cache per layer.
    q: [B, T, H, Dh]; k_new, v_new: [B, T, KVH, Dh]; k_cache, v_cache:
    [B, KVH, S, Dh] (kv-head-major, so each head's slots are contiguous and
    both products below are plain batched matrix products over (B, KVH));
    mask_cache [B, T, S]; mask_new [B, T, T].
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k_new.shape[2]
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scale = 1.0 / math.sqrt(head_dim)

    def masked(s, mask):
        return jnp.where(mask[:, None, None, :, :], s * scale, _MASK_VALUE)

    if q_len == 1:
        # Decoding: no query-length axis, so both products are [G, Dh] x [Dh, S]
        # and [G, S] x [S, Dh] per (row, kv head), with no transposes around them.
        q1 = q[:, 0]                                                       # [B, KVH, G, Dh]
        s_cache = jnp.einsum("bkgd,bksd->bkgs", q1, k_cache,
                             preferred_element_type=jnp.float32) * scale
        s_cache = jnp.where(mask_cache[:, :, None, :], s_cache, _MASK_VALUE)
        s_new = jnp.einsum("bkgd,bkd->bkg", q1, k_new[:, 0],
                           preferred_element_type=jnp.float32)[..., None] * scale
        s_new = jnp.where(mask_new[:, :, :, None], s_new, _MASK_VALUE)     # [B, 1, 1, 1]
        top = jnp.maximum(s_cache.max(-1, keepdims=True), s_new)
        p_cache, p_new = jnp.exp(s_cache - top), jnp.exp(s_new - top)
        denom = p_cache.sum(-1, keepdims=True) + p_new
        out = (jnp.einsum("bkgs,bksd->bkgd", (p_cache / denom).astype(v_cache.dtype), v_cache)
               + (p_new / denom).astype(v_new.dtype) * v_new[:, 0, :, None, :])
        return out.reshape(batch, 1, heads, head_dim)
    s_cache = masked(jnp.einsum("blkgd,bksd->bkgls", q, k_cache,
                                preferred_element_type=jnp.float32), mask_cache)
    s_new = masked(jnp.einsum("blkgd,bskd->bkgls", q, k_new,
                              preferred_element_type=jnp.float32), mask_new)
    top = jnp.maximum(s_cache.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
    p_cache, p_new = jnp.exp(s_cache - top), jnp.exp(s_new - top)
    denom = p_cache.sum(-1, keepdims=True) + p_new.sum(-1, keepdims=True)
    p_cache, p_new = p_cache / denom, p_new / denom
    out = (jnp.einsum("bkgls,bksd->blkgd", p_cache.astype(v_cache.dtype), v_cache)
           + jnp.einsum("bkgls,bskd->blkgd", p_new.astype(v_new.dtype), v_new))
    return out.reshape(batch, q_len, heads, head_dim)


def jax_attention(q: Array, k: Array, v: Array, mask: Array, implementation: str | None) -> Array:
    """`jax.nn.dot_product_attention`; implementation "cudnn" is flash attention on GPU."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :],
                                        implementation=implementation)


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
    def __call__(self, x: Array, positions: Array, mask, layer_cache=None):
        """Without a cache, attends within x (mask [B, T, T]). In cache mode, mask is
        (mask over cache slots, mask among new tokens) and the new keys/values are
        returned for the caller to write into the cache; with `layer_cache` {k, v}
        [batch, kv_heads, slots, head_dim] attention covers the cache too, without
        it (prefill into an empty cache) only the new tokens."""
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        q = self._proj("q", x, cfg.num_heads, cfg.qkv_bias)
        k = self._proj("k", x, cfg.num_kv_heads, cfg.qkv_bias)
        v = self._proj("v", x, cfg.num_kv_heads, cfg.qkv_bias)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, "head_dim", name="k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = checkpoint_name(q, "query_proj")
        k = checkpoint_name(k, "key_proj")
        v = checkpoint_name(v, "value_proj")
        new_kv = None
        if isinstance(mask, tuple):  # cache mode: hand back this call's keys/values
            mask_cache, mask = mask
            new_kv = {"k": k, "v": v}
        if layer_cache is not None:
            window = mask_cache.shape[-1]   # the slots this call may read (cache_window)
            k_cache = nn.with_logical_constraint(layer_cache["k"][:, :, :window].astype(dtype),
                                                 ("batch", "kv_heads", "length", "head_dim"))
            v_cache = nn.with_logical_constraint(layer_cache["v"][:, :, :window].astype(dtype),
                                                 ("batch", "kv_heads", "length", "head_dim"))
            out = cached_xla_attention(q, k, v, k_cache, v_cache, mask_cache, mask)
        elif cfg.attention_impl == "xla":
            out = xla_attention(q, k, v, mask)
        else:
            impl = "cudnn" if cfg.attention_impl == "cudnn" else None
            out = jax_attention(q, k, v, mask, impl)
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
        return y, new_kv


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)

        def dense(name, y, shape, axes, out_axis_size):
            kernel = self.param(f"{name}_kernel", _logical(init, axes), shape, pdtype)
            out = jnp.dot(y, kernel.astype(dtype))
            if cfg.mlp_bias:
                bias = self.param(f"{name}_bias", _logical(nn.initializers.zeros, (axes[1],)),
                                  (out_axis_size,), pdtype)
                out = out + bias.astype(dtype)
            return out

        d, f = cfg.hidden_size, cfg.intermediate_size
        batch, length = x.shape[:2]
        # The matmuls run on [tokens, features]: XLA:CPU fuses the SwiGLU's backward
        # far better on 2-D arrays (the 3-D form cost ~1.4x the time per layer).
        # batch is the major axis, so the flattened rows keep the batch sharding.
        x2 = x.reshape(batch * length, d)
        gate = dense("gate", x2, (d, f), ("embed", "mlp"), f)
        up = dense("up", x2, (d, f), ("embed", "mlp"), f)
        hidden = nn.with_logical_constraint(
            (jax.nn.silu(gate) * up).reshape(batch, length, f), ("batch", "length", "mlp"))
        out = dense("down", hidden.reshape(batch * length, f), (f, d), ("mlp", "embed"), d)
        return out.reshape(batch, length, d)


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, mask, layer_cache=None):
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_norm")(x)
        h, new_kv = Attention(cfg, name="attn")(h, positions, mask, layer_cache)
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


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> dict[str, Array]:
    """An empty KV cache for `length` slots.

    k, v: [layers, batch, kv_heads, length, head_dim] (kv-head-major: a decode
    step reads each head's slots as one contiguous block); segment_ids,
    positions: [batch, length] describe what each slot holds (segment 0 = empty
    or padding).
    """
    dtype = _dtype(dtype or cfg.dtype)
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, length), jnp.int32),
            "positions": jnp.zeros((batch, length), jnp.int32)}


CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", "kv_heads", "length", "head_dim"),
    "v": ("layers", "batch", "kv_heads", "length", "head_dim"),
    "segment_ids": ("batch", "length"),
    "positions": ("batch", "length"),
}


class Transformer(nn.Module):
    """Decoder-only LM.

    `__call__(tokens, positions=None, segment_ids=None)` -> f32 logits [B, L, V].
    With `cache` (see `init_cache`) and `cache_index` (scalar slot where these
    tokens go, the same for every row): -> (logits, updated cache). Prefill is
    a call at cache_index=0 with the (left-padded) prompts; each decode step is
    a call with one token per row. `prefill=True` promises the cache is empty, so
    attention runs over the new tokens only (no work, or constant folding, on the
    empty slots). `last_logits_only=True` returns logits [B, 1, V] for the last
    position only: a sampler's prefill needs nothing else, and the full
    [B, prompt_len, vocab] float32 tensor is the largest one in the program.
    `cache_window=W` (static) promises that slots >= W are empty: attention
    then reads only the first W slots, so a decode loop split into segments of
    growing W reads the filled part of the cache, not all of it, at every step.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None, cache: dict[str, Array] | None = None,
                 cache_index: Array | int | None = None, prefill: bool = False,
                 last_logits_only: bool = False, cache_window: int | None = None):
        cfg = self.cfg
        dtype, pdtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        tokens = jnp.asarray(tokens, jnp.int32)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        if positions is None:
            positions = segment_positions(segment_ids)
        positions = jnp.asarray(positions, jnp.int32)
        layer_cache = None
        if cache is None:
            mask = attention_mask(segment_ids, segment_ids, positions, positions)
        else:
            if cache_index is None:
                raise ValueError("a KV cache needs cache_index (the slot of the first new token)")
            cache_index = jnp.asarray(cache_index, jnp.int32)
            # Slots not yet written have segment 0, so the cache mask hides them.
            new_mask = attention_mask(segment_ids, segment_ids, positions, positions)
            if prefill:
                mask, layer_cache = (None, new_mask), None
            else:
                window = cache["segment_ids"].shape[1] if cache_window is None else cache_window
                mask = (attention_mask(segment_ids, cache["segment_ids"][:, :window], positions,
                                       cache["positions"][:, :window]), new_mask)
                # The full cache goes into the layer scan; each layer cuts its window
                # (the mask's width) from its own slice, so XLA copies per layer only
                # the window, instead of first copying the window of every layer.
                layer_cache = {"k": cache["k"], "v": cache["v"]}

        embedding = self.param("embedding",
                               _logical(nn.initializers.normal(cfg.initializer_range),
                                        ("vocab", "embed")),
                               (cfg.vocab_size, cfg.hidden_size), pdtype)
        x = jnp.take(embedding, tokens, axis=0).astype(dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        layer = DecoderLayer
        if cfg.remat_policy != "none":
            layer = nn.remat(layer, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, 0),
                        length=cfg.num_layers, unroll=cfg.scan_unroll,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, new_kv = stack(cfg, name="layers")(x, positions, mask, layer_cache)
        if last_logits_only:
            x = x[:, -1:, :]
        x = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="final_norm")(x)

        # The head runs on [tokens, hidden] rows: with a 3-D einsum, XLA:CPU's backward
        # of this (the largest) matmul was ~1.6x slower.
        batch, length = x.shape[:2]
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("nd,vd->nv", x.reshape(batch * length, -1),
                                embedding.astype(dtype), preferred_element_type=jnp.float32
                                ).reshape(batch, length, -1)
        else:
            lm_head = self.param("lm_head",
                                 _logical(nn.initializers.normal(cfg.initializer_range),
                                          ("embed", "vocab")),
                                 (cfg.hidden_size, cfg.vocab_size), pdtype)
            logits = jnp.dot(x.reshape(batch * length, -1), lm_head.astype(dtype),
                             preferred_element_type=jnp.float32).reshape(batch, length, -1)
        logits = nn.with_logical_constraint(logits.astype(jnp.float32),
                                            ("batch", "length", "vocab"))
        if cache is None:
            return logits
        # One write of every layer's new keys/values: in place inside a decode loop.
        start = (0, 0, 0, cache_index, 0)

        def write(buffer, new):  # new: [layers, B, T, KVH, Dh] -> [layers, B, KVH, T, Dh]
            new = jnp.swapaxes(new, 2, 3).astype(buffer.dtype)
            return jax.lax.dynamic_update_slice(buffer, new, start)

        return logits, {
            "k": write(cache["k"], new_kv["k"]),
            "v": write(cache["v"], new_kv["v"]),
            "segment_ids": jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids,
                                                        (0, cache_index)),
            "positions": jax.lax.dynamic_update_slice(cache["positions"], positions,
                                                      (0, cache_index))}


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
