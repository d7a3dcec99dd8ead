"""The demo pipeline's work as one graph of jobs: the stages that take every core
(the teacher, sampling, the filters) in this process, one after another, and the
independent ones (the students, the base, the evaluations) side by side in worker
processes, each computing on one core.

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
a 1024x1024 matmul chain still ran on two threads with them, measured.) Each job
then moves the worker's threads to a core no other running job has (the thread
count stays what it was at the start), so a worker job never shares a core with
another while one stands free.

Beside this process's stages (`Job.here`): those keep ~1.4-1.8 of 2 cores busy
(the teacher's steps and the sampler wait on Python between XLA's parallel
parts), so the worker jobs that do not wait on them start at once in workers at
idle CPU priority (Linux's SCHED_IDLE: a core goes to them only when nothing else
wants it). The stages lost 2-3.5% of their speed to them on a slice of them
(`benchmarks/demo_idle_cores.py`) and nothing measurable in `make demo`, which
they made 7.5% shorter (README, "Time"). A process cannot raise its priority back
without privileges, so those workers take no job once the stages have finished;
a job one of them is running finishes at idle priority (on a busy machine it
waits for free CPU), and every later job starts in a worker of normal priority.
Where there is no SCHED_IDLE (not Linux) the worker jobs start after the stages.

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
it runs in this process without starting a worker. Beside the stages, worker jobs
start in order of the longest chain of work they head (`Job.cost` plus their
dependents'), so a long student does not start last. After them, a free worker
takes the ready job with which the run would end soonest, simulated from the
jobs' costs and the running ones' progress (their logs' "N/M steps"): a job
started beside the stages holds its worker well past them, and the longest chain
first then left the longest job to start last (`make demo` 23 s longer instead
of 72 s shorter, README "Time"). Each worker job's output goes to its own log
file; this process prints when a job starts and ends and, while worker jobs run,
their latest progress line (steps/s, ETA) every `poll_s` seconds.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable

from distill_jax import progress
from distill_jax.host import available_cores


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of the pipeline's work. `fn(*args)` must be a module-level function
    (a worker imports it); `after`: jobs that must finish first; `cost`: a relative
    estimate of its run time (only the order of jobs depends on it); `done`: its
    output is complete, so running it only reads it; `here`: it runs in this
    process, on every core (a stage such as the teacher's training), never beside
    another `here` job; `log`: a worker job's output file."""
    name: str
    fn: Callable[..., Any]
    args: tuple
    log: str = ""
    after: tuple[str, ...] = ()
    cost: float = 1.0
    done: bool = False
    here: bool = False


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
             on_finish: Callable[[str, float], None] | None = None,
             drop: Callable[[str, Any], Iterable[str]] | None = None,
             ) -> tuple[dict[str, Any], dict[str, float]]:
    """Runs `jobs` respecting `after`; returns ({name: fn's result}, {name: seconds}),
    the seconds for the jobs it ran (a `done` job only reads its output: it has no
    time here). `on_finish(name, seconds)` is called as each job it ran finishes, so
    a caller can keep the time even if a later job fails. `drop(name, result)`, called
    as each job finishes, names jobs not to run after all (a stage found that they
    have nothing to do); the jobs that wait on those are dropped with them, and one
    that has already started runs to its end.

    workers=0: every job in this process, in order, output not redirected (with this
    process's XLA threads, so other float rounding than in a worker). Otherwise the
    `here` jobs in this process and the others in up to `workers` spawned processes
    (see the module's docstring), sharing the XLA compilation cache under
    `compile_cache` (if given, and unless JAX_COMPILATION_CACHE_DIR names the user's
    own). A failed job fails the run, naming the job and its log, after the jobs
    already running have finished (their outputs are complete and a rerun reuses
    them)."""
    _check(jobs)
    schedule = _Schedule(jobs, workers, echo or _print_now, on_finish, drop)
    if workers == 0 or all(job.done for job in jobs):
        schedule.run_in_order()
    else:
        schedule.run_side_by_side(poll_s, compile_cache)
    return schedule.results, schedule.seconds


@dataclasses.dataclass
class _Running:
    job: Job
    start: float
    slot: int | None = None          # a worker job's: its core is `_Schedule.core(slot)`
    thread: threading.Thread | None = None          # a job here's


class _Schedule:
    """One run of a job graph: what waits, runs and has finished."""

    def __init__(self, jobs, workers, echo, on_finish, drop):
        self.total, self.workers, self.echo = len(jobs), workers, echo
        self.on_finish, self.drop = on_finish, drop
        priority = _priorities(jobs)
        self.pending = sorted(jobs, key=lambda job: priority[job.name], reverse=True)
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.running: dict[Future, _Running] = {}
        self.failure: tuple[Job, BaseException] | None = None
        self.free_slots = list(range(workers))
        self.cores = _cores()
        self.pools: dict[bool, ProcessPoolExecutor] = {}       # by idle priority
        self.retired: list[ProcessPoolExecutor] = []           # idle, taking no jobs

    def run_in_order(self) -> None:
        for job in _topological(self.pending):
            if job not in self.pending:          # dropped by a job before it
                continue
            self.pending.remove(job)
            start = time.monotonic()
            if not job.done:
                self.echo(f"pipeline: {job.name} ...")
            self._finished(job, start, job.fn(*job.args), timed=not job.done)

    def run_side_by_side(self, poll_s: float, compile_cache: str | None) -> None:
        self.compile_cache = compile_cache
        try:
            while (self.pending and self.failure is None) or self.running:
                self._start_ready()
                if not self.running:
                    continue
                finished, _ = wait(self.running, timeout=poll_s, return_when=FIRST_COMPLETED)
                if not finished:
                    for run in self.running.values():
                        if not run.job.here:     # a stage here prints its own progress
                            self.echo(f"pipeline:   {run.job.name}: "
                                      f"{_last_progress_line(run.job.log)}")
                    continue
                for future in finished:
                    self._collect(future)
        finally:
            for pool in [*self.pools.values(), *self.retired]:
                pool.shutdown(wait=True)
        if self.failure is not None:
            job, error = self.failure
            where = "its output is above" if job.here else f"its output: {job.log}"
            raise RuntimeError(f"pipeline: job {job.name} failed: {type(error).__name__}: "
                               f"{error} ({where}); the jobs that finished are kept and a "
                               "rerun reuses them") from error

    def _start_ready(self) -> None:
        for job in [j for j in self.pending if all(a in self.results for a in j.after)]:
            if self.failure is not None:
                return
            if job not in self.pending:          # dropped by a job read back just now
                continue
            if job.done:                         # only reads its output: no worker
                self.pending.remove(job)
                self._finished(job, time.monotonic(), job.fn(*job.args), timed=False)
            elif job.here and not self._stage_running():
                self._start_here(job)
        while self.free_slots and self.failure is None:
            ready = [j for j in self.pending if not j.here and not j.done
                     and all(a in self.results for a in j.after)]
            if not ready:
                return
            idle = self._stages_left()
            if idle and not _can_idle():
                if self._stage_running():
                    return                       # no idle priority: after the stage
                idle = False                     # the stages wait on worker jobs
            # Beside the stages, the longest chain first (what runs after them is not
            # known yet); after them, the job that ends the run soonest.
            self._start_in_worker(ready[0] if idle else self._soonest_end(ready), idle)

    def _soonest_end(self, ready: list[Job]) -> Job:
        """The job of `ready` (in priority order) to start on a free worker so that
        the run ends soonest, by simulating the rest (`_simulated_end`): jobs that
        started beside the stages hold their workers past them, so the longest chain
        first can leave the longest job to start last (`make demo`: online KD on the
        worker beside answer-only's, 684 s after the stages; this way 596 s)."""
        running = {run.job.name: run.job.cost * (1.0 - _progress(run.job.log))
                   for run in self.running.values() if not run.job.here}
        waiting = [j for j in self.pending if not j.here]
        free = len(self.free_slots)
        ends = [_simulated_end(job, waiting, running, free, set(self.results)) for job in ready]
        tolerance = 1e-6 * max([job.cost for job in waiting] + [1.0])
        best = min(ends)
        return next(job for job, end in zip(ready, ends) if end <= best + tolerance)

    def _stage_running(self) -> bool:
        return any(run.job.here for run in self.running.values())

    def _stages_left(self) -> bool:
        """A job that runs here is running or has yet to start."""
        return self._stage_running() or any(job.here for job in self.pending)

    def _start_here(self, job: Job) -> None:
        self.pending.remove(job)
        self.echo(f"pipeline: {job.name} ...")
        future: Future = Future()
        future.set_running_or_notify_cancel()
        # A thread, so that this one goes on starting and collecting worker jobs. A
        # daemon: an interrupted run (Ctrl-C here) does not wait for the stage.
        thread = threading.Thread(target=_run_here, args=(future, job.fn, job.args),
                                  name=f"job {job.name}", daemon=True)
        thread.start()
        self.running[future] = _Running(job, time.monotonic(), thread=thread)

    def _start_in_worker(self, job: Job, idle: bool) -> None:
        if not idle and True in self.pools:
            # The stages are over: the idle-priority workers take no more jobs and
            # exit once the ones they run have finished.
            self.retired.append(self.pools.pop(True))
            self.retired[-1].shutdown(wait=False)
        self.pending.remove(job)
        slot = self.free_slots.pop(0)
        os.makedirs(os.path.dirname(job.log), exist_ok=True)
        self.echo(f"pipeline: {job.name} ... (in a worker"
                  + (" at idle priority, beside this process's stages" if idle else "")
                  + f"; log {job.log})")
        future = self._pool(idle).submit(_run_in_worker, job.fn, job.args, job.log,
                                         self.core(slot))
        self.running[future] = _Running(job, time.monotonic(), slot)

    def core(self, slot: int) -> int | None:
        """The core of worker slot `slot` (slots beyond the cores share them)."""
        return self.cores[slot % len(self.cores)] if self.cores else None

    def _pool(self, idle: bool) -> ProcessPoolExecutor:
        if idle not in self.pools:
            self.pools[idle] = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.core(0), self.compile_cache, idle))
        return self.pools[idle]

    def _collect(self, future: Future) -> None:
        run = self.running.pop(future)
        if run.thread is not None:
            run.thread.join()                    # it has set its result: it is ending
        if run.slot is not None:
            self.free_slots.append(run.slot)
            self.free_slots.sort()
        try:
            result = future.result()
        except BaseException as e:               # noqa: B902 - reported below
            self.failure = self.failure or (run.job, e)
            self.echo(f"pipeline: {run.job.name} FAILED ({type(e).__name__}: {e})"
                      + ("" if run.job.here else f"; log {run.job.log}")
                      + ("; waiting for the jobs still running" if self.running else ""))
            return
        self._finished(run.job, run.start, result, timed=True)
        self.echo(f"pipeline: {run.job.name} done in {self.seconds[run.job.name]:.0f} s "
                  f"({len(self.results)} of {self.total} jobs)")

    def _finished(self, job: Job, start: float, result: Any, timed: bool) -> None:
        self.results[job.name] = result
        if timed:
            self.seconds[job.name] = round(time.monotonic() - start, 1)
            if self.on_finish is not None:
                self.on_finish(job.name, self.seconds[job.name])
        if self.drop is not None:
            self._drop(set(self.drop(job.name, result)))

    def _drop(self, names: set[str]) -> None:
        """Removes the pending jobs named in `names` and those that wait on them, at
        any depth. A job that has started is not stopped (nor one that waits on it)."""
        names = {n for n in names if any(job.name == n for job in self.pending)}
        while True:
            gone = [j for j in self.pending if j.name in names or set(j.after) & names]
            if not gone:
                return
            for job in gone:
                self.pending.remove(job)
                names.add(job.name)
                self.total -= 1


def _check(jobs: list[Job]) -> None:
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs: duplicate names in {names}")
    for job in jobs:
        unknown = [a for a in job.after if a not in names]
        if unknown:
            raise ValueError(f"job {job.name}: runs after unknown job(s) {unknown}")
        if not job.here and not job.done and not job.log:
            raise ValueError(f"job {job.name}: a worker job needs a log file")
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


def _simulated_end(first: Job, waiting: list[Job], running: dict[str, float], free: int,
                   finished: set[str]) -> float:
    """When the jobs would end, in `cost` units from now, if `first` started now on
    one of the `free` workers and every worker that frees up after it took the
    first ready job of `waiting` (priority order): `running` maps each running job
    to its cost still to do."""
    ends = dict(running)
    workers = sorted(ends.values()) + [0.0] * (free - 1) + [first.cost]
    ends[first.name] = first.cost
    left = [job for job in waiting if job is not first]
    while left:
        workers.sort()
        now = workers.pop(0)
        ready = [job for job in left if all(a in finished or ends.get(a, float("inf")) <= now
                                            for a in job.after)]
        if not ready:                            # idle until the next job ends
            later = [end for end in ends.values() if end > now]
            if not later:
                break                            # waits on something never run here
            workers.append(min(later))
            continue
        job = ready[0]
        left.remove(job)
        ends[job.name] = now + job.cost
        workers.append(ends[job.name])
    return max(ends.values(), default=0.0)


def _progress(log: str) -> float:
    """How far a worker job has got, from its latest progress line ("train 70/840
    steps ..."): 0 when it has printed none."""
    match = re.search(r"\b(\d+)/(\d+)\b", _last_progress_line(log) if log else "")
    if not match or int(match.group(2)) == 0:
        return 0.0
    return min(int(match.group(1)) / int(match.group(2)), 1.0)


def _print_now(line: str) -> None:
    # A stage's progress bar (stderr, this process) may have left its line open;
    # the scheduler's line starts a line of its own rather than trailing the bar.
    progress.end_open_line()
    print(line, flush=True)           # stdout may be a file: show the line now


def _cores() -> list[int]:
    """The cores this process may run on, where the OS lets us pin (Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def _can_idle() -> bool:
    """Worker processes can run at idle CPU priority here (Linux's SCHED_IDLE)."""
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


def _start_worker(core: int | None, compile_cache: str | None, idle: bool) -> None:
    """A worker's first act: pin itself to one core, before XLA's CPU client starts
    (at the first computation) and sizes its thread pool: one thread. (Pinned later,
    the pool keeps its threads on that one core: measured 1.6x CPU time over wall
    time.) At idle priority if `idle`, set now so that every thread XLA starts
    inherits it. Then it joins the workers' compilation cache."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
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


def _pin_threads(core: int) -> None:
    """Moves every thread of this process to `core` (affinity is a thread's own on
    Linux: XLA's threads keep the mask they started with otherwise); threads
    started later inherit it."""
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, {core})
        except OSError:                          # the thread has exited meanwhile
            pass


def _run_here(future: Future, fn: Callable[..., Any], args: tuple) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as e:                   # noqa: B902 - the caller reports it
        future.set_exception(e)


def _has_filelock() -> bool:
    """jax locks its cache files with the filelock package (installed with
    huggingface_hub); without it the workers do not share a cache."""
    import importlib.util
    return importlib.util.find_spec("filelock") is not None


def _run_in_worker(fn: Callable[..., Any], args: tuple, log: str, core: int | None) -> Any:
    """Runs one job in a worker, on `core`, with its stdout and stderr (Python's and
    the C libraries') appended to `log`."""
    if core is not None:
        _pin_threads(core)
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
