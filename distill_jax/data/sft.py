"""The student's input pipeline: curated traces -> fixed-length, loss-masked batches.

Each example (prompt, response) is rendered with the chat template as

    head + response + tail

where `head` is the conversation up to where the assistant's content starts and
`tail` is what the template puts after it (the end-of-turn token). The loss
mask covers exactly the response and tail tokens (completion-only loss: the
student learns to write the response and to stop, never the prompt). Targets
are shifted inside each example, so packed examples never predict across a
boundary.

Rows are either padded (one example per row) or packed first-fit with grain's
`FirstFitPackIterDataset`, which adds per-segment `segment_ids` and
`positions`: packed examples cannot attend to each other (the model masks
attention by segment) and each restarts its positions at 0. Examples longer
than `seq_len` are dropped or truncated (`overlong`), and counted.

The pipeline is grain over random-access sources (`tfds.data_source` of the
curated dataset, or a JSONL file read through a byte-offset index of its
lines): each source shuffled with its own seed and repeated, the sources
interleaved by weight (a mixture), packed, batched; its iterator state is a
small dict that the trainer checkpoints, so a resumed run sees exactly the
batches an uninterrupted one would. With packing, a bin may hold the end of one
epoch and the start of the next.

The length cache: what an example's length is (and how many of its tokens are
targets) is computed once per source in one tokenising pass and saved under
`cache_dir` (a run's `workdir/data_cache/`) keyed by a fingerprint of the
source file(s) (path, size, mtime), the tokenizer (name and vocabulary), the
chat format and the top-k width. Statistics, which examples are kept, the
mixture's sampling probabilities and `count_batches` all come from the lengths
alone: the batch count runs the same grain graph (shuffle, mix, pack, batch)
over zero-filled stand-ins of the cached lengths, so it equals what the real
pipeline yields without tokenising anything. A resumed run reads the cache and
tokenises nothing before its first step. `cache_dir` may be a bucket: each cache is
one small object written whole (see data/sources.py), so a resume on a fresh machine
still tokenises nothing.

Mixtures (several `MixtureSource`s): weights are shares of *target tokens*.
Source i is sampled per example with probability p_i ∝ w_i / m_i, m_i its mean
target tokens per kept example, so its expected share of target tokens is
w_i / Σw. The interleave is grain's deterministic `MapDataset.mix` (integer
proportions, the smallest scaled to 100: the probabilities hold to within
0.5%). Each source is shuffled with a seed derived from `seed` and its index
and repeated forever; with `num_epochs` the mixture stops after num_epochs x
(kept examples of all sources) examples — a small source is seen more than
num_epochs times, a large one fewer. Every token carries its source's id
(`source_ids`: i + 1, 0 on padding) so the host can count target tokens per
source; `SFTPipeline.iterator()` strips it from the batches and keeps the
cumulative counts in its (checkpointed) state.

Several hosts (`host_split`):
  * "rows" (default): every host builds the same global stream of batches and
    keeps its own rows of each (host i: rows [i*b, (i+1)*b) of the global
    batch, b = batch_size / hosts). The run is then the same on any number of
    hosts — the global batches, hence the losses, equal a one-host run's, and a
    checkpoint resumes on a different host count. The price: each host reads,
    tokenizes and packs all of the data (cheap next to training for SFT sets up
    to millions of traces).
  * "examples": host i reads only examples i::hosts of each source and packs
    its own rows — no redundant input work, but the batches depend on the host
    count.

Offline KD: when the records carry the teacher's token ids and top-k
logprobs, the response is encoded as the teacher's own tokens (the assistant
prefix such as "<think>\\n", then the generated ids), so row j of the top-k
arrays lines up with the target that predicts generated token j. Prefix tokens
get no soft target (`kd_mask` = 0), nor do examples of a record without
teacher ids (a mixture may combine KD and plain sources).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import weakref
from typing import Any, Iterator

import grain
import grain.experimental
import numpy as np

from distill_jax import storage
from distill_jax.chat import ChatFormat
from distill_jax.data.sources import (file_identity, fingerprint, load_npz,
                                      save_npz_atomic, slug, write_cache)
from distill_jax.data.topk_store import TopKReader, topk_arrays
from distill_jax.host import available_cores
from distill_jax.progress import Progress
from distill_jax.tokenizer import Tokenizer

PACKED_FEATURES = ("inputs", "targets", "loss_mask", "kd_mask", "topk_ids", "topk_logprobs",
                   "source_ids")
CACHE_VERSION = 1


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_example(record: dict[str, Any], fmt: ChatFormat, topk: int = 0,
                   topk_reader: TopKReader | None = None) -> dict[str, np.ndarray]:
    """One record -> {"ids", "loss_mask"} (and KD fields), unshifted, length n. The
    teacher's top-k comes from the record's arrays (tfds), inline lists or sidecar
    ref (JSONL; its file made absolute by the source), read without JSON parsing
    for a sidecar."""
    prompt, response = _text(record["prompt"]), _text(record["response"])
    head_ids = fmt.tokenizer.encode(fmt.head(prompt))
    teacher_ids = record.get("token_ids")
    if topk and teacher_ids is not None and len(teacher_ids):
        teacher_ids = [int(t) for t in np.asarray(teacher_ids).reshape(-1)]
        prefix = _text(record.get("assistant_prefix") or "")
        prefix_ids = fmt.tokenizer.encode(prefix) if prefix else []
        tail_ids = [] if teacher_ids[-1] in fmt.tokenizer.stop_token_ids() else \
            fmt.tokenizer.encode(fmt.tail)
        response_ids = prefix_ids + teacher_ids + tail_ids
        top_ids, top_lp = topk_arrays(record, "", topk_reader) or (
            np.zeros((0,), np.int32), np.zeros((0,), np.float32))
        if top_ids.ndim != 2 or top_ids.shape[0] != len(teacher_ids) or top_lp.shape != top_ids.shape:
            raise ValueError(f"record {_text(record.get('prompt_id', '?'))!r}: top-k arrays of "
                             f"shape {top_ids.shape}/{top_lp.shape} do not match its "
                             f"{len(teacher_ids)} teacher tokens (offline KD needs the sampler's "
                             "return_top_k)")
        if top_ids.shape[1] < topk:
            raise ValueError(f"record {record.get('prompt_id')!r} has top-{top_ids.shape[1]} "
                             f"logprobs, the config asks for top-{topk}")
        n = len(head_ids) + len(response_ids)
        ids = np.asarray(head_ids + response_ids, np.int32)
        kd_ids = np.zeros((n, topk), np.int32)
        kd_lp = np.full((n, topk), -np.inf, np.float32)
        kd_mask = np.zeros((n,), np.int32)
        start = len(head_ids) + len(prefix_ids)
        kd_ids[start:start + len(teacher_ids)] = top_ids[:, :topk]
        kd_lp[start:start + len(teacher_ids)] = top_lp[:, :topk]
        kd_mask[start:start + len(teacher_ids)] = 1
        out = {"ids": ids, "kd_mask": kd_mask, "topk_ids": kd_ids, "topk_logprobs": kd_lp}
    else:
        response_ids = fmt.tokenizer.encode(response + fmt.tail)
        ids = np.asarray(head_ids + response_ids, np.int32)
        out = {"ids": ids}
    mask = np.zeros((len(ids),), np.int32)
    mask[len(head_ids):] = 1
    out["loss_mask"] = mask
    return out


def shift_example(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs/targets within one example: position p predicts token p+1."""
    ids = ex["ids"]
    out = {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": ex["loss_mask"][1:]}
    if "topk_ids" in ex:
        # Row p+1 holds the teacher's distribution over token p+1: the target at p.
        out["kd_mask"] = ex["kd_mask"][1:]
        out["topk_ids"] = ex["topk_ids"][1:]
        out["topk_logprobs"] = ex["topk_logprobs"][1:]
    return out


# ---------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class DataStats:
    examples: int
    overlong: int            # examples longer than seq_len (dropped or truncated)
    kept: int
    target_tokens: int       # completion tokens of the kept examples (after truncation)


@dataclasses.dataclass
class SourceStats(DataStats):
    name: str = ""
    path: str = ""
    seq_len: int = 0
    weight: float = 1.0
    probability: float = 1.0     # share of the sampled examples


@dataclasses.dataclass
class MixtureSource:
    """One component of a mixture: a random-access source and how to render it."""
    source: Any
    name: str = "data"
    weight: float = 1.0
    chat_format: ChatFormat | None = None     # None: the pipeline's
    seq_len: int = 0                          # 0: the pipeline's
    path: str = ""                            # for messages and the length cache key


_TOKENIZER_IDENTITIES: "weakref.WeakKeyDictionary[Tokenizer, str]" = weakref.WeakKeyDictionary()


def _tokenizer_identity(tokenizer: Tokenizer) -> str:
    """The tokenizer's name (its path) and whole vocabulary, hashed (once per object)."""
    try:
        return _TOKENIZER_IDENTITIES[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    identity = fingerprint([tokenizer.name, type(tokenizer).__name__, vocab,
                             sorted(tokenizer.special_ids())])
    try:
        _TOKENIZER_IDENTITIES[tokenizer] = identity
    except TypeError:
        pass
    return identity


def format_identity(fmt: ChatFormat) -> str:
    """What decides how a record is rendered and tokenised."""
    probe = "\x00probe\x00"
    return fingerprint([_tokenizer_identity(fmt.tokenizer), fmt.template, fmt.system_prompt,
                         fmt.assistant_prefix, fmt.tail, fmt.opener, fmt.head(probe)])


def _seed_for(seed: int, index: int) -> int:
    if index == 0:
        return seed % 2**32
    return int(np.random.SeedSequence([seed % 2**32, index]).generate_state(1)[0])


@dataclasses.dataclass
class _Component:
    spec: MixtureSource
    fmt: ChatFormat
    seq_len: int
    lengths: np.ndarray           # [examples] shifted length
    targets: np.ndarray           # [examples] target tokens (untruncated)
    kept: np.ndarray              # indices of kept examples (this host's share)
    stats: SourceStats
    cache_path: str | None


class SFTPipeline:
    """Fixed-length batches of the local host's share of the global batch.

    `source`: a random-access source, or a list of `MixtureSource` (a weighted
    mixture; see the module docstring). `cache_dir`: where the length cache lives
    (None: lengths are computed, not saved)."""

    def __init__(self, source, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                 num_epochs: int | None = 1, seed: int = 0, packing: bool = True,
                 overlong: str = "drop", chat_format: ChatFormat | None = None, topk: int = 0, num_packing_bins: int = 16,
                 process_index: int = 0, process_count: int = 1, host_split: str = "rows",
                 cache_dir: str | None = None, progress: bool | None = None,
                 read_threads: int = -1):
        if overlong not in ("drop", "truncate"):
            raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
        if host_split not in ("rows", "examples"):
            raise ValueError(f"host_split must be 'rows' or 'examples', got {host_split!r}")
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} does not divide over {process_count} "
                             "hosts")
        specs = list(source) if isinstance(source, (list, tuple)) else \
            [MixtureSource(source, path=getattr(source, "path", ""))]
        if not specs or not all(isinstance(s, MixtureSource) for s in specs):
            raise ValueError("source must be a random-access source or a non-empty list of "
                             "MixtureSource")
        self.mixture = len(specs) > 1
        self.seq_len, self.topk = seq_len, topk
        self.local_batch = batch_size // process_count
        self.host_split = host_split
        # The batch this host's pipeline assembles before keeping its rows.
        self._built_batch = batch_size if host_split == "rows" else self.local_batch
        # The format is built (and its markers checked) by the caller, who may have
        # extended the tokenizer; by default the tokenizer's own template.
        self.fmt = chat_format or ChatFormat.create(tokenizer)
        self.packing, self.overlong = packing, overlong
        self.num_epochs, self.seed = num_epochs, seed
        self.num_packing_bins = num_packing_bins
        self.process_index, self.process_count = process_index, process_count
        self.cache_dir = cache_dir
        self.read_options = read_options(read_threads)
        # Keeps the sidecars' memory maps open (bucket sidecars: of their local copies).
        self._topk_reader = TopKReader()
        self._progress = process_index == 0 if progress is None else progress
        self._check_specs(specs)
        self.source = specs[0].source
        self.components = [self._component(k, s) for k, s in enumerate(specs)]
        self._set_probabilities()
        self.source_stats = [c.stats for c in self.components]
        self.stats = DataStats(*(sum(getattr(s, f) for s in self.source_stats)
                                 for f in ("examples", "overlong", "kept", "target_tokens")))

    @property
    def source_names(self) -> list[str]:
        return [c.spec.name for c in self.components]

    def _check_specs(self, specs: list[MixtureSource]) -> None:
        names = [s.name for s in specs]
        for k, s in enumerate(specs):
            label = f"source {k} ({s.name})"
            if not (isinstance(s.weight, (int, float)) and math.isfinite(s.weight)
                    and s.weight > 0):
                raise ValueError(f"{label}: weight must be a finite number > 0, got {s.weight!r}")
            if names.index(s.name) != k:
                raise ValueError(f"{label}: duplicate source name {s.name!r}")
            if s.seq_len > self.seq_len:
                raise ValueError(f"{label}: seq_len={s.seq_len} exceeds the pipeline's "
                                 f"seq_len={self.seq_len}")
            if len(s.source) == 0:
                raise ValueError("the training dataset is empty" if len(specs) == 1 else
                                 f"{label}: the source {s.path or ''} is empty")

    # ------------------------------------------------------------ lengths

    def _component(self, k: int, spec: MixtureSource) -> _Component:
        fmt = spec.chat_format or self.fmt
        seq_len = spec.seq_len or self.seq_len
        cache_path = None
        if self.cache_dir and spec.path:
            key = fingerprint({"version": CACHE_VERSION, "source": file_identity(spec.path),
                                "format": format_identity(fmt), "topk": self.topk})
            cache_path = storage.join(self.cache_dir, f"lengths-{slug(spec.name)}-{key}.npz")
        lengths = targets = None
        if cache_path and storage.exists(cache_path):
            with load_npz(cache_path) as z:
                lengths, targets = z["lengths"], z["targets"]
            if len(lengths) != len(spec.source):
                lengths = targets = None
        if lengths is None:
            lengths, targets = self._measure(spec, fmt)
            if cache_path:
                storage.makedirs(self.cache_dir)
                save_npz_atomic(cache_path, self.process_index, lengths=lengths,
                                 targets=targets)
        fits = lengths <= seq_len
        keep = fits if self.overlong == "drop" else np.ones_like(fits)
        kept = np.flatnonzero(keep)
        cut = np.minimum(lengths, seq_len)
        tokens = np.maximum(0, cut.astype(np.int64) - (lengths - targets))[kept].sum()
        stats = SourceStats(len(lengths), int((~fits).sum()), len(kept), int(tokens),
                            name=spec.name, path=spec.path, seq_len=seq_len,
                            weight=float(spec.weight))
        if len(kept) == 0:
            where = "" if not self.mixture else f"source {k} ({spec.name}): "
            raise ValueError(f"{where}all {len(lengths)} examples are longer than seq_len="
                             f"{seq_len} tokens (overlong={self.overlong!r}); raise seq_len")
        if tokens == 0:
            raise ValueError(f"source {k} ({spec.name}): its kept examples have no target tokens")
        if self.host_split == "examples":
            kept = kept[self.process_index::self.process_count]
            if len(kept) == 0:
                raise ValueError(f"source {k} ({spec.name}): {stats.kept} kept examples leave "
                                 f"none for host {self.process_index} of {self.process_count}")
        return _Component(spec, fmt, seq_len, lengths.astype(np.int32),
                          targets.astype(np.int32), kept, stats, cache_path)

    def _measure(self, spec: MixtureSource, fmt: ChatFormat) -> tuple[np.ndarray, np.ndarray]:
        """Every example's shifted length and target-token count: the one tokenising
        pass. (A plain loop: rendering and tokenising hold the GIL, so read threads
        only add overhead here.)"""
        n = len(spec.source)
        lengths, targets = np.zeros((n,), np.int32), np.zeros((n,), np.int32)
        progress = Progress(n, "examples", f"data {spec.name}: measuring lengths",
                            enabled=self._progress, min_interval_s=1.0)
        for k in range(n):
            ex = encode_example(spec.source[k], fmt, self.topk, self._topk_reader)
            lengths[k], targets[k] = len(ex["ids"]) - 1, int(ex["loss_mask"][1:].sum())
            progress.update(1, tokens=int(lengths[k]))
        return lengths, targets

    def _set_probabilities(self) -> None:
        """p_i ∝ w_i / (mean target tokens per kept example of source i)."""
        rates = np.asarray([c.spec.weight * c.stats.kept / c.stats.target_tokens
                            for c in self.components], np.float64)
        probs = rates / rates.sum()
        for c, p in zip(self.components, probs):
            c.stats.probability = float(p)
        # grain's mix works in integer proportions with the smallest scaled to 100:
        # rounding here (instead of its truncation) keeps each within 0.5%.
        self._proportions = [float(max(1, round(100 * r / rates.min()))) for r in rates]

    # ------------------------------------------------------------ the grain graph

    def _example_at(self, item) -> dict[str, np.ndarray]:
        k, index = item
        c = self.components[k]
        ex = shift_example(encode_example(c.spec.source[int(index)], c.fmt, self.topk,
                                          self._topk_reader))
        n = len(ex["inputs"])
        if n != c.lengths[index]:
            raise ValueError(
                f"source {c.spec.name}: example {int(index)} has {n} tokens but the length "
                f"cache says {int(c.lengths[index])}: the data or tokenizer changed unnoticed; "
                f"delete {c.cache_path or 'the length cache'} and rerun")
        if n > c.seq_len:
            ex = {key: v[:c.seq_len] for key, v in ex.items()}
            n = c.seq_len
        if self.topk and "topk_ids" not in ex:      # a record without teacher ids
            ex["kd_mask"] = np.zeros((n,), np.int32)
            ex["topk_ids"] = np.zeros((n, self.topk), np.int32)
            ex["topk_logprobs"] = np.full((n, self.topk), -np.inf, np.float32)
        ex["source_ids"] = np.full((n,), k + 1, np.int32)
        return ex

    def _stand_in(self, item) -> dict[str, np.ndarray]:
        k, index = item
        c = self.components[k]
        return {"inputs": np.zeros((min(int(c.lengths[index]), c.seq_len),), np.int32)}

    def _indices(self) -> grain.MapDataset:
        """(component, record index) in the order the run reads them."""
        parts = []
        for k, c in enumerate(self.components):
            ds = grain.MapDataset.source(c.kept).seed(_seed_for(self.seed, k)).shuffle()
            parts.append(ds.map(functools.partial(_tag, k)))
        if len(parts) == 1:
            return parts[0].repeat(self.num_epochs)    # None: forever
        mixed = grain.MapDataset.mix([p.repeat(None) for p in parts], self._proportions)
        if self.num_epochs is None:
            return mixed
        return mixed[:self.num_epochs * sum(len(c.kept) for c in self.components)]

    def _built(self, stand_in: bool = False) -> grain.IterDataset:
        """Batches of `_built_batch` rows (the global batch with host_split='rows')."""
        ds = self._indices().map(self._stand_in if stand_in else self._example_at)
        if not self.packing:
            return ds.map(self._pad).to_iter_dataset(self.read_options).batch(
                self._built_batch, drop_remainder=True)
        # Stand-ins are trivial: read threads would only cost (same elements, same order).
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0) if stand_in
                                else self.read_options)
        features = ["inputs"] if stand_in else [
            f for f in PACKED_FEATURES
            if f in ("inputs", "targets", "loss_mask", "source_ids") or self.topk]
        packed = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={f: self.seq_len for f in features},
            num_packing_bins=self.num_packing_bins, seed=self.seed, shuffle_bins=False)
        if stand_in:
            return packed.batch(self._built_batch, drop_remainder=True)
        return packed.map(self._from_packed).batch(self._built_batch, drop_remainder=True)

    def dataset(self) -> grain.IterDataset:
        """This host's batches, with `source_ids` (see `iterator()` for the training loop's)."""
        batches = self._built()
        if self._built_batch == self.local_batch:
            return batches
        return batches.map(self._own_rows)

    def iterator(self) -> "DataIterator":
        """The training loop's iterator: this host's batches without `source_ids`, and the
        cumulative target tokens per source in its state."""
        return DataIterator(self)

    def _own_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._built_batch == self.local_batch:
            return batch
        lo, hi = self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch
        return {k: v[lo:hi] for k, v in batch.items()}

    def _pad(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, L = len(ex["inputs"]), self.seq_len
        out = {}
        for k, v in ex.items():
            pad = [(0, L - n)] + [(0, 0)] * (v.ndim - 1)
            fill = -np.inf if k == "topk_logprobs" else 0
            out[k] = np.pad(v, pad, constant_values=fill)
        out["segment_ids"] = np.pad(np.ones((n,), np.int32), (0, L - n))
        out["positions"] = np.pad(np.arange(n, dtype=np.int32), (0, L - n))
        return out

    def _from_packed(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {f: ex[f] for f in PACKED_FEATURES if f in ex}
        out["segment_ids"] = ex["inputs_segment_ids"]
        out["positions"] = ex["inputs_positions"]
        if "topk_logprobs" in out:   # packing pads with 0; a padded row is masked anyway
            out["topk_logprobs"] = np.where(out["kd_mask"][..., None] > 0, out["topk_logprobs"],
                                            -np.inf).astype(np.float32)
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.dataset())

    def count_batches(self) -> int:
        """Local batches in the whole run (all epochs), from the cached lengths: the
        same shuffle, mixture and packing over zero-filled stand-ins, no tokenising.
        With a cache_dir the count itself is cached (keyed by everything it depends
        on), so a resume does not even repack."""
        if self.num_epochs is None:
            raise ValueError("an endless pipeline (num_epochs=None) has no batch count")
        if not self.packing:
            return len(self._indices()) // self._built_batch
        path = self._count_cache_path()
        if path and storage.exists(path):
            return int(json.loads(storage.read_text(path))["batches"])
        count = sum(1 for _ in self._built(stand_in=True))
        if path:
            storage.makedirs(self.cache_dir)
            data = json.dumps({"batches": count}, indent=2, sort_keys=True).encode() + b"\n"
            # With host_split="examples" the key names the host: each writes its own.
            write_cache(path, self.process_index, lambda f: f.write(data),
                        shared=self.host_split != "examples")
        return count

    def _count_cache_path(self) -> str | None:
        if not self.cache_dir or not all(c.cache_path for c in self.components):
            return None
        key = fingerprint({
            "version": CACHE_VERSION, "grain": getattr(grain, "__version__", ""),
            "lengths": [storage.basename(c.cache_path) for c in self.components],
            "seq_lens": [c.seq_len for c in self.components], "seq_len": self.seq_len,
            "proportions": self._proportions, "overlong": self.overlong,
            "epochs": self.num_epochs, "seed": self.seed, "bins": self.num_packing_bins,
            "batch": self._built_batch, "split": self.host_split,
            "host": [self.process_index, self.process_count]
            if self.host_split == "examples" else None})
        return storage.join(self.cache_dir, f"batches-{key}.json")


def read_options(read_threads: int = -1) -> grain.ReadOptions | None:
    """How the examples are read: `read_threads` threads ahead of the packer (grain's
    ReadOptions; None: its default, 16 threads 500 examples ahead); 0 reads each
    example when the packer asks for it. -1: 0 in a process that may run on at most
    2 cores, else grain's default. The elements and their order are the same
    either way; what differs is the CPU they cost. On a one- or two-core process
    the threads only compete with the step's own: a batch of the demo's students
    (10 packed rows of 224 tokens) cost 9.0 ms of CPU with 16 threads against 3.7
    inline on one core, 13.5 against 3.6 on two (benchmarks/sft_read_threads.py,
    BENCHMARKS.md). On a TPU or GPU host, whose cores are otherwise idle while the
    accelerator steps, the threads keep the tokenizing of long traces off the
    step's path."""
    if read_threads < -1:
        raise ValueError(f"data.read_threads: {read_threads}; use -1 (by the cores this "
                         "process may use), 0 (read inline) or a number of threads")
    if read_threads == -1:
        read_threads = 0 if available_cores() <= 2 else None
    return None if read_threads is None else grain.ReadOptions(num_threads=read_threads)


def _tag(k: int, index) -> tuple[int, int]:
    return k, int(index)


class DataIterator:
    """Iterates `pipeline`'s batches for the training loop: drops `source_ids` after
    counting each source's target tokens (on the whole built batch: with
    host_split='rows' the global count, with 'examples' this host's). Its state —
    grain's position plus the cumulative counts — is what a checkpoint stores, so
    a resumed run continues both."""

    def __init__(self, pipeline: SFTPipeline):
        self.pipeline = pipeline
        self._it = iter(pipeline._built())
        self.target_tokens = np.zeros((len(pipeline.components),), np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._it))
        ids = batch.pop("source_ids")
        mask = (batch["loss_mask"] > 0) & (batch["segment_ids"] > 0)
        counts = np.bincount(ids[mask], minlength=len(self.target_tokens) + 1)
        self.target_tokens += counts[1:len(self.target_tokens) + 1]
        return self.pipeline._own_rows(batch)

    def tokens_by_source(self) -> dict[str, int]:
        return {n: int(t) for n, t in zip(self.pipeline.source_names, self.target_tokens)}

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "target_tokens": self.tokens_by_source()}

    def set_state(self, state: dict[str, Any]) -> None:
        if "grain" not in state:       # a checkpoint from before the counts were kept
            self._it.set_state(state)
            return
        self._it.set_state(state["grain"])
        counts = state.get("target_tokens", {})
        self.target_tokens = np.asarray([int(counts.get(n, 0))
                                         for n in self.pipeline.source_names], np.int64)


def batch_target_tokens(batch: dict[str, np.ndarray]) -> int:
    return int(np.asarray(batch["loss_mask"]).sum())


def describe(stats: DataStats, seq_len: int, overlong: str) -> str:
    return (f"{stats.examples} examples, {stats.overlong} longer than seq_len={seq_len} "
            f"({'dropped' if overlong == 'drop' else 'truncated'}), {stats.kept} used, "
            f"{stats.target_tokens} target tokens per epoch")


def describe_sources(pipeline: SFTPipeline) -> list[str]:
    """One line per source: examples, kept, target tokens, weight, sampling probability."""
    total_w = sum(s.weight for s in pipeline.source_stats)
    return [f"{s.name} ({s.path or 'source'}): {s.examples} examples, {s.overlong} longer than "
            f"seq_len={s.seq_len} ({'dropped' if pipeline.overlong == 'drop' else 'truncated'}), "
            f"{s.kept} kept, {s.target_tokens} target tokens, weight {s.weight:g} "
            f"({s.weight / total_w:.1%} of target tokens), sampling probability "
            f"{s.probability:.4f}" for s in pipeline.source_stats]
