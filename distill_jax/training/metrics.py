"""Training metrics a person can plot: `metrics.jsonl` (one object per logged
step) and TensorBoard event files in the same work directory. Only process 0
writes. On resume, JSONL lines past the restored step (logged by the killed run
after its last checkpoint) are dropped, so the file reads as one clean run."""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from distill_jax.fileio import write_text_atomic


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                keep = [line for line in f if line.strip()
                        and json.loads(line).get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(keep))
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, int(step))

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
