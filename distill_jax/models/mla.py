"""DeepSeek-V2/V3 multi-head latent attention (MLA).

Per token, keys and values come from one shared latent c [kv_lora_rank]
(RMS-normed) and one shared RoPE key k_r [qk_rope_head_dim]; per head h,
  k_h = [c W_uk,h ; k_r]      (no-RoPE part qk_nope_head_dim, then the RoPE part)
  v_h = c W_uv,h              (v_head_dim)
  q_h = [q_nope,h ; q_rope,h] from x through a rank-q_lora_rank bottleneck.

Train and prefill expand k and v per head and call the attention dispatch like
any other attention (`attention.self_attention`, any kernel): v is zero-padded to
the q/k head dim so every kernel sees one head size, and the kernel is given
MLA's own softmax scale (1/sqrt(q/k head dim) times YaRN's mscale^2).

Decode uses the absorbed form, where the cache holds only [c ; k_r] per token
(kv_lora_rank + qk_rope_head_dim values per layer, e.g. 576 for DeepSeek-V3
against 2 x 128 heads x 192 = 49152 for a full K/V cache of the expanded heads):
  q_h . k_h = (q_nope,h W_uk,h^T) . c + q_rope,h . k_r
  out_h     = (sum_s p_s c_s) W_uv,h
so the step is multi-query attention of H query heads over one latent "head"
(keys [c ; k_r], values c), done by the same `attention.cached_attention` that
decodes every other model, and W_uv is applied once to the attended latent.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from distill_jax.models import attention
from distill_jax.models.config import ModelConfig
from distill_jax.models.layers import AttentionInputs, RMSNorm, dtype, logical, token_matmul
from distill_jax.models.rope import apply_rope, rope_attention_factor, rope_inv_freq

Array = jax.Array
LATENT_NORM_EPS = 1e-6   # q_a_layernorm / kv_a_layernorm: transformers' and DeepSeek's fixed eps


class LatentAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array, inputs: AttentionInputs, layer_cache=None):
        """-> (output [B, T, D], this call's cache entries outside train mode: the
        latent [B, T, 1, kv_lora_rank + rope] and an empty value [B, T, 1, 0]).
        `layer_cache` (decode): this layer's (latent cache [B, 1, slots, ...], empty)."""
        cfg, mla = self.cfg, self.cfg.mla
        cdtype, pdtype = dtype(cfg.dtype), dtype(cfg.param_dtype)
        init = nn.initializers.normal(cfg.initializer_range)
        heads, nope, rope, v_dim = cfg.num_heads, mla.qk_nope_head_dim, mla.qk_rope_head_dim, \
            mla.v_head_dim
        rank = mla.kv_lora_rank

        def kernel(name, shape, axes):
            return self.param(name, logical(init, axes), shape, pdtype).astype(cdtype)

        def norm(name, y, axis):   # DeepSeek's latent norms use eps 1e-6 whatever the model's
            return RMSNorm(LATENT_NORM_EPS, cdtype, pdtype, axis, name=name)(y)

        # Queries [B, T, H, nope + rope].
        if mla.q_lora_rank is None:
            q = jnp.einsum("bld,dhk->blhk", x,
                           kernel("q_kernel", (cfg.hidden_size, heads, nope + rope),
                                  ("embed", "heads", "head_dim")))
        else:
            cq = token_matmul(x, kernel("q_a_kernel", (cfg.hidden_size, mla.q_lora_rank),
                                        ("embed", None)))
            cq = norm("q_a_norm", cq, None)
            q = jnp.einsum("blr,rhk->blhk", cq,
                           kernel("q_b_kernel", (mla.q_lora_rank, heads, nope + rope),
                                  (None, "heads", "head_dim")))
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        q_nope, q_rope = q[..., :nope], q[..., nope:]
        # The shared latent and RoPE key [B, T, rank + rope].
        kv = token_matmul(x, kernel("kv_a_kernel", (cfg.hidden_size, rank + rope),
                                    ("embed", None)))
        c_kv = norm("kv_a_norm", kv[..., :rank], None)
        inv_freq, factor = rope_inv_freq(cfg), rope_attention_factor(cfg)
        q_rope = apply_rope(q_rope, inputs.positions, inv_freq, factor, mla.rope_interleave)
        k_rope = apply_rope(kv[..., None, rank:], inputs.positions, inv_freq, factor,
                            mla.rope_interleave)                          # [B, T, 1, rope]
        latent = jnp.concatenate([c_kv[:, :, None, :], k_rope], axis=-1)  # [B, T, 1, r + rope]
        latent = checkpoint_name(latent, "key_proj")
        kv_b = kernel("kv_b_kernel", (rank, heads, nope + v_dim), (None, "heads", "head_dim"))
        scale = cfg.attention_scale()
        if inputs.mode == "decode":
            # Absorbed: queries into the latent space, one latent head for all.
            q_latent = jnp.einsum("blhn,rhn->blhr", q_nope, kv_b[..., :nope])
            qa = jnp.concatenate([q_latent, q_rope], axis=-1)
            cache = layer_cache[0][:, :, :inputs.window]
            attended = attention.cached_attention(
                qa, latent, latent[..., :rank], cache, cache[..., :rank],
                inputs.cache_segment_ids, inputs.cache_positions, inputs.segment_ids,
                inputs.positions, scale)                                  # [B, T, H, rank]
            out = jnp.einsum("blhr,rhv->blhv", attended, kv_b[..., nope:])
        else:
            expanded = jnp.einsum("blr,rhk->blhk", c_kv, kv_b)           # [B, T, H, nope + v]
            k = jnp.concatenate(
                [expanded[..., :nope], jnp.broadcast_to(k_rope, (*k_rope.shape[:2], heads, rope))],
                axis=-1)
            width = max(nope + rope, v_dim)     # one head size for every kernel
            pad = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, width - a.shape[-1])])  # noqa: E731
            qf = pad(jnp.concatenate([q_nope, q_rope], axis=-1))
            out = attention.self_attention(qf, pad(k), pad(expanded[..., nope:]),
                                           inputs.segment_ids, cfg.attention_impl,
                                           inputs.positions, scale)[..., :v_dim]
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        o_kernel = kernel("o_kernel", (heads, v_dim, cfg.hidden_size),
                          ("heads", "head_dim", "embed"))
        y = jnp.einsum("blhv,hvd->bld", out, o_kernel)
        return y, (None if inputs.mode == "train" else (latent, latent[..., :0]))
