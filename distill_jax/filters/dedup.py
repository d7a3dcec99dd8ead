"""Duplicate detection over a whole dataset, in bounded memory per sample.

Two responses are duplicates when their whitespace-normalised texts are equal
(`exact`), and near-duplicates when the Jaccard similarity of their word
`shingle_size`-gram sets is at least `threshold`. Comparing every pair is
quadratic, so near-duplicates are found with MinHash and LSH banding:

* `signature(text)`: `num_perm` MinHash values of the shingle set (each the
  minimum of a multiply-shift hash over the shingles). Two signatures agree at
  a position with probability equal to the Jaccard similarity, so the fraction
  of agreeing positions estimates it (standard error sqrt(J(1-J)/num_perm):
  0.027 at J=0.9 with 128 values).
* The signature is cut into `bands` bands of `num_perm/bands` values; samples
  that share a band hash are candidates, and a candidate counts as a
  near-duplicate when its estimated similarity reaches the threshold. With 16
  bands of 8 a pair at J=0.9 shares a band with probability 1-(1-0.9^8)^16 >
  0.9999, at J=0.8 0.95 (then the estimate decides), at J=0.5 0.06.

Hashing is deterministic (crc32 of words, fixed multipliers), so the verdicts
do not depend on the process, the machine or the worker count. `keys()` runs in
the filter's worker processes; `SeenIndex` (what has been kept so far) lives in
the one process that decides, in input order, what to keep.

Memory: `SeenIndex` holds, per kept sample, one exact key, `bands` band keys
(8-byte key + 4-byte value each, in sorted numpy arrays) and the signature as
uint16 (the low bits of each 32-bit minimum: a spurious match has probability
2^-16 per position): 12 * (1 + 16) + 2 * 128 = 460 bytes with the defaults,
~370 MB for 800k kept samples. Nothing else about a sample is remembered.
"""
from __future__ import annotations

import dataclasses
import hashlib
import zlib

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)   # odd: a bijection mod 2^64


def normalise(text: str) -> str:
    return " ".join(text.split())


def exact_key(text: str, scope: str = "") -> int:
    """64-bit key of the normalised text (and the scope, e.g. a prompt id)."""
    h = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8,
                        person=hashlib.blake2b(scope.encode()).digest()[:16])
    return int.from_bytes(h.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclasses.dataclass(frozen=True)
class MinHasher:
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16

    def __post_init__(self):
        if self.shingle_size < 1:
            raise ValueError(f"dedup.shingle_size must be >= 1, got {self.shingle_size}")
        if self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise ValueError(f"dedup.num_perm={self.num_perm} must be a positive multiple of "
                             f"dedup.bands={self.bands}")
        rng = np.random.default_rng(20260517)      # fixed: the same hashes everywhere
        object.__setattr__(self, "_a", rng.integers(1, 2**63, self.num_perm, np.uint64) | 1)
        object.__setattr__(self, "_b", rng.integers(0, 2**63, self.num_perm, np.uint64))
        object.__setattr__(self, "_band_mult",
                           rng.integers(1, 2**63, self.num_perm // self.bands, np.uint64) | 1)

    def shingles(self, text: str) -> np.ndarray:
        """The set of word-shingle hashes, uint64 [num_shingles] (a text shorter than
        a shingle is one shingle of its own length)."""
        words = text.split()
        ids = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), np.uint64,
                          len(words))
        k = self.shingle_size
        if len(ids) <= k:
            k = max(1, len(ids))
            if not len(ids):
                return np.zeros((1,), np.uint64)
        h = np.zeros((len(ids) - k + 1,), np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                h = h * _SHINGLE_MULTIPLIER + ids[j:len(ids) - k + 1 + j]
        return np.unique(h)

    def signature(self, text: str) -> np.ndarray:
        """uint16 [num_perm]: the low 16 bits of each 32-bit MinHash value."""
        sh = self.shingles(text)
        out = np.empty((self.num_perm,), np.uint32)
        # In blocks of permutations: [block, shingles] stays small for 30k-token traces.
        with np.errstate(over="ignore"):
            for lo in range(0, self.num_perm, 16):
                a, b = self._a[lo:lo + 16, None], self._b[lo:lo + 16, None]
                out[lo:lo + 16] = ((a * sh[None, :] + b) >> np.uint64(32)).min(axis=1)
        return (out & 0xFFFF).astype(np.uint16)

    def band_keys(self, sig: np.ndarray, scope: str = "") -> np.ndarray:
        """int64 [bands]: one key per band of the signature (and the scope)."""
        rows = sig.reshape(self.bands, -1).astype(np.uint64)
        salt = np.uint64(zlib.crc32(scope.encode("utf-8")))
        with np.errstate(over="ignore"):
            keys = (rows * self._band_mult[None, :]).sum(axis=1, dtype=np.uint64)
            keys = keys * _SHINGLE_MULTIPLIER + np.arange(self.bands, dtype=np.uint64) + salt
        return (keys >> np.uint64(1)).astype(np.int64)

    def keys(self, text: str, scope: str = "") -> "DedupKeys":
        sig = self.signature(normalise(text))
        return DedupKeys(exact_key(text, scope), self.band_keys(sig, scope), sig)


@dataclasses.dataclass
class DedupKeys:
    exact: int
    bands: np.ndarray          # int64 [bands]
    signature: np.ndarray      # uint16 [num_perm]


class MultiMap:
    """int64 key -> int32 values, append-only and compact: sorted numpy arrays plus
    a small dict of recent entries (a value, or a list when a key repeats), merged
    in by insertion (O(size) per merge, no re-sort) when it grows."""

    MERGE_AT = 1 << 16

    def __init__(self):
        self.keys = np.empty((0,), np.int64)
        self.values = np.empty((0,), np.int32)
        self.recent: dict[int, int | list[int]] = {}
        self.recent_count = 0

    def get_many(self, keys: np.ndarray) -> list[int]:
        """The values of every key of `keys` (int64 [n]), with repeats."""
        found: list[int] = []
        if len(self.keys):
            lo = np.searchsorted(self.keys, keys, side="left")
            hit = self.keys[np.minimum(lo, len(self.keys) - 1)] == keys
            for k in np.flatnonzero(hit):             # usually none
                a = int(lo[k])
                b = int(np.searchsorted(self.keys, keys[k], side="right"))
                found += self.values[a:b].tolist()
        if self.recent:
            for key in self.recent.keys() & set(keys.tolist()):
                v = self.recent[key]
                found += v if isinstance(v, list) else [v]
        return found

    def get(self, key: int) -> list[int]:
        return self.get_many(np.asarray([key], np.int64))

    def add_many(self, keys: np.ndarray, value: int) -> None:
        recent = self.recent
        for key in keys.tolist():
            prev = recent.get(key)
            if prev is None:
                recent[key] = value
            elif isinstance(prev, list):
                prev.append(value)
            else:
                recent[key] = [prev, value]
        self.recent_count += len(keys)
        if self.recent_count >= self.MERGE_AT:
            self.merge()

    def add(self, key: int, value: int) -> None:
        self.add_many(np.asarray([key], np.int64), value)

    def merge(self) -> None:
        if not self.recent:
            return
        ks = np.fromiter((k for k, vs in self.recent.items()
                          for _ in (vs if isinstance(vs, list) else (vs,))),
                         np.int64, self.recent_count)
        vs = np.fromiter((v for vs in self.recent.values()
                          for v in (vs if isinstance(vs, list) else (vs,))),
                         np.int32, self.recent_count)
        order = np.argsort(ks, kind="stable")
        ks, vs = ks[order], vs[order]
        # After the equal keys already there: a key's values stay in insertion order.
        at = np.searchsorted(self.keys, ks, side="right")
        self.keys, self.values = np.insert(self.keys, at, ks), np.insert(self.values, at, vs)
        self.recent, self.recent_count = {}, 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + 100 * self.recent_count


class SeenIndex:
    """What has been kept so far; `check` says whether a new sample duplicates it."""

    def __init__(self, hasher: MinHasher, threshold: float):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup.near_duplicate_threshold must be in (0, 1], got {threshold}")
        self.hasher, self.threshold = hasher, threshold
        self.exact = MultiMap()
        self.bands = MultiMap()
        self.signatures = np.empty((1024, hasher.num_perm), np.uint16)
        self.count = 0

    def check(self, keys: DedupKeys) -> tuple[str, float] | None:
        """("duplicate", 1.0) or ("near_duplicate", estimated Jaccard) against a kept
        sample, else None."""
        if self.exact.get(keys.exact):
            return "duplicate", 1.0
        candidates = self.bands.get_many(keys.bands)
        if not candidates:
            return None
        others = np.unique(np.asarray(candidates, np.int64))
        similarity = (self.signatures[others] == keys.signature[None, :]).mean(axis=1)
        best = float(similarity.max())
        return ("near_duplicate", best) if best >= self.threshold else None

    def add(self, keys: DedupKeys) -> None:
        k = self.count
        if k == len(self.signatures):
            self.signatures = np.concatenate([self.signatures, np.empty_like(self.signatures)])
        self.signatures[k] = keys.signature
        self.exact.add(keys.exact, k)
        self.bands.add_many(keys.bands, k)
        self.count += 1

    @property
    def nbytes(self) -> int:
        return (self.exact.nbytes + self.bands.nbytes
                + self.count * self.signatures.shape[1] * 2)


def pack_keys(keys: list[DedupKeys], num_perm: int, bands: int) -> dict[str, np.ndarray]:
    """Arrays to save with a committed shard, so a resumed run rebuilds the index."""
    return {"exact": np.asarray([k.exact for k in keys], np.int64).reshape(-1),
            "bands": np.asarray([k.bands for k in keys], np.int64).reshape(-1, bands),
            "signatures": np.asarray([k.signature for k in keys],
                                     np.uint16).reshape(-1, num_perm)}


def unpack_keys(arrays) -> list[DedupKeys]:
    return [DedupKeys(int(e), b, s) for e, b, s in
            zip(arrays["exact"], arrays["bands"], arrays["signatures"])]
