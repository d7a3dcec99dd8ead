"""Turning one step's logits into a token: temperature, top-k, top-p, min-p.

All settings are traced values (per-row arrays), so changing them never
recompiles. The semantics are the ones documented on `SamplingParams`.

How the support set is found without sorting the vocabulary
-----------------------------------------------------------
Write s = logits / T (float32) and v_0 >= v_1 >= ... >= v_{V-1} for s sorted
descending. Every filter is decided on the sorted order:

  p_i          = exp(v_i - max s) / sum_j exp(s_j - max s)     (full vocabulary)
  top-k        rank i < k                                       (k <= 0 or k >= V: off)
  R            = p_0 + ... + p_{k-1} when top-k is on, else 1   (top-k renormaliser)
  top-p        (p_0 + ... + p_{i-1}) / R < top_p                (top_p >= 1: off)
  min-p        p_i >= min_p * p_0
  rank 0 is always kept.

Each test is monotone in i (ranks, partial sums of non-negative terms, and p_i
all move one way), so the kept set is a prefix v_0..v_{n-1} of the sorted order.
The result keeps every token with s >= v_{n-1} (so tokens tied with the last kept
one are kept too) and sets the rest to -inf.

Deciding rank i only needs the normaliser (one max and one sum of exp over the
vocabulary, in vocabulary order, no sort), p_0..p_i (the i+1 largest values) and
R. So `jax.lax.top_k` gives the C + 1 largest values (C = `CANDIDATES`), and the
keep decision is exact for candidate ranks 0..C whenever R is known from them:
top-k off (R = 1), top-k on with k <= C + 1 (R sums candidates only), or top-p
off (R is not used). Then the kept prefix lies inside the candidates iff

  * candidate number C (the (C+1)-th) is not kept: the prefix ends before it; or
  * top-k is on with k <= C + 1: the prefix has at most k members.

and its last value v_{n-1} is among the candidates, so the threshold is exact.
A row meeting neither (e.g. top_p = 0.999 on a flat distribution, or top-k
larger than C + 1 with top-p on) may keep more than the candidates: for those
rows the same computation runs with C + 1 = V on a full sort. The full path runs
under `lax.cond` only when some row in the batch needs it, and its result is
taken per row, so a row's output never depends on which other rows share its
batch. Rows with no filter at all (top-k off, top_p >= 1, min_p <= 0) keep the
whole vocabulary and never need the full path. Both paths compute the same
decisions from the same p_i; they can differ only by float rounding in the
partial sums, like any two summation orders.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
# Candidates taken with `lax.top_k` (C; C + 1 values are read, see above).
CANDIDATES = 64


def _support_threshold(top, row_max, norm, top_k_on, top_k, top_p, min_p):
    """Smallest kept value and the number kept, from the n largest scaled logits.

    top: [..., n] descending; row_max, norm and the settings: [..., 1]. Exact when
    n = vocab; for n < vocab see the module docstring for when it is exact.
    """
    n = top.shape[-1]
    rank = jnp.arange(n)
    probs = jnp.exp(top - row_max) / norm
    in_top_k = rank < top_k
    keep = ~top_k_on | in_top_k
    renorm = jnp.where(top_k_on, jnp.sum(jnp.where(in_top_k, probs, 0.0), axis=-1, keepdims=True),
                       1.0)
    # Exclusive prefix sums, shifted rather than cumsum - p, so they never decrease.
    mass_before = jnp.concatenate(
        [jnp.zeros_like(probs[..., :1]), jnp.cumsum(probs[..., :-1], axis=-1)], axis=-1)
    keep &= (top_p >= 1) | (mass_before / renorm < top_p)
    keep &= probs >= min_p * probs[..., :1]
    keep = keep.at[..., 0].set(True)                                  # never empty
    # The kept set is the leading run of True (a prefix, see the module docstring).
    num_kept = jnp.where(jnp.all(keep, axis=-1, keepdims=True), n,
                         jnp.argmin(keep, axis=-1, keepdims=True))
    threshold = jnp.take_along_axis(top, num_kept - 1, axis=-1)
    return threshold, num_kept


def _filter(logits, temperature, top_k, top_p, min_p):
    """(filtered logits [batch, vocab], rows that needed the full sort [batch])."""
    vocab = logits.shape[-1]
    batch_shape = logits.shape[:-1]

    def per_row(x):
        return jnp.broadcast_to(jnp.asarray(x), batch_shape)[..., None]

    scaled = logits.astype(jnp.float32) / per_row(temperature)
    top_k, top_p, min_p = per_row(top_k), per_row(top_p), per_row(min_p)
    top_k_on = (top_k > 0) & (top_k < vocab)
    unfiltered = ~top_k_on & (top_p >= 1) & (min_p <= 0)              # keeps everything
    # Normaliser over the whole vocabulary, in vocabulary order: no sort.
    row_max = jnp.max(scaled, axis=-1, keepdims=True)
    norm = jnp.sum(jnp.exp(scaled - row_max), axis=-1, keepdims=True)
    settings = (row_max, norm, top_k_on, top_k, top_p, min_p)

    def full_threshold():
        return _support_threshold(-jnp.sort(-scaled, axis=-1), *settings)[0]

    n = CANDIDATES + 1
    if n >= vocab:    # small vocabularies: the sort is the candidate set
        threshold = full_threshold()
        needs_full = jnp.zeros(batch_shape, bool)
    else:
        top = jax.lax.top_k(scaled, n)[0]
        threshold, num_kept = _support_threshold(top, *settings)
        renorm_known = ~top_k_on | (top_k <= n) | (top_p >= 1)
        inside = renorm_known & ((num_kept <= CANDIDATES) | (top_k_on & (top_k <= n)))
        needs_full_row = ~unfiltered & ~inside                         # [..., 1]
        threshold = jax.lax.cond(
            jnp.any(needs_full_row),
            lambda t: jnp.where(needs_full_row, full_threshold(), t),  # per row
            lambda t: t, threshold)
        needs_full = needs_full_row[..., 0]
    filtered = jnp.where(unfiltered | (scaled >= threshold), scaled, NEG_INF)
    return filtered, needs_full


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                  min_p: jax.Array) -> jax.Array:
    """Temperature-scaled logits with everything outside the support set to -inf.

    logits: [batch, vocab] float32; the settings: [batch] (or scalars).
    Temperature must be > 0 here; greedy rows are handled by `choose_tokens`.
    """
    return _filter(logits, temperature, top_k, top_p, min_p)[0]


def needs_full_sort(logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                    top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """[batch] bool: rows whose support set may extend past the `CANDIDATES` + 1
    largest logits, so `filter_logits` takes them from a full sort."""
    return _filter(logits, temperature, top_k, top_p, min_p)[1]


def choose_tokens(keys: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """One token per row: argmax where temperature == 0, else a filtered sample.

    keys: [batch] typed PRNG keys, one per row, so a row's draw never depends on
    the other rows.
    """
    temperature = jnp.asarray(temperature)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample():
        sampled_row = temperature > 0
        safe_temperature = jnp.where(sampled_row, temperature, 1.0)
        # Greedy rows' filters are moot (their draw is discarded): switched off, so
        # they never make the batch filter or take the full sort.
        k = jnp.where(sampled_row, top_k, 0)
        p = jnp.where(sampled_row, top_p, 1.0)
        m = jnp.where(sampled_row, min_p, 0.0)
        filtering = jnp.any(k > 0) | jnp.any(p < 1) | jnp.any(m > 0)
        # Without top-k/top-p/min-p there is no support to cut: skip the filter.
        filtered = jax.lax.cond(
            filtering, lambda: filter_logits(logits, safe_temperature, k, p, m),
            lambda: logits.astype(jnp.float32) / jnp.broadcast_to(
                safe_temperature, logits.shape[:-1])[..., None])
        sampled = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
        return jnp.where(sampled_row, sampled, greedy)

    # An all-greedy batch skips the filtering entirely.
    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)
