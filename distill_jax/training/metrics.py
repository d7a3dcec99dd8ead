"""Training metrics a person can plot: `metrics.jsonl` (one object per logged
step) and TensorBoard event files in the same work directory. Only process 0
writes. On resume, JSONL lines past the restored step (logged by the killed run
after its last checkpoint) are dropped, so the file reads as one clean run.

A local work directory is appended to line by line, as it always was. A bucket has
no append: there the lines are kept in memory and the whole object is rewritten at
each `flush()` (the training loop flushes after every checkpoint save), at most
every `flush_every_s` seconds between them, and at `close()`; a kill loses at most
the rows since the last flush, which a resume drops anyway when they lie past its
checkpoint. TensorBoard (tensorboardX writes local files only) then writes to a
local directory whose event files are uploaded whole at each flush.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

import jax

from distill_jax import storage
from distill_jax.fileio import write_text_atomic

FLUSH_EVERY_S = 60.0


def _kept_lines(path: str, resume_step: int) -> list[str]:
    """The lines of an earlier run's log up to `resume_step`."""
    if not storage.exists(path):
        return []
    text = storage.read_text(path)
    return [line + "\n" for line in text.splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= resume_step]


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True,
                 flush_every_s: float = FLUSH_EVERY_S):
        self.active = jax.process_index() == 0
        self.path = storage.join(workdir, "metrics.jsonl")
        self.remote = not storage.is_local(workdir)
        self._tb = self._tb_local = None
        self._tb_remote = storage.join(workdir, "tensorboard")
        self.flush_every_s, self._flushed_at = flush_every_s, time.monotonic()
        if not self.active:
            return
        storage.makedirs(workdir)
        self._lines = _kept_lines(self.path, resume_step)
        if storage.exists(self.path):
            write_text_atomic(self.path, "".join(self._lines))
        if not self.remote:
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb_local = tempfile.mkdtemp(prefix="distill_jax-tb-") if self.remote \
                else self._tb_remote
            self._tb = SummaryWriter(self._tb_local)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(row) + "\n"
        if self.remote:
            self._lines.append(line)
        else:
            self._file.write(line)
            self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, int(step))
        if self.remote and time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """On a bucket: the whole log and the event files, uploaded now."""
        if not (self.active and self.remote):
            return
        if self._tb is not None:
            self._tb.flush()
        self._upload()

    def _upload(self) -> None:
        write_text_atomic(self.path, "".join(self._lines))
        if self._tb_local:
            for name in storage.walk_files(self._tb_local):
                storage.upload_file(os.path.join(self._tb_local, name),
                                    storage.join(self._tb_remote, name))
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if not self.active:
            return
        if self._tb is not None:
            self._tb.close()
        if not self.remote:
            self._file.close()
            return
        self._upload()
        if self._tb_local:
            shutil.rmtree(self._tb_local, ignore_errors=True)
