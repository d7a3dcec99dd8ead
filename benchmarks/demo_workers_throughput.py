"""The demo's students two at a time in one-core processes (`demo/jobs.py`, what
`make demo` does) against one process on every core (what it did before).

Each variant trains the demo student's step (the same model and batch shape as
benchmarks/cpu_malloc_huge_pages.py, whose child this reuses) in child processes:
"one per core" starts one child per core at once, each pinned to its core before
XLA starts (so XLA computes on one thread, as in a worker); "all cores" starts one
unpinned child. Throughput is steps per second summed over the children that ran
at once. Variants alternate, round by round, so a shared machine's drifts hit
both. Reports the median per variant and the ratio.

  python benchmarks/demo_workers_throughput.py [--rounds 3] [--steps 40] [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "cpu_malloc_huge_pages.py")


def children_at_once(steps: int, cores: list[int | None],
                     overrides: dict | None = None) -> list[dict]:
    """One child per entry of `cores`, all at once; an int pins that child to it.
    `overrides`: ModelConfig fields over the demo student's (cpu_malloc_huge_pages)."""
    procs = []
    for core in cores:
        pin = (lambda c=core: os.sched_setaffinity(0, {c})) if core is not None else None
        procs.append(subprocess.Popen(
            [sys.executable, CHILD, "--child", str(steps),
             "--overrides", json.dumps(overrides or {})],
            stdout=subprocess.PIPE, text=True, preexec_fn=pin))
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"child {overrides or ''} failed with exit status {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per child")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("pins processes to cores: Linux only")
    cores = sorted(os.sched_getaffinity(0))
    variants = {"one per core": cores, "all cores": [None]}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    losses = {}
    for _ in range(args.rounds):
        for name, pins in variants.items():
            children = children_at_once(args.steps, pins)
            rates[name].append(sum(1e3 / c["ms_per_step"] for c in children))
            losses[name] = children[0]["loss"]
            each = ", ".join(f"{c['ms_per_step']:.0f}" for c in children)
            print(f"  {name:12s} {rates[name][-1]:.2f} steps/s ({each} ms/step)")
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = med["one per core"] / med["all cores"]
    # One thread or two sum a matmul in another order: the losses may differ in
    # their last bits, and only there.
    close = abs(losses["one per core"] - losses["all cores"]) < 1e-3 * abs(losses["all cores"])
    for name, rate in med.items():
        print(f"{name:12s} {rate:.2f} steps/s")
    print(f"ratio (one process per core / one process on {len(cores)} cores): {ratio:.2f}x; "
          f"losses {losses}")
    if args.write:
        sys.path.insert(0, HERE)
        from common import append_row
        append_row([f"demo student steps/s, {len(cores)} one-core processes at once vs one "
                    f"process on {len(cores)} cores, median of {args.rounds} x {args.steps} steps",
                    f"{med['one per core']:.2f} steps/s", f"{med['all cores']:.2f} steps/s",
                    f"{ratio:.2f}x", "losses agree to 1e-3" if close else "LOSSES DIFFER"])


if __name__ == "__main__":
    main()
