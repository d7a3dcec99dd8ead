"""Atomic file writes and JSONL reading, on any path `storage` takes (local or a
bucket URL): a file either exists whole or not at all, whatever kills the process."""
from __future__ import annotations

import json
from typing import Any, Iterator

from distill_jax import storage
from distill_jax.storage import atomic_open, write_json_atomic, write_text_atomic

__all__ = ["atomic_open", "iter_jsonl", "write_json_atomic", "write_text_atomic"]


def iter_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is an error naming
    `path:line`."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with storage.open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object")
            yield line_no, row
