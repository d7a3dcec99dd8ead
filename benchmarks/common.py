"""Shared by the benchmark scripts: the benchmark model and result recording."""
from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import numpy as np
import torch

from distill_jax import models


def bench_model_config(large: bool = False) -> models.ModelConfig:
    """Llama-3-style benchmark models. Small: 26M params; large: ~50M (issue 3's decode setup)."""
    base = models.get_config("tiny-llama")
    if large:
        return base.replace(vocab_size=32000, hidden_size=512, intermediate_size=1024,
                            num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                            max_position_embeddings=4096, name="bench-llama-52m")
    return base.replace(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=6,
                        num_heads=8, num_kv_heads=4, head_dim=64, max_position_embeddings=4096,
                        name="bench-llama-26m")


def machine() -> str:
    return (f"{platform.machine()} CPU x{os.cpu_count()}, jax {jax.__version__}, "
            f"torch {torch.__version__}")


def append_row(cells: list[str]) -> None:
    """Appends one table row (plus the machine and date) to BENCHMARKS.md."""
    row = "| " + " | ".join(cells + [machine(), str(datetime.date.today())]) + " |"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "BENCHMARKS.md")
    with open(path, "a") as f:
        f.write(row + "\n")
    print(f"appended to {os.path.normpath(path)}")


def interleaved(steps: dict, rounds: int, warmups: int = 2) -> dict:
    """Median seconds per step of each named step function, timed in rounds that run
    every function once, so the slow drifts of a shared machine hit all of them alike
    (a block of ours followed by a block of theirs moved the ratio by +-20%)."""
    for step in steps.values():   # compile / warm up
        for _ in range(warmups):
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
