"""The demo pipeline's independent jobs (the students, the base, the evaluations),
run side by side in worker processes, each pinned to one core.

Why processes: the demo's models are 128 wide, and XLA's CPU backend spends a
step of one of them mostly on per-op overhead rather than on the matmuls (README,
"Time"), so a second thread speeds a step up by far less than 2x. Two one-core
processes training two students side by side give more throughput than one process
training them one after another on both cores (README, "Time").

Why one core each: XLA's CPU client sizes its thread pool to the cores the process
may run on when it starts, so a worker pinned to one core (before it computes
anything) computes on one thread. Its floating-point sums then do not depend on
how many cores the machine has or how many workers run, so the students and their
evaluations are the same whether `workers` is 2 or 16 (on one CPU type; another
ISA rounds differently, README "Float rounding"). (XLA_FLAGS'
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1` do not do it:
a 1024x1024 matmul chain still ran on two threads with them, measured.)

The workers share a persistent XLA compilation cache (`compile_cache`): the demo's
students of one shape run one training program and its evaluations one sampler (the
teacher and the students have the same shape), so the first worker to compile a
program saves it and the others load it (~7 s a compile for an evaluation on one
core, measured). A loaded executable is the binary the first compile produced, so
the results are the same bits (checked: `make demo` with the cache gave every
evaluation's samples and every student's metrics as without it). The cache lives
under a directory per core count, so a program compiled in a one-core worker is
never served to a process with more threads (whether XLA's CPU compiler plans work
by thread count was not checked: this rules it out).

A job whose output is already complete (a rerun, a resumed run) only reads it, so
it runs in this process without starting a worker. Jobs start in order of the
longest chain of work they head (`Job.cost` plus their dependents'), so a long
student does not start last. Each job's output goes to its own log file; this
process prints when a job starts and ends and, while jobs run, their latest
progress line (steps/s, ETA) every `poll_s` seconds.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable

from distill_jax.host import available_cores


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of the pipeline's work. `fn(*args)` must be a module-level function
    (a worker imports it); `after`: jobs that must finish first; `cost`: a relative
    estimate of its run time (only the order of jobs depends on it); `done`: its
    output is complete, so running it only reads it."""
    name: str
    fn: Callable[..., Any]
    args: tuple
    log: str
    after: tuple[str, ...] = ()
    cost: float = 1.0
    done: bool = False


def resolve_workers(workers: int, jobs: int, platform: str = "cpu") -> int:
    """`workers` from a config: -1 one per core this process may use; never more
    than there are jobs; 0 (run every job in this process) stays 0. Workers are a
    CPU strategy: on an accelerator (`platform`, jax's default backend) the jobs run
    in this process, which holds the device (a TPU opens in one process only)."""
    if workers < -1:
        raise ValueError(f"config.workers: {workers}; use -1 (one per core), 0 (no worker "
                         "processes) or a number of worker processes")
    if platform != "cpu":
        if workers > 0:
            raise ValueError(f"config.workers: {workers} worker processes, but this run "
                             f"computes on {platform}: workers are one-core CPU processes, "
                             "and this process holds the device; use 0 or -1 (both run the "
                             "jobs here)")
        return 0
    if workers == 0:
        return 0
    return max(1, min(available_cores() if workers == -1 else workers, jobs))


def run_jobs(jobs: list[Job], workers: int, poll_s: float = 30.0,
             echo: Callable[[str], None] | None = None, compile_cache: str | None = None,
             on_finish: Callable[[str, float], None] | None = None
             ) -> tuple[dict[str, Any], dict[str, float]]:
    """Runs `jobs` respecting `after`; returns ({name: fn's result}, {name: seconds}),
    the seconds for the jobs it ran (a `done` job only reads its output: it has no
    time here). `on_finish(name, seconds)` is called as each job it ran finishes, so
    a caller can keep the time even if a later job fails.

    workers=0: every job in this process, in order, output not redirected (with this
    process's XLA threads, so other float rounding than in a worker). Otherwise up to
    `workers` spawned processes, sharing the XLA compilation cache under
    `compile_cache` (if given, and unless JAX_COMPILATION_CACHE_DIR names the user's
    own). A failed job fails the run, naming the job and its log, after the jobs
    already running have finished (their outputs are complete and a rerun reuses
    them)."""
    _check(jobs)
    echo = echo or _print_now
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    priority = _priorities(jobs)
    pending = sorted(jobs, key=lambda job: priority[job.name], reverse=True)
    if workers == 0 or all(job.done for job in jobs):
        for job in _topological(pending):
            start = time.monotonic()
            if not job.done:
                echo(f"pipeline: {job.name} ...")
            results[job.name] = job.fn(*job.args)
            if not job.done:
                _finished(job, start, seconds, on_finish)
        return results, seconds
    context = multiprocessing.get_context("spawn")
    cores, queue = _cores(), context.Queue()
    for k in range(workers):                         # worker k gets core k (mod cores)
        queue.put(cores[k % len(cores)] if cores else None)
    running: dict[Future, tuple[Job, float]] = {}
    failure: tuple[Job, BaseException] | None = None
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(queue, compile_cache)) as pool:
        while (pending and failure is None) or running:
            for job in [j for j in pending if all(a in results for a in j.after)]:
                if failure is not None:
                    break
                if job.done:                         # only reads its output: no worker
                    pending.remove(job)
                    results[job.name] = job.fn(*job.args)
                    continue
                if len(running) >= workers:          # submit lazily: priorities hold
                    break
                pending.remove(job)
                os.makedirs(os.path.dirname(job.log), exist_ok=True)
                echo(f"pipeline: {job.name} ... (in a worker; log {job.log})")
                running[pool.submit(_run_in_worker, job.fn, job.args, job.log)] = (
                    job, time.monotonic())
            if not running:
                continue
            finished, _ = wait(running, timeout=poll_s, return_when=FIRST_COMPLETED)
            if not finished:
                for job, _ in running.values():
                    echo(f"pipeline:   {job.name}: {_last_progress_line(job.log)}")
                continue
            for future in finished:
                job, start = running.pop(future)
                try:
                    results[job.name] = future.result()
                except BaseException as e:           # noqa: B902 - reported below
                    failure = failure or (job, e)
                    echo(f"pipeline: {job.name} FAILED ({type(e).__name__}: {e}); log "
                         f"{job.log}" + ("; waiting for the jobs still running"
                                         if running else ""))
                    continue
                _finished(job, start, seconds, on_finish)
                echo(f"pipeline: {job.name} done in {seconds[job.name]:.0f} s "
                     f"({len(results)} of {len(jobs)} jobs)")
    if failure is not None:
        job, error = failure
        raise RuntimeError(f"pipeline: job {job.name} failed: {type(error).__name__}: "
                           f"{error} (its output: {job.log}); the jobs that finished are "
                           "kept and a rerun reuses them") from error
    return results, seconds


def _finished(job: Job, start: float, seconds: dict[str, float],
              on_finish: Callable[[str, float], None] | None) -> None:
    seconds[job.name] = round(time.monotonic() - start, 1)
    if on_finish is not None:
        on_finish(job.name, seconds[job.name])


def _check(jobs: list[Job]) -> None:
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs: duplicate names in {names}")
    for job in jobs:
        unknown = [a for a in job.after if a not in names]
        if unknown:
            raise ValueError(f"job {job.name}: runs after unknown job(s) {unknown}")
    _topological(jobs)


def _topological(jobs: list[Job]) -> list[Job]:
    """`jobs` in their order, each moved after the jobs it needs; raises on a cycle."""
    placed: list[Job] = []
    names: set[str] = set()
    rest = list(jobs)
    while rest:
        ready = next((j for j in rest if all(a in names for a in j.after)), None)
        if ready is None:
            raise ValueError(f"jobs: {[j.name for j in rest]} wait on each other")
        rest.remove(ready)
        placed.append(ready)
        names.add(ready.name)
    return placed


def _priorities(jobs: list[Job]) -> dict[str, float]:
    """Each job's cost plus the longest chain of jobs that wait on it, by name."""
    waiting: dict[str, list[Job]] = {job.name: [] for job in jobs}
    for job in jobs:
        for name in job.after:
            waiting[name].append(job)
    chain: dict[str, float] = {}

    def length(job: Job) -> float:
        if job.name not in chain:
            chain[job.name] = job.cost + max((length(j) for j in waiting[job.name]), default=0.0)
        return chain[job.name]
    return {job.name: length(job) for job in jobs}


def _print_now(line: str) -> None:
    print(line, flush=True)           # stdout may be a file: show the line now


def _cores() -> list[int]:
    """The cores this process may run on, where the OS lets us pin (Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def _start_worker(cores, compile_cache: str | None) -> None:
    """A worker's first act: pin itself to one core, before XLA's CPU client starts
    (at the first computation) and sizes its thread pool. Pinned later, the pool
    keeps its threads on that one core (measured: 1.6x CPU time over wall time).
    Then it joins the workers' compilation cache."""
    core = cores.get()
    if core is not None:
        os.sched_setaffinity(0, {core})
    if compile_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR") and _has_filelock():
        import jax
        directory = os.path.join(compile_cache, f"{available_cores()}-core")
        jax.config.update("jax_compilation_cache_dir", directory)
        # Every program, however quick to compile (the demo's take seconds each).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        # A size limit turns on jax's file lock: two workers may write and read one
        # entry at the same moment, and an entry is not written atomically otherwise.
        jax.config.update("jax_compilation_cache_max_size", 4 << 30)


def _has_filelock() -> bool:
    """jax locks its cache files with the filelock package (installed with
    huggingface_hub); without it the workers do not share a cache."""
    import importlib.util
    return importlib.util.find_spec("filelock") is not None


def _run_in_worker(fn: Callable[..., Any], args: tuple, log: str) -> Any:
    """Runs one job in a worker with its stdout and stderr (Python's and the C
    libraries') appended to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            return fn(*args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_progress_line(log: str, tail_bytes: int = 4096) -> str:
    """The latest progress line a job wrote (progress bars redraw with '\\r')."""
    try:
        with open(log, "rb") as f:
            f.seek(max(os.path.getsize(log) - tail_bytes, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no output yet)"
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "(no output yet)"
