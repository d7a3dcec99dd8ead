"""Do the demo's main-process stages leave CPU that its other jobs could use?

`make demo` trains the teacher and samples from it in the main process (XLA on
both cores' threads): alone, on the 2-core VM, the teacher keeps ~1.83 cores busy
and sampling ~1.42 (`/proc/stat`, README "The study at this config"). Jobs that
do not need the teacher (the answer-only student, the base) can run meanwhile in
one-core workers at the lowest CPU priority (SCHED_IDLE: they get a core only when
nothing else wants it). This benchmark measured what that would buy; the pipeline
has run them so since (demo/jobs.py; end to end, README "Time"). It measures the
mechanism on its own, on a fixed slice of the stages:

  * the main-process stage alone: `--teacher_steps` steps of the demo's teacher
    (its config and data) and sampling `--prompts` of the demo's training prompts
    (its sampling settings), each timed, after an untimed pass that compiles them
    (so neither timed pass pays for compiling: the pipeline's pays once);
  * the same stage while one SCHED_IDLE worker per core, pinned to it, trains the
    demo's answer-only student: the stage's slowdown, and the workers' steps
    during it (read from their metrics.jsonl, so to 5 steps), in one-core
    seconds of that student (its steps/s alone, measured after the stages on
    the same workers).

The estimate for a pipeline that ran them this way: the work done in the stages'
shadow shortens the two-worker phase after them by half its one-core seconds,
and the stages' slowdown lengthens the run: net = harvested / 2 - slowdown.

Needs a finished `make demo` output (its tokenizer, teacher, data):
  python benchmarks/demo_idle_cores.py [--demo_dir artifacts/demo_pipeline]
         [--teacher_steps 150] [--prompts 1000] [--write]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _harvester(core: int, workdir: str, demo_dir: str) -> None:
    """A worker: pinned to `core` and at SCHED_IDLE before XLA starts, it trains the
    answer-only student until it is killed (metrics.jsonl every 5 steps)."""
    os.sched_setaffinity(0, {core})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from distill_jax.demo import pipeline
    from distill_jax.demo.config import demo_config
    config = demo_config()
    student = copy.deepcopy(config.student)
    student.num_steps = 100_000
    pipeline._train_model(config, workdir, os.path.join(demo_dir, "data", "answer_only.jsonl"),
                          os.path.join(demo_dir, "tokenizer.model"), student)


def _step(workdir: str) -> int:
    """The harvester's latest logged step (0 before its first log line)."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def _stages(demo_dir: str, root: str, tag: str, teacher_steps: int, prompts: str) -> dict:
    """The two main-process stages, as the pipeline runs them, each timed."""
    from distill_jax.demo import pipeline
    from distill_jax.demo.config import demo_config
    config = demo_config()
    teacher = copy.deepcopy(config.teacher)
    teacher.num_steps = teacher_steps
    tokenizer = os.path.join(demo_dir, "tokenizer.model")
    seconds = {}
    start = time.monotonic()
    pipeline._train_model(config, os.path.join(root, f"teacher-{tag}"),
                          os.path.join(demo_dir, "data", "teacher_sft.jsonl"), tokenizer, teacher)
    seconds["teacher"] = time.monotonic() - start
    start = time.monotonic()
    pipeline._generate(config, os.path.join(root, f"generate-{tag}"),
                       os.path.join(demo_dir, "teacher", "export"), tokenizer, prompts)
    seconds["generate"] = time.monotonic() - start
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo_dir", default="artifacts/demo_pipeline",
                        help="a finished `make demo` output directory")
    parser.add_argument("--teacher_steps", type=int, default=150)
    parser.add_argument("--prompts", type=int, default=1000, help="training prompts sampled")
    parser.add_argument("--alone_s", type=float, default=30.0,
                        help="seconds the workers run alone, for their one-core rate")
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    parser.add_argument("--harvest", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.harvest:
        _harvester(int(args.harvest[0]), args.harvest[1], args.harvest[2])
        return
    if not hasattr(os, "sched_setscheduler"):
        sys.exit("pins processes and sets SCHED_IDLE: Linux only")
    demo_dir = os.path.abspath(args.demo_dir)
    for need in ("tokenizer.model", "teacher/export", "data/teacher_sft.jsonl",
                 "data/answer_only.jsonl", "data/train_prompts.jsonl"):
        if not os.path.exists(os.path.join(demo_dir, need)):
            sys.exit(f"--demo_dir {demo_dir}: no {need}; run `make demo` first")
    root = tempfile.mkdtemp(prefix="demo_idle_cores-")
    prompts = os.path.join(root, "prompts.jsonl")
    with open(os.path.join(demo_dir, "data", "train_prompts.jsonl")) as f, open(prompts, "w") as g:
        g.writelines(line for _, line in zip(range(args.prompts), f))

    # A first pass compiles: the timed ones below reuse this process's compiled steps.
    _stages(demo_dir, root, "warmup", args.teacher_steps, prompts)
    alone = _stages(demo_dir, root, "alone", args.teacher_steps, prompts)
    cores = sorted(os.sched_getaffinity(0))
    workdirs = [os.path.join(root, f"worker-{c}") for c in cores]
    workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--harvest", str(c),
                                 w, demo_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for c, w in zip(cores, workdirs)]
    try:
        while min(_step(w) for w in workdirs) < 10:      # past their compiles
            if any(p.poll() is not None for p in workers):
                sys.exit("a worker died; run one by hand: --harvest CORE DIR DEMO_DIR")
            time.sleep(0.5)
        before = [_step(w) for w in workdirs]
        shared = _stages(demo_dir, root, "shared", args.teacher_steps, prompts)
        during = [_step(w) - b for w, b in zip(workdirs, before)]
        start, first = time.monotonic(), [_step(w) for w in workdirs]
        time.sleep(args.alone_s)
        rate = [(_step(w) - s) / (time.monotonic() - start) for w, s in zip(workdirs, first)]
    finally:
        for p in workers:
            p.kill()
            p.wait()
    stages = sum(alone.values())
    slowdown = sum(shared.values()) - stages
    harvested = sum(steps / r for steps, r in zip(during, rate))
    net = harvested / 2 - slowdown
    for name in alone:
        print(f"{name:9s} alone {alone[name]:6.1f} s, beside the workers {shared[name]:6.1f} s")
    print(f"workers: {during} steps during the stages, {[round(r, 2) for r in rate]} steps/s "
          f"alone on one core: {harvested:.1f} one-core seconds of student work")
    print(f"net for a two-worker pipeline: {harvested:.1f} / 2 - {slowdown:.1f} = {net:+.1f} s "
          f"on {stages:.1f} s of main-process stages")
    if args.write:
        sys.path.insert(0, HERE)
        from common import append_row
        append_row([f"demo main-process stages (teacher {args.teacher_steps} steps, sampling "
                    f"{args.prompts} prompts) beside {len(cores)} SCHED_IDLE one-core workers",
                    f"{sum(shared.values()):.1f} s, {harvested:.1f} core-s harvested",
                    f"{stages:.1f} s alone", f"net {net:+.1f} s", f"{slowdown:+.1f} s"])


if __name__ == "__main__":
    main()
