"""What every filter sees: one teacher sample, split into reasoning and answer,
and the verdict a filter returns."""
from __future__ import annotations

import dataclasses
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REQUIRED_FIELDS = ("prompt_id", "sample_index", "text", "finish_reason")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """`reason` is a short code (`missing_think_close`), `detail` says why in words."""
    accepted: bool
    filter: str
    reason: str = ""
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.filter}:{self.reason}" if self.reason else self.filter


def accept(name: str) -> Verdict:
    return Verdict(True, name)


def reject(name: str, reason: str, detail: str = "") -> Verdict:
    return Verdict(False, name, reason, detail)


@dataclasses.dataclass
class Sample:
    """A generated record plus the views filters need.

    `response` is the whole assistant turn: the generation prompt usually opens
    it with `<think>\\n` (the R1 recipe), so that prefix is put back in front of
    the generated text. `reasoning` is the text inside <think>...</think> and
    `answer` the text after it (None / the whole response when malformed).
    """
    record: dict[str, Any]
    where: str                       # "file:line" of the record
    response: str
    reasoning: str | None
    answer: str

    @property
    def prompt_id(self) -> str:
        return str(self.record["prompt_id"])

    @property
    def sample_index(self) -> int:
        return int(self.record["sample_index"])

    @property
    def kind(self) -> str:
        return self.record.get("kind", "math")

    @property
    def problem(self) -> str:
        return self.record.get("problem", "")

    @property
    def reference(self) -> dict[str, Any]:
        return self.record.get("reference") or {}

    @property
    def num_tokens(self) -> int:
        n = self.record.get("num_tokens")
        return int(n) if n is not None else len(self.record["text"].split())


def assistant_prefix(record: dict[str, Any]) -> str:
    """The part of the assistant turn that was in the prompt (e.g. "<think>\\n")."""
    if "assistant_prefix" in record:
        return record["assistant_prefix"] or ""
    prompt, text = record.get("prompt", ""), record["text"]
    if THINK_OPEN in prompt and THINK_OPEN not in text.lstrip()[:len(THINK_OPEN)]:
        tail = prompt[prompt.rindex(THINK_OPEN):]
        if THINK_CLOSE not in tail:
            return tail
    return ""


def make_sample(record: dict[str, Any], where: str) -> Sample:
    """Builds a Sample; raises KeyError/TypeError naming a missing or bad field."""
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise KeyError(f"missing field {name!r}")
    if not isinstance(record["text"], str):
        raise TypeError(f"field 'text' is {type(record['text']).__name__}, not a string")
    if not isinstance(record["sample_index"], int) or isinstance(record["sample_index"], bool):
        raise TypeError(f"field 'sample_index' is {record['sample_index']!r}, not an integer")
    if not isinstance(record["prompt_id"], (str, int)):
        raise TypeError(f"field 'prompt_id' is {record['prompt_id']!r}, not a string")
    response = assistant_prefix(record) + record["text"]
    if THINK_CLOSE in response:
        before, after = response.rsplit(THINK_CLOSE, 1)
        start = before.find(THINK_OPEN)
        reasoning = before[start + len(THINK_OPEN):] if start >= 0 else before
        return Sample(record, where, response, reasoning, after)
    return Sample(record, where, response, None, response)
