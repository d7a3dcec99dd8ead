"""The SFT data pipeline with the chat template compiled once per process against
compiling it for every rendered example (what `apply_chat_template(template=...)`
did before `tokenizer.compile_chat_template` was cached).

The data is `make demo`'s teacher corpus (worked arithmetic solutions, ~100 tokens an
example, built here from the demo's own stages into a temporary directory) read as
`make demo`'s students read theirs: rendered through the "chatml" template by name,
tokenized, packed into rows of 224 tokens, batches of 10 rows. Each variant builds a
fresh pipeline and times `--batches` batches after `--warmup`; variants alternate
round by round. Reports wall and process CPU milliseconds per batch and checks that
both variants produce the same batches, bit for bit.

  python benchmarks/chat_template_compile_cache.py [--rounds 3] [--batches 100] [--write]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from distill_jax import tokenizer as tokenizer_module
from distill_jax.demo import pipeline
from distill_jax.demo.config import demo_config
from distill_jax.training import run as training_run


def _time_batches(config, batches: int, warmup: int) -> tuple[float, float, str]:
    """(wall ms, CPU ms) per batch and a hash of the timed batches."""
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per run")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    cached = tokenizer_module.compile_chat_template
    variants = {"compiled once": cached, "compiled per example": cached.__wrapped__}
    demo = demo_config()
    with tempfile.TemporaryDirectory() as tmp:
        tok = pipeline._tokenizer(demo, tmp)
        data = pipeline._prepare_data(demo, tmp)["teacher_sft"]
        results = {name: [] for name in variants}
        digests = {}
        for r in range(args.rounds):
            for name, compile_fn in variants.items():
                workdir = os.path.join(tmp, f"run-{r}-{len(digests)}")
                config = pipeline._train_config(demo, workdir, data, tok, demo.student)
                config.data.cache_dir = os.path.join(tmp, "length_cache")
                tokenizer_module.compile_chat_template = compile_fn
                try:
                    wall, cpu, digest = _time_batches(config, args.batches, args.warmup)
                finally:
                    tokenizer_module.compile_chat_template = cached
                results[name].append((wall, cpu))
                digests.setdefault(name, digest)
                print(f"  {name:22s} {wall:6.1f} ms/batch wall, {cpu:6.1f} ms CPU", flush=True)
    med = {name: (statistics.median(w for w, _ in rs), statistics.median(c for _, c in rs))
           for name, rs in results.items()}
    same = len(set(digests.values())) == 1
    for name, (wall, cpu) in med.items():
        print(f"{name:22s} {wall:6.1f} ms/batch wall, {cpu:6.1f} ms CPU")
    ratio = med["compiled per example"][1] / med["compiled once"][1]
    print(f"CPU per batch, per example / once: {ratio:.2f}x; batches "
          + ("identical" if same else "DIFFER"))
    if not same:
        sys.exit("the two variants produced different batches")
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from common import append_row
        once, per = med["compiled once"], med["compiled per example"]
        append_row([f"demo SFT batches ({demo.student.batch_size} rows of {demo.seq_len}), "
                    f"median of {args.rounds} x {args.batches}",
                    f"{once[0]:.1f} ms wall, {once[1]:.1f} ms CPU",
                    f"{per[0]:.1f} ms wall, {per[1]:.1f} ms CPU",
                    f"{ratio:.2f}x CPU, {per[0] / once[0]:.2f}x wall", "batches identical"])


if __name__ == "__main__":
    main()
