"""CPU training step with and without huge pages for malloc'd memory (the Makefile's
GLIBC_TUNABLES=glibc.malloc.hugetlb=1).

XLA's CPU backend allocates a step's temporaries afresh on every call (180 MiB for
the demo student's step); glibc serves allocations that large with mmap and unmaps
them on free, so every step faults them back in, 4 KiB at a time, and the kernel
zeroes each page. With `glibc.malloc.hugetlb=1` glibc asks for transparent huge pages
on those mappings and the faults come 2 MiB at a time. A third variant keeps the
memory instead: no mmap for any size, nothing trimmed back to the kernel and one
arena (`glibc.malloc.mmap_max=0:trim_threshold=2**40:arena_max=1`), so a step reuses
the last step's pages with no fault and no zeroing; it shows whether the kernel's
zeroing is worth removing (the system time per step is reported with the user time).

The tunable is read when a process starts, so each variant runs in its own child
process; the children alternate (plain, huge pages, reused heap, plain, ...) so that a shared
machine's drifts hit all of them. Each child times `--steps` steps of the demo student
(128 wide x 4 layers, vocab 512, 10 packed rows of 224 tokens, Adam) and counts its
page faults, user and system time per step. Reports the median per variant and its
ratio to plain.

  python benchmarks/cpu_malloc_huge_pages.py [--rounds 3] [--steps 40] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TUNABLE = "glibc.malloc.hugetlb=1"
# GLIBC_TUNABLES per variant (None: unset); "plain" is the reference.
VARIANTS = {"plain": None, "huge pages": TUNABLE,
            "reused heap": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:"
                           "glibc.malloc.arena_max=1"}


def _child(steps: int, overrides: dict | None = None) -> dict:
    """Times `steps` steps of the demo student; `overrides`: ModelConfig fields that
    replace the student's (benchmarks/demo_step_variants.py: scan unroll, remat)."""
    import jax
    import ml_collections
    import numpy as np

    from distill_jax import models
    from distill_jax.demo import pipeline
    from distill_jax.demo.config import demo_config
    from distill_jax.training.optimizer import make_optimizer
    from distill_jax.training.trainer import Trainer

    # `make demo`'s student, built from its config as the pipeline builds it (the vocab
    # is its tokenizer's), and a batch of its shape: packed rows of ~100-token examples.
    demo = demo_config()
    cfg = models.get_config(demo.student.preset).replace(
        vocab_size=demo.tokenizer_vocab_size, **pipeline._model_overrides(demo.student))
    cfg = cfg.replace(**(overrides or {}))
    rows, length = demo.student.batch_size, demo.seq_len
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (rows, length + 1)).astype(np.int32)
    lengths = (100, 100, length - 200)                 # ~2-3 examples share a row
    segments = np.concatenate([np.full(n, s + 1) for s, n in enumerate(lengths)])
    positions = np.concatenate([np.arange(n) for n in lengths])
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "loss_mask": np.ones((rows, length), np.int32),
             "segment_ids": np.tile(segments, (rows, 1)).astype(np.int32),
             "positions": np.tile(positions, (rows, 1)).astype(np.int32)}
    opt = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=0, final_lr_fraction=1.0,
                                         weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                                         max_grad_norm=1.0))
    tx, schedule = make_optimizer(opt, 1000)
    trainer = Trainer(cfg, tx, schedule)
    state = trainer.init_state(models.init_params(cfg, jax.random.key(0)))
    for _ in range(3):                                 # compile, warm up
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    seconds = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"ms_per_step": seconds * 1e3,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "user_ms": (after.ru_utime - before.ru_utime) * 1e3 / steps,
            "sys_ms": (after.ru_stime - before.ru_stime) * 1e3 / steps,
            "loss": float(metrics["loss"])}


def _run_child(steps: int, tunables: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(steps)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="child processes per variant")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per child")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, json.loads(args.overrides))))
        return
    try:      # Linux only; elsewhere the tunable is a no-op and both variants are plain
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read().split("[")[1].split("]")[0]
    except OSError:
        thp = "absent"
    print(f"transparent huge pages: {thp}")
    runs = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, tunables in VARIANTS.items():
            runs[name].append(_run_child(args.steps, tunables))
            print(f"  {name:11s} {runs[name][-1]}")
    keys = ("ms_per_step", "faults_per_step", "user_ms", "sys_ms")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys}
           for name, rs in runs.items()}
    for name, m in med.items():
        # The same program on the same data: the allocator must not change a number.
        same = runs[name][0]["loss"] == runs["plain"][0]["loss"]
        m.update(ratio=med["plain"]["ms_per_step"] / m["ms_per_step"], same=same)
        print(f"{name:11s} {m['ms_per_step']:7.1f} ms/step ({m['user_ms']:.0f} user, "
              f"{m['sys_ms']:.0f} system), {m['faults_per_step']:8.0f} page faults/step; "
              f"{m['ratio']:.2f}x plain; loss {'equal' if same else 'DIFFERS'}")
    if args.write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from common import append_row

        def cell(m):
            return (f"{m['ms_per_step']:.1f} ms ({m['user_ms']:.0f} user + {m['sys_ms']:.0f} "
                    f"system), {m['faults_per_step']:,.0f} faults")
        for name in list(VARIANTS)[1:]:
            append_row([f"demo student train step (0.9M, 10 x 224 packed), {name} vs plain, "
                        f"THP {thp}, median of {args.rounds} processes x {args.steps} steps",
                        cell(med[name]), cell(med["plain"]), f"{med[name]['ratio']:.2f}x",
                        "losses equal" if med[name]["same"] else "LOSSES DIFFER"])


if __name__ == "__main__":
    main()
