"""What the sampler hands back: one `SampleOutput` per sample, and the host-side
cut at stop strings."""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass
class SampleOutput:
    """One sample: generated ids (including the stop token, if any), the raw model
    log-probability of each, and why it ended ("stop" | "length")."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    top_k_ids: list[list[int]] | None = None
    top_k_logprobs: list[list[float]] | None = None
    text: str | None = None


def apply_stop_strings(sample: SampleOutput, stop_strings: Sequence[str], tokenizer
                       ) -> SampleOutput:
    """Decodes text (with a tokenizer) and cuts at the first stop string, keeping it.

    Stop strings are matched on the host after decoding, so they shorten the
    output but do not end device-side generation early.
    """
    if tokenizer is None:
        if stop_strings:
            raise ValueError("stop_strings need a Sampler with a tokenizer")
        return sample
    sample.text = tokenizer.decode(sample.token_ids)
    if not stop_strings:
        return sample
    if not any(s in sample.text for s in stop_strings):
        return sample
    # Smallest token prefix whose text contains a stop string (monotone: bisect).
    def contains(count):
        text = tokenizer.decode(sample.token_ids[:count])
        return any(s in text for s in stop_strings)
    lo, hi = 1, len(sample.token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if contains(mid):
            hi = mid
        else:
            lo = mid + 1
    text = tokenizer.decode(sample.token_ids[:lo])
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return dataclasses.replace(
        sample, token_ids=sample.token_ids[:lo], logprobs=sample.logprobs[:lo],
        top_k_ids=None if sample.top_k_ids is None else sample.top_k_ids[:lo],
        top_k_logprobs=None if sample.top_k_logprobs is None else sample.top_k_logprobs[:lo],
        finish_reason="stop", text=text[:min(ends)])
