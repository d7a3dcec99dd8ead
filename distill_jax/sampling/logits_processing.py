"""Turning one step's logits into a token: temperature, top-k, top-p, min-p.

All settings are traced values (per-row arrays), so changing them never
recompiles. Filtering works on one descending sort of the scaled logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                  min_p: jax.Array) -> jax.Array:
    """Temperature-scaled logits with everything outside the support set to -inf.

    logits: [batch, vocab] float32; the settings: [batch] (or scalars).
    Temperature must be > 0 here; greedy rows are handled by `choose_tokens`.
    """
    vocab = logits.shape[-1]
    batch_shape = logits.shape[:-1]

    def per_row(x):
        return jnp.broadcast_to(jnp.asarray(x), batch_shape)[..., None]

    scaled = logits.astype(jnp.float32) / per_row(temperature)
    sorted_desc = -jnp.sort(-scaled, axis=-1)                        # [batch, vocab]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    rank = jnp.arange(vocab)
    k = per_row(top_k)
    keep = (k <= 0) | (rank < k)
    # Top-p on the distribution renormalized after top-k.
    kept_probs = jnp.where(keep, probs, 0.0)
    kept_probs = kept_probs / jnp.sum(kept_probs, axis=-1, keepdims=True)
    mass_before = jnp.cumsum(kept_probs, axis=-1) - kept_probs
    keep &= mass_before < per_row(top_p)
    keep &= probs >= per_row(min_p) * probs[..., :1]
    keep = keep.at[..., 0].set(True)                                  # never empty
    num_kept = jnp.sum(keep, axis=-1, keepdims=True)                  # a prefix of the sort
    threshold = jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)
    return jnp.where(scaled >= threshold, scaled, NEG_INF)


def choose_tokens(keys: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """One token per row: argmax where temperature == 0, else a filtered sample.

    keys: [batch] typed PRNG keys, one per row, so a row's draw never depends on
    the other rows.
    """
    temperature = jnp.asarray(temperature)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample():
        safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
        filtering = (jnp.any(jnp.asarray(top_k) > 0) | jnp.any(jnp.asarray(top_p) < 1)
                     | jnp.any(jnp.asarray(min_p) > 0))
        # Without top-k/top-p/min-p there is no support to cut: skip the sort.
        filtered = jax.lax.cond(
            filtering, lambda: filter_logits(logits, safe_temperature, top_k, top_p, min_p),
            lambda: logits.astype(jnp.float32) / jnp.broadcast_to(
                safe_temperature, logits.shape[:-1])[..., None])
        sampled = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
        return jnp.where(temperature > 0, sampled, greedy)

    # An all-greedy batch skips the vocabulary sort entirely.
    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)
