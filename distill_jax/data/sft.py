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

The pipeline is grain over a random-access source (`tfds.data_source` of the
curated dataset, or a JSONL file): shuffled with a seed, repeated for the
epochs, and its iterator state is a small dict that the trainer checkpoints,
so a resumed run sees exactly the batches an uninterrupted one would. With
packing, a bin may hold the end of one epoch and the start of the next.

Several hosts (`host_split`):
  * "rows" (default): every host builds the same global stream of batches and
    keeps its own rows of each (host i: rows [i*b, (i+1)*b) of the global
    batch, b = batch_size / hosts). The run is then the same on any number of
    hosts — the global batches, hence the losses, equal a one-host run's, and a
    checkpoint resumes on a different host count. The price: each host reads,
    tokenizes and packs all of the data (cheap next to training for SFT sets up
    to millions of traces).
  * "examples": host i reads only examples i::hosts and packs its own rows —
    no redundant input work, but the batches depend on the host count.

Offline KD: when the records carry the teacher's token ids and top-k
logprobs, the response is encoded as the teacher's own tokens (the assistant
prefix such as "<think>\\n", then the generated ids), so row j of the top-k
arrays lines up with the target that predicts generated token j. Prefix tokens
get no soft target (`kd_mask` = 0).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import grain
import grain.experimental
import numpy as np

from distill_jax.fileio import iter_jsonl
from distill_jax.chat import ChatFormat
from distill_jax.tokenizer import Tokenizer

PACKED_FEATURES = ("inputs", "targets", "loss_mask", "kd_mask", "topk_ids", "topk_logprobs")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_example(record: dict[str, Any], fmt: ChatFormat, topk: int = 0) -> dict[str, np.ndarray]:
    """One record -> {"ids", "loss_mask"} (and KD fields), unshifted, length n."""
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
        top_ids = np.asarray(record.get("top_k_ids", []), np.int32)
        top_lp = np.asarray(record.get("top_k_logprobs", []), np.float32)
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


# ---------------------------------------------------------------- sources


class JsonlSource:
    """Random access over a JSONL file (the curated export), read once into memory."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"training data {path} does not exist")
        self.path = path
        self.records = []
        for line_no, record in iter_jsonl(path):
            for field in ("prompt", "response"):
                if field not in record:
                    raise ValueError(f"{path}:{line_no}: missing field {field!r}")
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]


def open_source(spec: str):
    """`path.jsonl`, or a tfds data dir of the curated dataset (`.../tfds`)."""
    if spec.endswith(".jsonl"):
        return JsonlSource(spec)
    import tensorflow_datasets as tfds
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"training data {spec} is neither a .jsonl file nor a directory")
    return tfds.data_source("curated_traces", data_dir=spec, split="train")


# ---------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class DataStats:
    examples: int
    overlong: int            # examples longer than seq_len (dropped or truncated)
    kept: int
    target_tokens: int       # completion tokens of the kept examples (after truncation)


class SFTPipeline:
    """Fixed-length batches of the local host's share of the global batch."""

    def __init__(self, source, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                 num_epochs: int | None = 1, seed: int = 0, packing: bool = True,
                 overlong: str = "drop", chat_format: ChatFormat | None = None, topk: int = 0, num_packing_bins: int = 16,
                 process_index: int = 0, process_count: int = 1, host_split: str = "rows"):
        if overlong not in ("drop", "truncate"):
            raise ValueError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
        if host_split not in ("rows", "examples"):
            raise ValueError(f"host_split must be 'rows' or 'examples', got {host_split!r}")
        if batch_size % process_count:
            raise ValueError(f"global batch {batch_size} does not divide over {process_count} "
                             "hosts")
        if len(source) == 0:
            raise ValueError("the training dataset is empty")
        self.source, self.seq_len, self.topk = source, seq_len, topk
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
        self.stats = self._scan()
        if self.stats.kept == 0:
            raise ValueError(f"all {self.stats.examples} examples are longer than seq_len="
                             f"{seq_len} tokens (overlong={overlong!r}); raise seq_len")

    def _example(self, record) -> dict[str, np.ndarray]:
        return shift_example(encode_example(record, self.fmt, self.topk))

    def _scan(self) -> DataStats:
        overlong = tokens = kept = 0
        for k in range(len(self.source)):
            ex = self._example(self.source[k])
            n = len(ex["inputs"])
            if n > self.seq_len:
                overlong += 1
                if self.overlong == "drop":
                    continue
                tokens += int(ex["loss_mask"][:self.seq_len].sum())
            else:
                tokens += int(ex["loss_mask"].sum())
            kept += 1
        return DataStats(len(self.source), overlong, kept, tokens)

    def _fit(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        if len(ex["inputs"]) <= self.seq_len:
            return ex
        if self.overlong == "drop":
            return None
        return {k: v[:self.seq_len] for k, v in ex.items()}

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

    def dataset(self) -> grain.IterDataset:
        ds = grain.MapDataset.source(self.source)
        if self.host_split == "examples":
            ds = ds[self.process_index::self.process_count]
        ds = ds.seed(self.seed).shuffle().repeat(self.num_epochs)   # None: forever
        ds = ds.map(self._example).filter(lambda ex: self._fit(ex) is not None).map(self._fit)
        if not self.packing:
            return self._own_rows(
                ds.map(self._pad).to_iter_dataset().batch(self._built_batch, drop_remainder=True))
        it = ds.to_iter_dataset()
        features = [f for f in PACKED_FEATURES if f in ("inputs", "targets", "loss_mask")
                    or self.topk]
        packed = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={f: self.seq_len for f in features},
            num_packing_bins=self.num_packing_bins, seed=self.seed, shuffle_bins=False)
        return self._own_rows(
            packed.map(self._from_packed).batch(self._built_batch, drop_remainder=True))

    def _own_rows(self, batches: grain.IterDataset) -> grain.IterDataset:
        if self._built_batch == self.local_batch:
            return batches
        lo, hi = self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch
        return batches.map(lambda b: {k: v[lo:hi] for k, v in b.items()})

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
        """Local batches in the whole run (all epochs): one pass without the model."""
        if self.num_epochs is None:
            raise ValueError("an endless pipeline (num_epochs=None) has no batch count")
        return sum(1 for _ in self.dataset())


def batch_target_tokens(batch: dict[str, np.ndarray]) -> int:
    return int(np.asarray(batch["loss_mask"]).sum())


def describe(stats: DataStats, seq_len: int, overlong: str) -> str:
    return (f"{stats.examples} examples, {stats.overlong} longer than seq_len={seq_len} "
            f"({'dropped' if overlong == 'drop' else 'truncated'}), {stats.kept} used, "
            f"{stats.target_tokens} target tokens per epoch")
