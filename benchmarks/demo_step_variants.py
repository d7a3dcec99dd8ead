"""The demo student's training step under other compilations of the same model:
the layer scan unrolled, rematerialization, another attention kernel.

The demo's step runs at a quarter of its own GEMMs' rate on one core (README,
"Time": a profile puts ~19% of XLA's op time in stacking each scanned layer's
activations for the backward pass and reading them back); these variants change
how XLA lays the step out, not the model. Each variant runs as the study runs its
students: one child process per core at once, each pinned to its core before XLA
starts (one thread), the same variant on every core, so the cores contend for
memory as they do in `make study`. Variants alternate, round by round, so a shared
machine's drifts hit all of them. Reports per variant the median of the summed
steps per second, its ratio to the baseline (the demo's own settings), and whether
the loss after the timed steps is the same float as the baseline's: a variant that
changes it trains other bits (the same model, other rounding).

  python benchmarks/demo_step_variants.py [--rounds 3] [--steps 40] [--variants a,b] [--write]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from demo_workers_throughput import children_at_once  # noqa: E402

# name -> ModelConfig fields over the demo student's (4 layers: unroll 4 is all of them)
VARIANTS = {
    "demo": {},                                   # scanned layers, no remat, auto attention
    "unrolled": {"scan_unroll": 4},
    "dots": {"remat_policy": "dots"},
    "unrolled+dots": {"scan_unroll": 4, "remat_policy": "dots"},
    "unrolled+dots_nb": {"scan_unroll": 4, "remat_policy": "dots_with_no_batch_dims"},
    "unrolled+qkv": {"scan_unroll": 4, "remat_policy": "save_qkv_proj"},
    "unrolled+full": {"scan_unroll": 4, "remat_policy": "full"},
    "unrolled+xla": {"scan_unroll": 4, "attention_impl": "xla"},
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per child")
    # By default the reference and the two that carried the result (BENCHMARKS.md): all
    # eight take ~4x as long, for `make bench`'s run too.
    parser.add_argument("--variants", default="demo,unrolled,unrolled+dots_nb",
                        help="comma-separated names from VARIANTS (the first is the reference); "
                             f"all: {','.join(VARIANTS)}")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("pins processes to cores: Linux only")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    cores = sorted(os.sched_getaffinity(0))
    rates: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, float] = {}
    for r in range(args.rounds):
        for name in names:
            children = children_at_once(args.steps, cores, VARIANTS[name])
            rates[name].append(sum(1e3 / c["ms_per_step"] for c in children))
            losses[name] = children[0]["loss"]
            each = ", ".join(f"{c['ms_per_step']:.0f}" for c in children)
            print(f"  round {r + 1} {name:14s} {rates[name][-1]:.2f} steps/s ({each} ms/step)",
                  flush=True)
    ref = names[0]
    med = {n: statistics.median(v) for n, v in rates.items()}
    rows = []
    for name in names:
        ratio = med[name] / med[ref]
        same = losses[name] == losses[ref]
        print(f"{name:14s} {med[name]:.2f} steps/s on {len(cores)} cores, {ratio:.2f}x; "
              f"loss {losses[name]:.6f} ({'same bits' if same else 'other bits'})")
        rows.append((name, ratio, same))
    if args.write:
        from common import append_row
        for name, ratio, same in rows[1:]:
            append_row([f"demo student step, {name} vs {ref} ({len(cores)} one-core processes "
                        f"at once, median of {args.rounds} x {args.steps} steps)",
                        f"{med[name]:.2f} steps/s", f"{med[ref]:.2f} steps/s", f"{ratio:.2f}x",
                        "same loss bits" if same else "other loss bits"])


if __name__ == "__main__":
    main()
