"""Decontamination: drop training prompts that overlap an evaluation set.

A prompt is contaminated when it shares a word n-gram (default n=8, words are
lower-cased `\\w+` runs) with any problem of an evaluation set. Evaluation
texts shorter than n words count as a single gram of their own length, so a
short eval problem quoted verbatim is still caught. The check is on the
prompt's problem text by default (`fields=("problem",)`); add "response" to
also catch traces that quote an evaluation problem.

Any shared 8-gram is strict: on GSM8K train against the built-in sets it flags
94 of 7473 problems (1.3%), most through stock phrases ("how much money will
she have left over"). `min_overlap_fraction` (share of the text's n-grams
found in an eval set) trades recall for precision: at 0.25 the same run flags
3 problems, each a near-copy of a GSM8K test problem.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from distill_jax import storage
from distill_jax.fileio import iter_jsonl
from distill_jax.filters.sample import Sample, Verdict, accept, reject

# Built-in evaluation sets: file name in the data directory and the text field.
BUILTIN_EVAL_SETS = {
    "gsm8k_test": ("gsm8k_test.jsonl", "question"),
    "math500": ("math500_test.jsonl", "problem"),
    "aime24": ("aime24_test.jsonl", "problem"),
    "humaneval": ("humaneval.jsonl", "prompt"),
}


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class NgramIndex:
    """Word n-grams of a collection of texts, each remembered with its set name."""

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.short_lengths: set[int] = set()
        self.num_texts = 0

    def add(self, text: str, label: str) -> None:
        w = words(text)
        if not w:
            return
        self.num_texts += 1
        if len(w) < self.n:
            self.grams.setdefault(tuple(w), label)
            self.short_lengths.add(len(w))
            return
        for k in range(len(w) - self.n + 1):
            self.grams.setdefault(tuple(w[k:k + self.n]), label)

    def find(self, text: str, min_fraction: float = 0.0) -> tuple[str, str, float] | None:
        """(set name, an overlapping gram, fraction of the text's n-grams that overlap)
        when the text overlaps the index (by more than `min_fraction`), else None."""
        w = words(text)
        grams = [tuple(w[k:k + self.n]) for k in range(len(w) - self.n + 1)]
        hits = [g for g in grams if g in self.grams]
        fraction = len(hits) / len(grams) if grams else 0.0
        if hits and fraction >= min_fraction:
            return self.grams[hits[0]], " ".join(hits[0]), fraction
        for size in sorted(self.short_lengths):       # short eval texts quoted whole
            for k in range(len(w) - size + 1):
                label = self.grams.get(tuple(w[k:k + size]))
                if label is not None:
                    return label, " ".join(w[k:k + size]), 1.0
        return None


def eval_set_files(eval_sets: Sequence[str], data_dir: str) -> list[tuple[str, str, str]]:
    """(path, text field, label) of each built-in set name or `path.jsonl:field` entry
    (the path local or a bucket URL, whose own colon is not the field's)."""
    out = []
    for spec in eval_sets:
        if spec in BUILTIN_EVAL_SETS:
            filename, field = BUILTIN_EVAL_SETS[spec]
            out.append((storage.join(data_dir, filename), field, spec))
            continue
        path, _, field = spec.rpartition(":")
        if not path or not field or "/" in field:
            raise ValueError(f"unknown evaluation set {spec!r}: use one of "
                             f"{sorted(BUILTIN_EVAL_SETS)} or 'path.jsonl:field'")
        out.append((path, field, os.path.splitext(storage.basename(path))[0]))
    return out


def load_eval_index(eval_sets: Sequence[str], data_dir: str, n: int = 8) -> NgramIndex:
    """Builds the index from built-in set names and/or `path.jsonl:field` entries."""
    index = NgramIndex(n)
    for path, field, label in eval_set_files(eval_sets, data_dir):
        for text in _texts(path, field):
            index.add(text, label)
    return index


def _texts(path: str, field: str) -> Iterable[str]:
    if not storage.exists(path):
        raise FileNotFoundError(f"evaluation set {path} does not exist")
    for line_no, row in iter_jsonl(path):
        if field not in row:
            raise ValueError(f"{path}:{line_no}: missing field {field!r}")
        yield str(row[field])


class Decontaminate:
    name = "decontaminate"

    def __init__(self, index: NgramIndex, fields: Sequence[str] = ("problem",),
                 min_overlap_fraction: float = 0.0):
        self.index = index
        self.fields = tuple(fields)
        self.min_overlap_fraction = min_overlap_fraction
        # The n samples of a prompt are adjacent: remembering the last problem's result
        # saves n-1 lookups and keeps memory flat over millions of samples.
        self._last: tuple[str, tuple | None] | None = None

    def __call__(self, s: Sample) -> Verdict:
        for field in self.fields:
            text = s.problem if field == "problem" else s.response if field == "response" \
                else str(s.record.get(field, ""))
            if field == "problem" and self._last is not None and self._last[0] == text:
                hit = self._last[1]
            else:
                hit = self.index.find(text, self.min_overlap_fraction)
                if field == "problem":
                    self._last = (text, hit)
            if hit:
                return reject(self.name, f"contaminated_{hit[0]}",
                              f"{field} shares {hit[2]:.0%} of its {self.index.n}-grams with "
                              f"{hit[0]}, e.g. {hit[1]!r}")
        return accept(self.name)
