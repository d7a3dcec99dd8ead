"""filter_logits / choose_tokens: the candidate (top_k) path and the full-sort fallback
against a numpy reference of the documented semantics, and per-row independence."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.sampling import logits_processing as lp

C = lp.CANDIDATES
V = 1000


def reference_support(logits, temperature, top_k, top_p, min_p):
    """Kept token ids of one row, straight from the SamplingParams docstring, in float64."""
    scaled = np.float64(logits) / np.float64(temperature)
    v = np.sort(scaled)[::-1]
    p = np.exp(v - v[0])
    p /= p.sum()
    rank = np.arange(v.size)
    keep = np.ones(v.size, bool)
    renorm = 1.0
    if top_k > 0:
        keep &= rank < top_k
        renorm = p[:top_k].sum()
    if top_p < 1:
        mass_before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        keep &= mass_before / renorm < top_p
    keep &= p >= min_p * p[0]
    keep[0] = True
    n = v.size if keep.all() else int(np.argmin(keep))   # the kept prefix
    return set(np.flatnonzero(np.isfinite(scaled) & (scaled >= v[n - 1])).tolist())


def random_row(rng, kind):
    if kind == "peaked":
        return rng.normal(size=V) * 4
    if kind == "zipf":
        return -rng.uniform(1.0, 2.0) * np.log(rng.permutation(V) + 1.0)
    if kind == "flat":
        return rng.normal(size=V) * 0.05
    if kind == "ties":                                    # integer logits: many ties
        return np.round(rng.normal(size=V) * 1.5)
    if kind == "top_ties":                                # several tokens tied at the top
        x = rng.normal(size=V) * 3
        x[rng.choice(V, rng.integers(2, 80), replace=False)] = x.max() + 1
        return x
    if kind == "masked":                                  # part of the vocabulary at -inf
        x = rng.normal(size=V) * 3
        x[rng.choice(V, V // 2, replace=False)] = -np.inf
        return x
    assert kind == "uniform"
    return np.zeros(V)


KINDS = ["peaked", "zipf", "flat", "ties", "top_ties", "masked", "uniform"]


def random_batch(seed, rows):
    rng = np.random.default_rng(seed)
    logits = np.stack([random_row(rng, KINDS[i % len(KINDS)]) for i in range(rows)])
    temperature = rng.choice([0.5, 0.7, 1.0, 2.0], rows)
    top_k = rng.choice([0, 0, 1, 5, C, C + 1, C + 5, V], rows)
    top_p = np.where(rng.random(rows) < 0.5, rng.choice([1.0, 0.95, 0.999], rows),
                     rng.uniform(0.05, 1.0, rows))
    min_p = np.where(rng.random(rows) < 0.5, 0.0,
                     np.where(rng.random(rows) < 0.5, rng.uniform(0, 0.2, rows),
                              rng.uniform(0, 1e-3, rows)))
    return (logits.astype(np.float32), temperature.astype(np.float32), top_k.astype(np.int32),
            top_p.astype(np.float32), min_p.astype(np.float32))


@functools.cache
def jitted(fn):
    return jax.jit(fn)


def test_support_matches_numpy_reference_on_both_paths(monkeypatch):
    batch = random_batch(0, 420)
    got = np.asarray(jitted(lp.filter_logits)(*batch))
    needs_full = np.asarray(jitted(lp.needs_full_sort)(*batch))
    # Forcing the full sort for every row (C + 1 >= V) defines the same supports.
    monkeypatch.setattr(lp, "CANDIDATES", V)
    forced_full = np.asarray(jax.jit(lp.filter_logits)(*batch))
    monkeypatch.undo()

    exact = 0
    for i in range(len(batch[0])):
        logits, t, k, p, m = (x[i] for x in batch)
        support = set(np.flatnonzero(np.isfinite(got[i])).tolist())
        assert support == set(np.flatnonzero(np.isfinite(forced_full[i])).tolist()), i
        # (XLA may scale by the reciprocal of T: within an ulp of logits / T.)
        np.testing.assert_allclose(got[i][np.isfinite(got[i])],
                                   (logits / t)[np.isfinite(got[i])], rtol=3e-7)
        # Settings nudged by more than float32 rounding bracket the support; where both
        # nudges agree (almost every row) the support must equal the reference exactly.
        d = 2e-5
        smaller = reference_support(logits, t, k, p - d if p < 1 else p, m * (1 + 1e-4))
        larger = reference_support(logits, t, k, p + d if p < 1 else p, m * (1 - 1e-4))
        assert smaller <= support <= larger, (i, len(smaller), len(support), len(larger))
        exact += smaller == larger
    rows = len(batch[0])
    assert exact >= 0.9 * rows, exact
    # Both paths ran on a good share of the rows.
    assert 0.15 * rows < needs_full.sum() < 0.85 * rows, needs_full.sum()


def test_which_rows_fall_back():
    rng = np.random.default_rng(1)
    peaked = np.sort(rng.normal(size=V) * 6)[::-1].astype(np.float32)
    flat = (rng.normal(size=V) * 0.05).astype(np.float32)
    cases = [  # (logits, top_k, top_p, min_p, needs the full sort)
        (peaked, 0, 0.95, 0.0, False),     # the nucleus is a few tokens
        (flat, 0, 0.999, 0.0, True),       # the nucleus is most of the vocabulary
        (flat, 0, 0.2, 0.0, True),         # still ~200 tokens
        (flat, 0, 1.0, 0.0, False),        # no filter: everything, no sort needed
        (flat, 0, 1.0, 0.5, True),         # min-p keeps most of a flat row
        (flat, C, 0.999, 0.0, False),      # top-k within the candidates bounds the set
        (flat, C + 1, 0.999, 0.0, False),  # C + 1 values are read: still bounded
        (flat, C + 5, 1.0, 0.0, True),     # top-k alone keeps C + 5
        (peaked, C + 5, 0.95, 0.0, True),  # top-p on a top-k renormaliser past the candidates
        (peaked, C + 5, 1.0, 0.1, False),  # top-p off: min-p ends the set early
        (peaked, V, 0.9, 0.0, False),      # top_k = V is off
    ]
    logits, top_k, top_p, min_p, want = (np.array(x) for x in zip(*cases))
    needs_full = lp.needs_full_sort(logits, 1.0, top_k, top_p.astype(np.float32),
                                    min_p.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(needs_full), want)


def test_row_result_does_not_depend_on_the_batch():
    rng = np.random.default_rng(2)
    peaked = [(rng.normal(size=V) * 5).astype(np.float32) for _ in range(3)]
    flat = [(rng.normal(size=V) * 0.05).astype(np.float32) for _ in range(2)]
    fast = (peaked[0], 0.6, 0, 0.95, 0.0)     # inside the candidates
    slow = (flat[0], 0.6, 0, 0.999, 0.0)      # needs the full sort
    others_fast = [(peaked[1], 1.0, 20, 0.9, 0.0), (peaked[2], 0.7, 0, 1.0, 0.05)]
    other_slow = (flat[1], 1.0, 0, 0.99, 0.0)
    filt, choose, full = (jitted(lp.filter_logits), jitted(lp.choose_tokens),
                          jitted(lp.needs_full_sort))

    def stack(rows):
        return [np.stack([np.asarray(r[j], np.float32 if j != 2 else np.int32) for r in rows])
                for j in range(5)]

    np.testing.assert_array_equal(full(*stack([fast, slow])), [False, True])
    for row in (fast, slow):
        alone = np.asarray(filt(*stack([row])))[0]
        keys = jax.random.split(jax.random.key(5), 4)
        token_alone = int(choose(keys[:1], *stack([row]))[0])
        for batch, at in [([row] + others_fast, 0),               # no row falls back
                          ([other_slow, row] + others_fast, 1),   # another row falls back
                          ([others_fast[0], row, row], 2)]:
            np.testing.assert_array_equal(np.asarray(filt(*stack(batch)))[at], alone)
            batch_keys = jnp.concatenate([keys[1:at + 1], keys[:1], keys[at + 1:len(batch)]])
            assert int(choose(batch_keys[:len(batch)], *stack(batch))[at]) == token_alone

    # A row with no filter draws the same alone (the batch skips filtering) as next to
    # rows that filter, on the fast or the full path.
    plain = [(peaked[i % 3], 0.8, 0, 1.0, 0.0) for i in range(16)]
    keys = jax.random.split(jax.random.key(6), 17)
    alone = np.asarray(choose(keys[:16], *stack(plain)))
    for other in (fast, slow):
        np.testing.assert_array_equal(np.asarray(choose(keys, *stack(plain + [other])))[:16],
                                      alone)


def old_filter_logits(logits, temperature, top_k, top_p, min_p):
    """The full-sort filter this module used before the candidate path (reference)."""
    vocab = logits.shape[-1]

    def per_row(x):
        return jnp.broadcast_to(jnp.asarray(x), logits.shape[:-1])[..., None]

    scaled = logits.astype(jnp.float32) / per_row(temperature)
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    rank = jnp.arange(vocab)
    keep = (per_row(top_k) <= 0) | (rank < per_row(top_k))
    kept_probs = jnp.where(keep, probs, 0.0)
    kept_probs = kept_probs / jnp.sum(kept_probs, axis=-1, keepdims=True)
    keep &= jnp.cumsum(kept_probs, axis=-1) - kept_probs < per_row(top_p)
    keep &= probs >= per_row(min_p) * probs[..., :1]
    keep = keep.at[..., 0].set(True)
    threshold = jnp.take_along_axis(sorted_desc, jnp.sum(keep, -1, keepdims=True) - 1, axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def test_choose_tokens_draws_what_the_full_sort_filter_drew():
    logits, t, k, p, m = random_batch(3, 140)
    p = np.minimum(p, 0.999).astype(np.float32)   # the old filter cut float32-negligible
    t = np.where(np.arange(140) % 5 == 0, 0.0, t).astype(np.float32)  # some greedy rows
    keys = jax.random.split(jax.random.key(7), 140)
    got = np.asarray(jitted(lp.choose_tokens)(keys, logits, t, k, p, m))

    @jax.jit
    def old(keys, logits, t, k, p, m):
        filtered = old_filter_logits(logits, jnp.where(t > 0, t, 1.0), k, p, m)
        sampled = jax.vmap(jax.random.categorical)(keys, filtered)
        return jnp.where(t > 0, sampled, jnp.argmax(logits, -1))

    np.testing.assert_array_equal(got, np.asarray(old(keys, logits, t, k, p, m)))
    greedy = t == 0
    np.testing.assert_array_equal(got[greedy], np.argmax(logits[greedy], -1))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_choose_tokens_shortcuts(temperature):
    logits, *_ = random_batch(4, 6)
    keys = jax.random.split(jax.random.key(0), 6)
    got = np.asarray(lp.choose_tokens(keys, logits, temperature, 0, 1.0, 0.0))
    if temperature == 0:   # all greedy: argmax of the raw logits
        np.testing.assert_array_equal(got, np.argmax(logits, -1))
    else:                  # no filter: a plain draw at the temperature
        want = jax.vmap(jax.random.categorical)(keys, jnp.asarray(logits) / temperature)
        np.testing.assert_array_equal(got, np.asarray(want))
