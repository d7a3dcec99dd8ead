"""The decoder's KV cache: one small struct that owns its layout and its updates.

  k, v         [layers, batch, kv_heads, slots, head_dim] — kv-head-major, so a
               decode step reads each head's slots as one contiguous block. A
               latent-attention model (cfg.mla) caches one latent "head" instead:
               k [layers, batch, 1, slots, kv_lora_rank + rope], v empty (its
               values are the first kv_lora_rank of k; see models/mla.py)
  segment_ids  [batch, slots]: what each slot holds (0 = empty or padding, which
               every attention mask hides)
  positions    [batch, slots]: the RoPE position of the token in each slot

The model reads it (block by block, through a static window of its first
slots) and hands back the new keys/values of a call; `write` stores them at one slot index for every row
or at each row's own index, in place inside a decode loop. The sampling engine
copies prefilled prompts into free rows (`insert`, n rows per prompt) and
places the cache on a mesh by `logical_axes(cfg)`.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    k: Any
    v: Any
    segment_ids: Any
    positions: Any

    @classmethod
    def init(cls, cfg, batch: int, slots: int, dtype: Any = None) -> "KVCache":
        """An empty cache of `slots` slots per row, in `dtype` (default the compute dtype)."""
        dtype = jnp.dtype(dtype or cfg.dtype)
        heads, k_dim, v_dim = cache_head_shape(cfg)
        return cls(k=jnp.zeros((cfg.num_layers, batch, heads, slots, k_dim), dtype),
                   v=jnp.zeros((cfg.num_layers, batch, heads, slots, v_dim), dtype),
                   segment_ids=jnp.zeros((batch, slots), jnp.int32),
                   positions=jnp.zeros((batch, slots), jnp.int32))

    @property
    def slots(self) -> int:
        return self.segment_ids.shape[1]

    def write(self, new_k: Array, new_v: Array, segment_ids: Array, positions: Array,
              index) -> "KVCache":
        """Stores a call's keys/values at slots index .. index + T - 1.
        new_k, new_v: [layers, batch, T, kv_heads, head_dim] (the layer scan's output).
        `index`: one slot for every row (a static batch), or one per row [batch]
        (an engine whose rows sit at different fill levels); a row whose index is
        past the cache (an idle slot) writes nothing."""
        index = jnp.asarray(index, jnp.int32)
        if index.ndim == 1:
            return self._write_rows(new_k, new_v, segment_ids, positions, index)
        start = (0, 0, 0, index, 0)

        def put(buffer, new):   # -> [layers, batch, kv_heads, T, head_dim]
            return jax.lax.dynamic_update_slice(
                buffer, jnp.swapaxes(new, 2, 3).astype(buffer.dtype), start)

        return KVCache(k=put(self.k, new_k), v=put(self.v, new_v),
                       segment_ids=jax.lax.dynamic_update_slice(self.segment_ids, segment_ids,
                                                                (0, index)),
                       positions=jax.lax.dynamic_update_slice(self.positions, positions,
                                                              (0, index)))

    def _write_rows(self, new_k, new_v, segment_ids, positions, index) -> "KVCache":
        # A scatter of T slots per row, dropped past the end (in place in a loop).
        batch, steps = segment_ids.shape
        rows = jnp.arange(batch)[:, None]
        slot = index[:, None] + jnp.arange(steps)[None, :]                # [B, T]

        def put(buffer, new):   # buffer[:, rows, :, slot] is [B, T, layers, kv_heads, Dh]
            return buffer.at[:, rows, :, slot].set(
                jnp.transpose(new, (1, 2, 0, 3, 4)).astype(buffer.dtype), mode="drop")

        return KVCache(k=put(self.k, new_k), v=put(self.v, new_v),
                       segment_ids=self.segment_ids.at[rows, slot].set(segment_ids, mode="drop"),
                       positions=self.positions.at[rows, slot].set(positions, mode="drop"))

    def insert(self, prefilled: "KVCache", source, slot) -> "KVCache":
        """Row `source[r]` of a prefilled cache (its first `prefilled.slots` slots)
        copied into row `slot[r]` of this one, whose later slots are emptied
        (segment 0; their stale keys/values stay, hidden by the mask). Entries with
        slot >= this cache's rows are padding, anywhere in the list (each host of a
        pod pads its own part). n samples of one prompt are n entries with the same
        source.

        One row at a time (a loop over the real entries): in place, with no
        [layers, R, kv_heads, length, head_dim] gather of the copies, so the number
        of entries is free to be the slot count whatever arrived."""
        length = prefilled.slots
        if length > self.slots:
            raise ValueError(f"a prefilled cache of {length} slots does not fit rows of "
                             f"{self.slots}")
        rows = self.segment_ids.shape[0]
        # The real entries first (padding sorts last), so the loop stops at their count.
        order = jnp.argsort(jnp.asarray(slot, jnp.int32), stable=True)
        source = jnp.asarray(source, jnp.int32)[order]
        slot = jnp.asarray(slot, jnp.int32)[order]

        def copy_row(r, cache):
            src, dst = source[r], slot[r]

            def put(buffer, new):   # [layers, 1, kv_heads, length, head_dim] at row dst
                row = jax.lax.dynamic_slice_in_dim(new, src, 1, axis=1)
                return jax.lax.dynamic_update_slice(buffer, row.astype(buffer.dtype),
                                                    (0, dst, 0, 0, 0))

            def reset(buffer, new):  # the whole row: the prompt's, then empty
                row = jnp.zeros((1, self.slots), buffer.dtype).at[:, :length].set(
                    jax.lax.dynamic_slice_in_dim(new, src, 1, axis=0))
                return jax.lax.dynamic_update_slice(buffer, row, (dst, 0))

            return KVCache(k=put(cache.k, prefilled.k), v=put(cache.v, prefilled.v),
                           segment_ids=reset(cache.segment_ids, prefilled.segment_ids),
                           positions=reset(cache.positions, prefilled.positions))

        return jax.lax.fori_loop(0, jnp.sum(slot < rows), copy_row, self)


def cache_head_shape(cfg) -> tuple[int, int, int]:
    """(kv heads, key dim, value dim) per slot and layer."""
    if cfg.mla is not None:   # the latent and the RoPE key; values read from the latent
        return 1, cfg.mla.latent_dim, 0
    return cfg.num_kv_heads, cfg.head_dim, cfg.head_dim


def bytes_per_token(cfg, dtype: Any = None) -> int:
    """Cache bytes one token takes over all layers (k and v)."""
    heads, k_dim, v_dim = cache_head_shape(cfg)
    return cfg.num_layers * heads * (k_dim + v_dim) * jnp.dtype(dtype or cfg.dtype).itemsize


# Logical axis names of each field, for `nn.with_logical_constraint` / shardings.
LOGICAL_AXES = KVCache(k=("layers", "batch", "kv_heads", "length", "head_dim"),
                       v=("layers", "batch", "kv_heads", "length", "head_dim"),
                       segment_ids=("batch", "length"), positions=("batch", "length"))
# A latent cache has one head that every query head reads: replicated over "tensor".
_LATENT_AXES = KVCache(k=("layers", "batch", None, "length", None),
                       v=("layers", "batch", None, "length", None),
                       segment_ids=("batch", "length"), positions=("batch", "length"))


def logical_axes(cfg) -> KVCache:
    return _LATENT_AXES if cfg.mla is not None else LOGICAL_AXES
