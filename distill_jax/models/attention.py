"""Attention kernels behind one dispatch point: the model asks for attention, this
module decides which kernel computes it.

Every kernel computes the same thing: grouped-query attention of q [B, L, H, Dh]
over k, v [B, L, KVH, Dh], causal and within one segment, in float32 softmax.
Masks are never passed in: each kernel builds them from `segment_ids` [B, L]
(0 = padding, which attends to and is attended by nothing) inside its tiles, so
no [B, L, L] array exists outside the `xla` reference.

  xla        einsum scores [B, H, L, L] and a dense mask: the reference
  blockwise  pure JAX flash attention: online softmax over key/value blocks, a
             custom VJP that recomputes the blocks, O(L · block) memory, blocks
             above the causal diagonal never computed. Runs on any backend.
  splash     TPU: the Pallas splash-attention kernel shipped with JAX, causal with
             segment ids, under `shard_map` over the current mesh (rows over the
             batch axes, heads over `tensor`). Off TPU it runs in Pallas interpret
             mode, which is how its numerics are tested on CPU (slowly).
  cudnn      GPU: cuDNN flash attention (the kernel `jax.nn.dot_product_attention`
             uses), with each row's segments given as lengths and offsets (cuDNN's
             packed layout) instead of a mask.
  auto       splash on TPU, cudnn on GPU; elsewhere blockwise, except rows of at
             most AUTO_XLA_MAX_LEN tokens, where xla ties with it (measured on
             CPU: benchmarks/attention_kernels.py, BENCHMARKS.md).

Causality: the non-reference kernels are causal by index within a segment. The
model's positions restart at 0 in each segment and increase by one per token
(left padding, packing), so index order and position order agree there; `xla`
compares positions and stays the reference for anything else.

Rows with no key to attend to (padding) give 0 from blockwise, and arbitrary
finite values from the other kernels; nothing reads them.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IMPLS = ("auto", "xla", "blockwise", "splash", "cudnn")
# Longest row for which `auto` picks `xla` on CPU (and other non-TPU/GPU backends).
# Measured (BENCHMARKS.md, "Attention kernels"; forward + backward of the op): the
# two tie at 128 tokens (blockwise/xla 0.95), blockwise is faster from 256 (0.61x)
# to 4096 (0.33x) except where a 512 block padded the row badly (now avoided by
# `_block_for`), and xla's [L, L] scores cost memory quadratically. So xla stays
# only where it ties: the reference kernel for the short rows of tests and demos.
AUTO_XLA_MAX_LEN = 128
# Key/value block of `blockwise`: 256 took 0.65-0.71x the step time of 512 on CPU
# at 1k-8k tokens (BENCHMARKS.md).
DEFAULT_BLOCK = 256
# Slots per block of a decode step's cache read (`cached_attention`); windows and
# the sampler's slot lengths are whole blocks.
DECODE_BLOCK = 256
# Tile of `splash` on TPU (MaxText's default for long rows).
SPLASH_TILE = 512
# Finite, so a fully masked row gives a finite softmax instead of NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_PLATFORM_OF_IMPL = {"splash": "tpu", "cudnn": "gpu"}
_PLATFORM_AUTO = {"tpu": "splash", "gpu": "cudnn"}


def platform() -> str:
    return jax.devices()[0].platform


def resolve(impl: str, seq_len: int | None, backend: str | None = None) -> str:
    """The kernel that runs for `impl` at rows of `seq_len` tokens on `backend`
    (default: this process's). Raises for a kernel the backend cannot run,
    naming the one `auto` would pick. `seq_len=None` (length not known yet, e.g.
    before weights load) only checks the backend and returns `impl` itself."""
    backend = backend or platform()
    if impl not in IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r}; choose from {IMPLS}")
    if backend in _PLATFORM_AUTO:
        auto = _PLATFORM_AUTO[backend]
    elif seq_len is None:
        auto = f"blockwise (xla for rows of at most {AUTO_XLA_MAX_LEN} tokens)"
    else:
        auto = "xla" if seq_len <= AUTO_XLA_MAX_LEN else "blockwise"
    needs = _PLATFORM_OF_IMPL.get(impl)
    if needs is not None and needs != backend:
        raise ValueError(
            f"attention_impl={impl!r} runs on {needs.upper()} only; this backend is "
            f"{backend!r}, where attention_impl='auto' picks {auto!r}")
    return auto if impl == "auto" and seq_len is not None else impl


# ------------------------------------------------------------------ the dispatch

def self_attention(q: Array, k: Array, v: Array, segment_ids: Array, impl: str,
                   positions: Array | None = None, scale: float | None = None) -> Array:
    """Causal same-segment attention of a row's tokens over themselves.

    q: [B, L, H, Dh]; k, v: [B, L, KVH, Dh]; segment_ids [B, L] (0 = padding);
    (latent attention pads its values to Dh, see mla.py); `scale` multiplies q.k
    (default 1/sqrt(Dh); latent attention's differs);
    positions [B, L] (the `xla` reference's causal order; default the index).
    `impl` is resolved here (see `resolve`). Returns [B, L, H, Dh] in q's dtype.
    """
    length = q.shape[1]
    kernel = resolve(impl, length)
    if kernel == "xla":
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
        return xla_attention(q, k, v, attention_mask(segment_ids, segment_ids,
                                                     positions, positions), scale)
    if kernel == "blockwise":
        return blockwise_attention(q, k, v, segment_ids, scale=scale)
    if kernel == "splash":
        return splash_attention(q, k, v, segment_ids, scale=scale)
    return cudnn_attention(q, k, v, segment_ids, scale)


# ------------------------------------------------------------------ xla (reference)

def attention_mask(q_segment_ids: Array, kv_segment_ids: Array, q_positions: Array,
                   kv_positions: Array) -> Array:
    """Causal, same-segment, non-padding mask. -> [batch, q_length, kv_length] bool."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return same_segment & causal & (kv_segment_ids[:, None, :] != 0)


def default_scale(head_dim: int, scale: float | None = None) -> float:
    """The softmax scale of q.k: `scale`, or 1/sqrt(head_dim) when None."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def xla_attention(q: Array, k: Array, v: Array, mask: Array,
                  scale: float | None = None) -> Array:
    """Grouped-query attention with softmax in float32.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
    mask: [batch, q_len, kv_len]. Returns [batch, q_len, heads, head_dim].
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
    scores = scores * default_scale(head_dim, scale)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    return out.reshape(batch, q_len, heads, head_dim)


# ------------------------------------------------------------------ decoding

def decode_block(slots: int) -> int:
    """The key block `cached_attention` reads a cache of `slots` slots in:
    DECODE_BLOCK when it divides the cache (the sampler sizes its caches so),
    else the whole cache as one block."""
    return DECODE_BLOCK if slots % DECODE_BLOCK == 0 else slots


def cached_attention(q: Array, k_new: Array, v_new: Array, k_cache: Array, v_cache: Array,
                     cache_segment_ids: Array, cache_positions: Array, segment_ids: Array,
                     positions: Array, scale: float | None = None) -> Array:
    """Attention of T new tokens over [the given cache slots ; the new tokens].

    The cache is only read here (the caller writes the new keys/values once,
    outside the layer scan, in place inside a decode loop) and only the slots it
    is given: a decode step passes a window, the filled part of the cache rounded
    up to whole blocks, so a step costs what the rows hold, not the capacity.

    Why blocks: a row's result is bitwise the same whatever the window (as long as
    it covers the row's filled slots) and whatever the other rows hold. The new
    tokens come first, then each block of `decode_block` slots in order, with an
    online softmax, every block the same ops on the same shapes. After the new
    tokens the running max is a real score, so a block whose slots are all masked
    adds exp(MASK_VALUE - max) = 0 to the sum and 0 x v to the output and rescales
    by exp(0) = 1: nothing changes, not even a rounding. A sampler can then batch
    rows of any lengths, in any slot, under any window, and get the numbers each
    row would get alone.

    q: [B, T, H, Dh]; k_new: [B, T, KVH, Dh]; v_new: [B, T, KVH, Dv]; k_cache:
    [B, KVH, S, Dh], v_cache: [B, KVH, S, Dv] (kv-head-major: each head's slots are
    contiguous; Dv may differ from Dh, as in latent attention's absorbed decode);
    cache_segment_ids, cache_positions: [B, S] (segment 0 = empty, never read);
    segment_ids, positions: [B, T] of the new tokens. Slots must hold finite values
    (stale ones are fine: the mask hides them).
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads, slots = k_cache.shape[1], k_cache.shape[2]
    groups = heads // kv_heads
    block = decode_block(slots)
    blocks = slots // block
    scale = default_scale(head_dim, scale)
    # Queries as [B, KVH, G*T, Dh] (row g*T + t): the products below are plain
    # batched matrix products over (B, KVH), with no transposes when T == 1.
    qg = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    qg = qg.reshape(batch, kv_heads, groups * q_len, head_dim)

    def per_query(mask):   # [B, T, K] -> [B, 1, G*T, K], matching qg's rows
        mask = jnp.broadcast_to(mask[:, None], (batch, groups, q_len, mask.shape[-1]))
        return mask.reshape(batch, 1, groups * q_len, mask.shape[-1])

    def scores(k, mask):
        s = jnp.einsum("bkqd,bksd->bkqs", qg, k.astype(qg.dtype),
                       preferred_element_type=jnp.float32) * scale
        return jnp.where(per_query(mask), s, MASK_VALUE)

    # The new tokens first: [B, KVH, G*T, T]; each row sees itself, so the running
    # max is a real score from here on.
    k_t, v_t = k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3)   # [B, KVH, T, Dh]
    s = scores(k_t, attention_mask(segment_ids, segment_ids, positions, positions))
    top = s.max(-1, keepdims=True)
    p = jnp.exp(s - top)
    total = p.sum(-1, keepdims=True)
    acc = jnp.einsum("bkqs,bksd->bkqd", p.astype(v_t.dtype), v_t,
                     preferred_element_type=jnp.float32)
    # Then each block, in order, with an online softmax. The loop is unrolled (the
    # window is static), so every block is the same ops on the same shapes: XLA:CPU
    # reduces and multiplies a [.., n, block] array differently for different n, and
    # a `while` loop over blocks costs more than the blocks on CPU.
    for i in range(blocks):
        cut = slice(i * block, (i + 1) * block)
        s = scores(k_cache[:, :, cut], attention_mask(
            segment_ids, cache_segment_ids[:, cut], positions, cache_positions[:, cut]))
        new_top = jnp.maximum(top, s.max(-1, keepdims=True))
        rescale = jnp.exp(top - new_top)
        p = jnp.exp(s - new_top)
        total = total * rescale + p.sum(-1, keepdims=True)
        acc = acc * rescale + jnp.einsum("bkqs,bksd->bkqd", p.astype(v_t.dtype),
                                         v_cache[:, :, cut].astype(v_t.dtype),
                                         preferred_element_type=jnp.float32)
        top = new_top
    out = (acc / total).astype(q.dtype)                                   # [B, KVH, Q, Dv]
    v_dim = v_new.shape[-1]
    out = out.reshape(batch, kv_heads, groups, q_len, v_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, heads, v_dim)


# ------------------------------------------------------------------ blockwise

def _pad_length(x: Array, length: int, axis: int = 1) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def blockwise_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                        block_size: int = DEFAULT_BLOCK, scale: float | None = None) -> Array:
    """Flash attention in plain JAX (see the module docstring). The row is padded
    to a multiple of the block (the pad is segment 0, so nothing sees it)."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    block = _block_for(length, block_size)
    padded = -(-length // block) * block
    n = padded // block

    def blocks(x, groups):   # [B, L, KVH*G, Dh] -> [n, B, KVH, G, block, Dh]
        x = _pad_length(x, padded).reshape(batch, n, block, kv_heads, groups, head_dim)
        return x.transpose(1, 0, 3, 4, 2, 5)

    group = heads // kv_heads
    qb = blocks(q, group)
    kb = blocks(k, 1)[:, :, :, 0]
    vb = blocks(v, 1)[:, :, :, 0]
    sb = _pad_length(segment_ids.astype(jnp.int32), padded).reshape(batch, n, block)
    sb = sb.transpose(1, 0, 2)                                     # [n, B, block]
    out = _flash(qb, kb, vb, sb, default_scale(head_dim, scale))  # [n, B, KVH, G, block, Dh]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, padded, heads, head_dim)
    return out[:, :length]


def _block_for(length: int, block_size: int) -> int:
    """The block for a row of `length`: `block_size`, a half or a quarter of it
    (not under 64), whichever pads the row least (the larger on a tie); a row
    shorter than that is one block. A 640-token row in 512-blocks padded to 1024
    and cost 3x xla; in 128-blocks it pads to 640."""
    if length <= block_size:
        return length
    candidates = [b for b in (block_size, block_size // 2, block_size // 4) if b >= 64]
    return min(candidates or [block_size], key=lambda b: (-(-length // b) * b, -b))


def _block_mask(seg_q: Array, seg_k: Array, i, j, block: int) -> Array:
    """[B, 1, 1, bq, bk]: same non-padding segment, key index <= query index."""
    q_idx = i * block + jnp.arange(block)
    k_idx = j * block + jnp.arange(block)
    causal = k_idx[None, :] <= q_idx[:, None]
    same = (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k != 0)[:, None, :]
    return (same & causal[None])[:, None, None]


def _scores(q_i, k_j, scale):
    return jnp.einsum("bkgqd,bksd->bkgqs", q_i, k_j, preferred_element_type=jnp.float32) * scale


def _flash_forward(qb, kb, vb, sb, scale):
    n, block = qb.shape[0], qb.shape[-2]

    def one_query_block(_, xs):
        i, q_i, seg_i = xs

        def step(j, carry):
            m, l, acc = carry
            k_j, v_j, seg_j = kb[j], vb[j], sb[j]
            mask = _block_mask(seg_i, seg_j, i, j, block)
            s = jnp.where(mask, _scores(q_i, k_j, scale), MASK_VALUE)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            l = l * correction + p.sum(-1)
            acc = acc * correction[..., None] + jnp.einsum(
                "bkgqs,bksd->bkgqd", p.astype(v_j.dtype), v_j,
                preferred_element_type=jnp.float32)
            return m_new, l, acc

        shape = q_i.shape[:-1]
        init = (jnp.full(shape, MASK_VALUE, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(q_i.shape, jnp.float32))
        # Key blocks after i lie above the causal diagonal: the loop stops at i.
        m, l, acc = jax.lax.fori_loop(0, i + 1, step, init)
        seen = l > 0
        out = acc / jnp.where(seen, l, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return None, (out.astype(q_i.dtype), lse)

    _, (out, lse) = jax.lax.scan(one_query_block, None, (jnp.arange(n), qb, sb))
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(qb, kb, vb, sb, scale):
    return _flash_forward(qb, kb, vb, sb, scale)[0]


def _flash_fwd(qb, kb, vb, sb, scale):
    out, lse = _flash_forward(qb, kb, vb, sb, scale)
    return out, (qb, kb, vb, sb, out, lse)


def _flash_bwd(scale, residuals, d_out):
    qb, kb, vb, sb, out, lse = residuals
    n, block = qb.shape[0], qb.shape[-2]
    d_out = d_out.astype(jnp.float32)
    # D_i = rowsum(dO ∘ O): the softmax backward's correction term, per query.
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)

    def probs_and_dscores(i, j, q_i, seg_i, lse_i, dout_i, delta_i, k_j, v_j, seg_j):
        mask = _block_mask(seg_i, seg_j, i, j, block)
        p = jnp.where(mask, jnp.exp(_scores(q_i, k_j, scale) - lse_i[..., None]), 0.0)
        dp = jnp.einsum("bkgqd,bksd->bkgqs", dout_i, v_j.astype(jnp.float32))
        return p, p * (dp - delta_i[..., None])

    def dq_block(_, xs):                  # query block i gathers over key blocks <= i
        i, q_i, seg_i, lse_i, dout_i, delta_i = xs

        def step(j, dq):
            k_j = kb[j]
            _, ds = probs_and_dscores(i, j, q_i, seg_i, lse_i, dout_i, delta_i, k_j, vb[j],
                                      sb[j])
            return dq + jnp.einsum("bkgqs,bksd->bkgqd", ds, k_j.astype(jnp.float32)) * scale
        return None, jax.lax.fori_loop(0, i + 1, step, jnp.zeros(q_i.shape, jnp.float32))

    def dkv_block(_, xs):                 # key block j gathers over query blocks >= j
        j, k_j, v_j, seg_j = xs

        def step(i, carry):
            dk, dv = carry
            q_i, dout_i = qb[i], d_out[i]
            p, ds = probs_and_dscores(i, j, q_i, sb[i], lse[i], dout_i, delta[i], k_j, v_j,
                                      seg_j)
            dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p, dout_i)
            dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds, q_i.astype(jnp.float32)) * scale
            return dk, dv
        zeros = jnp.zeros(k_j.shape, jnp.float32)
        return None, jax.lax.fori_loop(j, n, step, (zeros, zeros))

    steps = jnp.arange(n)
    _, dq = jax.lax.scan(dq_block, None, (steps, qb, sb, lse, d_out, delta))
    _, (dk, dv) = jax.lax.scan(dkv_block, None, (steps, kb, vb, sb))
    return dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------ splash (TPU)

SPLASH_BLOCK = 128   # the kernel's smallest tile; rows are padded to a multiple of it


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                     block_size: int = SPLASH_TILE, interpret: bool = False,
                     scale: float | None = None) -> Array:
    """The Pallas splash kernel (MQA form per kv head, vmapped over rows and kv
    heads), under shard_map when a mesh is current: each device runs the kernel
    on its rows and heads, so no kernel input is gathered."""
    from jax.sharding import PartitionSpec as P

    batch, length, heads, head_dim = q.shape
    padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
    block = max(SPLASH_BLOCK, min(block_size, padded) // SPLASH_BLOCK * SPLASH_BLOCK)
    while padded % block:
        block -= SPLASH_BLOCK
    q = _pad_length(q, padded) * default_scale(head_dim, scale)
    k, v = _pad_length(k, padded), _pad_length(v, padded)
    seg = _pad_length(segment_ids.astype(jnp.int32), padded)

    def local(q, k, v, seg):
        return _splash_local(q, k, v, seg, block, interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v, seg)
    else:
        import flax.linen as nn
        names = nn.logical_to_mesh_axes(("batch", "length", "heads", "head_dim"))
        rows = nn.logical_to_mesh_axes(("batch", "length"))
        kv_names = nn.logical_to_mesh_axes(("batch", "length", "kv_heads", "head_dim"))
        out = jax.shard_map(local, mesh=mesh,
                            in_specs=(P(*names), P(*kv_names), P(*kv_names), P(*rows)),
                            out_specs=P(*names), check_vma=False)(q, k, v, seg)
    return out[:, :length]


def _splash_local(q, k, v, seg, block, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash, splash_attention_mask as masks)

    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    mask = masks.MultiHeadMask([masks.CausalMask((length, length))] * group)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mqa(mask=mask, block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
    # [B, L, KVH*G, Dh] -> [B, KVH, G, L, Dh]; k, v -> [B, KVH, L, Dh]
    qh = q.reshape(batch, length, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def one_row(q_r, k_r, v_r, seg_r):
        ids = splash.SegmentIds(q=seg_r, kv=seg_r)
        return jax.vmap(lambda a, b, c: kernel(a, b, c, ids))(q_r, k_r, v_r)
    out = jax.vmap(one_row)(qh, kh.astype(q.dtype), vh.astype(q.dtype), seg)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


# ------------------------------------------------------------------ cudnn (GPU)

def packed_segments(segment_ids: Array) -> tuple[Array, Array]:
    """cuDNN's packed layout of each row: (lengths [B, M], offsets [B, M + 1]) of its
    segments in order, -1 past the last (M = L, the most a row can hold). Padding
    (segment 0) is in no segment, so its tokens are skipped wherever they are."""
    batch, length = segment_ids.shape
    seg = segment_ids.astype(jnp.int32)
    prev = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), seg[:, :-1]], axis=1)
    starts = (seg != 0) & (seg != prev)                        # first token of each segment
    ordinal = jnp.cumsum(starts, axis=1) - 1                   # segment number of each token
    count = starts.sum(axis=1)
    idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), seg.shape)
    slot = jnp.where(starts, ordinal, length)                  # out-of-range slots drop
    offsets = jnp.full((batch, length + 1), -1, jnp.int32)
    offsets = jax.vmap(lambda o, s, i: o.at[s].set(i, mode="drop"))(offsets, slot, idx)
    member = jnp.where(seg != 0, ordinal, length)
    lengths = jax.vmap(lambda s: jnp.zeros((length,), jnp.int32).at[s].add(1, mode="drop"))(
        member)
    present = jnp.arange(length)[None, :] < count[:, None]
    return jnp.where(present, lengths, -1), offsets


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                    scale: float | None = None) -> Array:
    """cuDNN flash attention, causal, with segments as the packed layout."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    lengths, offsets = packed_segments(segment_ids)
    out = cudnn.dot_product_attention(
        q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
        scale=default_scale(q.shape[-1], scale), mask_type=cudnn.MaskType.PADDING_CAUSAL,
        qkv_layout="BTNH")
    return out
