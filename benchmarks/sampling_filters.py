"""Sampling filters: choose_tokens with the top_k candidate filter vs the old full sort.

One decode step's token choice (jitted `choose_tokens`), batch 64, R1 decoding
settings (temperature 0.6, top_p 0.95), vocabularies 32000 and 151936 (Qwen2),
float32 logits. "old" is a copy of the filter that sorted the whole vocabulary
every step (kept below as the reference, `old_filter_logits`); "new" is
`distill_jax.sampling.choose_tokens` (top_k of CANDIDATES + 1, full sort only
when some row needs it). Logits per row:
  - zipf: -log(rank) over a random permutation (at T=0.6 the top token holds
    ~47% and the 0.95 nucleus ~52 tokens): no row falls back;
  - normal*4: N(0, 16) logits: a few rows' nuclei pass 64 tokens, so the batch
    computes the full sort too (the per-batch cond);
  - flat + top_p 0.999: N(0, 0.05^2) logits, every row falls back (the worst case).
Both sides run alternately (`interleaved`); median ms per call. Also timed in the
same rounds: "no filter" (choose_tokens at top_p 1: scaling and the categorical
draw only), the floor under both. The two sides' tokens are compared (same keys:
the same support gives the same draw).
--write appends the rows to BENCHMARKS.md.

  python benchmarks/sampling_filters.py [--write] [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.sampling import logits_processing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, interleaved  # noqa: E402


def old_filter_logits(logits, temperature, top_k, top_p, min_p):
    """REFERENCE: distill_jax's filter_logits before the candidate path (full vocab sort)."""
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
    kept_probs = jnp.where(keep, probs, 0.0)
    kept_probs = kept_probs / jnp.sum(kept_probs, axis=-1, keepdims=True)
    mass_before = jnp.cumsum(kept_probs, axis=-1) - kept_probs
    keep &= mass_before < per_row(top_p)
    keep &= probs >= per_row(min_p) * probs[..., :1]
    keep = keep.at[..., 0].set(True)
    num_kept = jnp.sum(keep, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def old_choose_tokens(keys, logits, temperature, top_k, top_p, min_p):
    """REFERENCE: choose_tokens as it was, with `old_filter_logits`."""
    temperature = jnp.asarray(temperature)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample():
        safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
        filtering = (jnp.any(jnp.asarray(top_k) > 0) | jnp.any(jnp.asarray(top_p) < 1)
                     | jnp.any(jnp.asarray(min_p) > 0))
        filtered = jax.lax.cond(
            filtering, lambda: old_filter_logits(logits, safe_temperature, top_k, top_p, min_p),
            lambda: logits.astype(jnp.float32) / jnp.broadcast_to(
                safe_temperature, logits.shape[:-1])[..., None])
        sampled = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
        return jnp.where(temperature > 0, sampled, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)


def make_logits(kind, batch, vocab, rng):
    if kind == "zipf":
        return -np.log(np.stack([rng.permutation(vocab) for _ in range(batch)]) + 1.0)
    if kind == "normal*4":
        return rng.normal(size=(batch, vocab)) * 4
    assert kind == "flat"
    return rng.normal(size=(batch, vocab)) * 0.05


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocabs", default="32000,151936")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    cases = [("zipf", 0.6, 0.95), ("normal*4", 0.6, 0.95), ("flat", 0.6, 0.999)]
    old_fn, new_fn = jax.jit(old_choose_tokens), jax.jit(logits_processing.choose_tokens)
    fallback_fn = jax.jit(logits_processing.needs_full_sort)
    rng = np.random.default_rng(0)
    keys = jax.random.split(jax.random.key(0), args.batch)
    rows = []
    print(f"choose_tokens, batch {args.batch}, float32 logits, {jax.devices()[0].platform}")
    for vocab in map(int, args.vocabs.split(",")):
        for kind, temperature, top_p in cases:
            logits = jnp.asarray(make_logits(kind, args.batch, vocab, rng), jnp.float32)
            settings = (jnp.full(args.batch, temperature, jnp.float32),
                        jnp.zeros(args.batch, jnp.int32), jnp.full(args.batch, top_p, jnp.float32),
                        jnp.zeros(args.batch, jnp.float32))
            fallback = int(jnp.sum(fallback_fn(logits, *settings)))
            same = int(jnp.sum(old_fn(keys, logits, *settings) == new_fn(keys, logits, *settings)))
            unfiltered = settings[:2] + (jnp.ones(args.batch, jnp.float32),) + settings[3:]
            secs = interleaved({
                "old": lambda: old_fn(keys, logits, *settings).block_until_ready(),
                "new": lambda: new_fn(keys, logits, *settings).block_until_ready(),
                "none": lambda: new_fn(keys, logits, *unfiltered).block_until_ready()},
                args.rounds)
            ratio = secs["old"] / secs["new"]
            print(f"  V {vocab:6d} {kind:8s} T {temperature} top_p {top_p}: old "
                  f"{1e3 * secs['old']:7.2f} ms, new {1e3 * secs['new']:7.2f} ms, "
                  f"old/new {ratio:5.2f}x, no filter {1e3 * secs['none']:7.2f} ms; "
                  f"rows on the full sort {fallback}/{args.batch}, "
                  f"same tokens {same}/{args.batch}")
            rows.append([f"V {vocab}, {kind}, T {temperature}, top_p {top_p}",
                         f"{1e3 * secs['old']:.2f}", f"{1e3 * secs['new']:.2f}", f"{ratio:.2f}x",
                         f"{1e3 * secs['none']:.2f}",
                         f"{fallback}/{args.batch}", f"{same}/{args.batch}"])
    if args.write:
        for row in rows:
            append_row(row)


if __name__ == "__main__":
    main()
