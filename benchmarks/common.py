"""Shared by the benchmark scripts: the benchmark model and result recording."""
from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import numpy as np

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
    import torch        # here: the benchmarks without a torch reference run without it
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


def time_demo_batches(variants: dict, rounds: int, batches: int, warmup: int
                      ) -> tuple[dict, bool]:
    """`make demo`'s student data pipeline (its teacher corpus of worked solutions,
    built from the demo's own stages into a temporary directory, rendered through
    "chatml", tokenized, packed into rows of 224 tokens, batches of 10 rows) under
    each of `variants`, {name: set_up(config) -> undo or None}, alternating round by
    round, each round a fresh pipeline timed over `batches` after `warmup`.
    Returns ({name: (median wall ms, median CPU ms) per batch}, whether every
    variant gave the same batches, bit for bit)."""
    import hashlib
    import statistics
    import tempfile

    from distill_jax.demo import pipeline
    from distill_jax.demo.config import demo_config
    from distill_jax.training import run as training_run

    def one_run(config):
        run = training_run.prepare(config)
        state, data, _ = training_run.resume_or_init(run)
        for step in range(warmup):
            data.next(step, state)
        digest = hashlib.sha256()
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(warmup, warmup + batches):
            batch = data.next(step, state)[0]
            for key in sorted(batch):
                digest.update(np.ascontiguousarray(batch[key]).tobytes())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall / batches * 1e3, cpu / batches * 1e3, digest.hexdigest()

    demo = demo_config()
    times = {name: [] for name in variants}
    digests = set()
    with tempfile.TemporaryDirectory() as tmp:
        tok = pipeline._tokenizer(demo, tmp)
        data = pipeline._prepare_data(demo, tmp)["teacher_sft"]
        for r in range(rounds):
            for k, (name, set_up) in enumerate(variants.items()):
                config = pipeline._train_config(demo, os.path.join(tmp, f"run-{r}-{k}"),
                                                data, tok, demo.student)
                config.data.cache_dir = os.path.join(tmp, "length_cache")
                undo = set_up(config)
                try:
                    wall, cpu, digest = one_run(config)
                finally:
                    if undo is not None:
                        undo()
                times[name].append((wall, cpu))
                digests.add(digest)
                print(f"  {name:22s} {wall:6.1f} ms/batch wall, {cpu:6.1f} ms CPU", flush=True)
    medians = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
               for name, ts in times.items()}
    return medians, len(digests) == 1


def report_demo_batches(medians: dict, same: bool, base: str, other: str, what: str,
                        write: bool) -> None:
    """Prints `time_demo_batches`' medians and the CPU ratio `other` / `base`; stops if
    the variants' batches differ; with `write`, appends the row (`what` names it)."""
    import sys
    for name, (wall, cpu) in medians.items():
        print(f"{name:22s} {wall:6.1f} ms/batch wall, {cpu:6.1f} ms CPU")
    (b_wall, b_cpu), (o_wall, o_cpu) = medians[base], medians[other]
    print(f"CPU per batch, {other} / {base}: {o_cpu / b_cpu:.2f}x; batches "
          + ("identical" if same else "DIFFER"))
    if not same:
        sys.exit("the two variants produced different batches")
    if write:
        append_row([what, f"{b_wall:.1f} ms wall, {b_cpu:.1f} ms CPU",
                    f"{o_wall:.1f} ms wall, {o_cpu:.1f} ms CPU",
                    f"{o_cpu / b_cpu:.2f}x CPU, {o_wall / b_wall:.2f}x wall",
                    "batches identical"])
