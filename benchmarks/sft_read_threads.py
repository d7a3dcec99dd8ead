"""The SFT data pipeline reading examples inline (`data.read_threads=0`, what -1
picks on a process that may use at most 2 cores) against grain's default of 16 read
threads 500 examples ahead (what it picks on more cores).

The data is `make demo`'s teacher corpus read as `make demo`'s students read theirs
(`common.time_demo_batches`: rendered through "chatml", tokenized, packed into rows
of 224 tokens, batches of 10 rows). `--cores N` pins this process to N cores first
(1: a demo worker). Each variant builds a fresh pipeline and times `--batches`
batches after `--warmup`; variants alternate round by round. Reports wall and process
CPU milliseconds per batch and checks that both give the same batches.

  python benchmarks/sft_read_threads.py [--cores 1] [--rounds 3] [--batches 200] [--write]
"""
from __future__ import annotations

import argparse
import os

from common import report_demo_batches, time_demo_batches

from distill_jax.demo.config import demo_config
from distill_jax.host import available_cores


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument("--batches", type=int, default=200, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per run")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    if args.cores:           # before any computation: XLA sizes its threads to the cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])

    def threads(n):
        def set_up(config):
            config.data.read_threads = n
        return set_up
    med, same = time_demo_batches({"inline": threads(0), "16 read threads": threads(16)},
                                  args.rounds, args.batches, args.warmup)
    demo = demo_config()
    report_demo_batches(med, same, "inline", "16 read threads",
                        f"demo SFT batches ({demo.student.batch_size} rows of {demo.seq_len}) on "
                        f"{available_cores()} core(s), median of {args.rounds} x {args.batches}",
                        args.write)

if __name__ == "__main__":
    main()
