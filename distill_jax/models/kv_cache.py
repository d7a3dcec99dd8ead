"""The decoder's KV cache: one small struct that owns its layout and its updates.

  k, v         [layers, batch, kv_heads, slots, head_dim] — kv-head-major, so a
               decode step reads each head's slots as one contiguous block
  segment_ids  [batch, slots]: what each slot holds (0 = empty or padding, which
               every attention mask hides)
  positions    [batch, slots]: the RoPE position of the token in each slot

The model reads it (`window`) and hands back the new keys/values of a call;
`write` stores them at one slot index for every row, in place inside a decode
loop. A sampler repeats a prefilled cache for n samples (`repeat`) and places it
on a mesh by `LOGICAL_AXES`.
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
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, slots, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   segment_ids=jnp.zeros((batch, slots), jnp.int32),
                   positions=jnp.zeros((batch, slots), jnp.int32))

    @property
    def slots(self) -> int:
        return self.segment_ids.shape[1]

    def repeat(self, n: int) -> "KVCache":
        """Each row repeated n times in place (row i -> rows i*n .. i*n + n - 1)."""
        rows = self.segment_ids.shape[0] * n
        rep = lambda x, axis: jnp.repeat(x, n, axis=axis, total_repeat_length=rows)  # noqa: E731
        return KVCache(k=rep(self.k, 1), v=rep(self.v, 1),
                       segment_ids=rep(self.segment_ids, 0), positions=rep(self.positions, 0))

    def write(self, new_k: Array, new_v: Array, segment_ids: Array, positions: Array,
              index) -> "KVCache":
        """Stores a call's keys/values at slots index .. index + T - 1 of every row.
        new_k, new_v: [layers, batch, T, kv_heads, head_dim] (the layer scan's output)."""
        index = jnp.asarray(index, jnp.int32)
        start = (0, 0, 0, index, 0)

        def put(buffer, new):   # -> [layers, batch, kv_heads, T, head_dim]
            return jax.lax.dynamic_update_slice(
                buffer, jnp.swapaxes(new, 2, 3).astype(buffer.dtype), start)

        return KVCache(k=put(self.k, new_k), v=put(self.v, new_v),
                       segment_ids=jax.lax.dynamic_update_slice(self.segment_ids, segment_ids,
                                                                (0, index)),
                       positions=jax.lax.dynamic_update_slice(self.positions, positions,
                                                              (0, index)))


# Logical axis names of each field, for `nn.with_logical_constraint` / shardings.
LOGICAL_AXES = KVCache(k=("layers", "batch", "kv_heads", "length", "head_dim"),
                       v=("layers", "batch", "kv_heads", "length", "head_dim"),
                       segment_ids=("batch", "length"), positions=("batch", "length"))
