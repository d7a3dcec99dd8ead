"""demo/jobs.py: the pipeline's students and evaluations as jobs, run side by side
in one-thread worker processes (the pipeline itself runs them in
tests/demo/test_pipeline.py and test_reproducible.py)."""
import io
import json
import os
import threading
import time

import pytest

from distill_jax import progress
from distill_jax.demo import jobs


def record(path, name, value):
    """A job: appends what it saw to `path` and prints to its log."""
    print(f"{name} running")
    with open(path, "a") as f:
        f.write(json.dumps({"name": name, "pid": os.getpid(),
                            "cores": sorted(os.sched_getaffinity(0)),
                            "idle": os.sched_getscheduler(0) == os.SCHED_IDLE}) + "\n")
    return value


def stage_here(path, name, beside, timeout_s=60.0):
    """A job that runs in the pipeline's process: waits until the job `beside` has
    run (so that it ran beside this one), then records itself."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path) and beside in {s["name"] for s in map(json.loads, open(path))}:
            break
        time.sleep(0.05)
    return record(path, name, name.upper())


def xla_cpu_time_over_wall_time():
    """A job: CPU time over wall time of a chain of matmuls (about the number of
    threads XLA computes them on)."""
    import time

    import jax.numpy as jnp
    x = jnp.ones((1024, 1024))
    (x @ x).block_until_ready()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(40):
        x = (x @ x) * 1e-3
    x.block_until_ready()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def fail(message):
    print("about to fail")
    raise ValueError(message)


def _job(tmp_path, name, fn=record, args=None, **kw):
    args = (str(tmp_path / "seen.jsonl"), name, name.upper()) if args is None else args
    return jobs.Job(name, fn, args, str(tmp_path / name / "log.txt"), **kw)


def _seen(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "seen.jsonl")]


def test_jobs_run_in_one_thread_workers_after_what_they_wait_on(tmp_path):
    work = [_job(tmp_path, "a"), _job(tmp_path, "b", after=("a",)),
            _job(tmp_path, "c"), _job(tmp_path, "d", after=("b", "c"))]
    lines, finished = [], {}
    results, seconds = jobs.run_jobs(work, workers=2, echo=lines.append,
                                     on_finish=finished.__setitem__)
    assert results == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert set(seconds) == {"a", "b", "c", "d"} and finished == seconds
    seen = _seen(tmp_path)
    order = [s["name"] for s in seen]
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    for s in seen:                      # in a worker, pinned to one core
        assert s["pid"] != os.getpid() and len(s["cores"]) == 1 and not s["idle"]
    # a and c start together, each on a core of its own.
    both = [s["cores"][0] for s in seen if s["name"] in "ac"]
    assert sorted(both) == jobs._cores()[:2] * (2 // len(jobs._cores()[:2]))
    assert (tmp_path / "b" / "log.txt").read_text() == "b running\n"
    assert any("b done in" in line and "of 4 jobs" in line for line in lines)


@pytest.mark.skipif(jobs.available_cores() < 2 or not hasattr(os, "sched_setaffinity"),
                    reason="pins workers to cores (Linux), on 2+ cores")
def test_a_worker_computes_on_one_thread(tmp_path):
    """XLA sizes its thread pool to the cores a process may use when it starts: a
    worker pinned before computing uses one thread (unpinned, or pinned after its
    first computation, two: 1.6-1.8x CPU time over wall time on 2 cores)."""
    work = [jobs.Job("xla", xla_cpu_time_over_wall_time, (), str(tmp_path / "log.txt"))]
    assert jobs.run_jobs(work, workers=1, echo=lambda line: None)[0]["xla"] < 1.2


def test_the_longest_chain_starts_first(tmp_path):
    work = [_job(tmp_path, "short", cost=1.0), _job(tmp_path, "long", cost=5.0),
            _job(tmp_path, "tail", cost=1.0, after=("short",))]
    jobs.run_jobs(work, workers=1, echo=lambda line: None)
    assert [s["name"] for s in _seen(tmp_path)] == ["long", "short", "tail"]
    # The chain counts, not a job's own cost: short (1) heads short -> tail (1 + 5).
    (tmp_path / "seen.jsonl").unlink()
    work[2] = _job(tmp_path, "tail", cost=5.0, after=("short",))
    jobs.run_jobs(work, workers=1, echo=lambda line: None)
    assert [s["name"] for s in _seen(tmp_path)] == ["short", "long", "tail"]


def test_finished_jobs_and_workers_0_run_in_this_process(tmp_path):
    finished = {}
    work = [_job(tmp_path, "a", done=True), _job(tmp_path, "b", after=("a",), done=True)]
    results, seconds = jobs.run_jobs(work, workers=2, echo=lambda line: None,
                                     on_finish=finished.__setitem__)
    assert results == {"a": "A", "b": "B"}
    assert seconds == finished == {}     # read back, not run: no time of this run's
    work = [_job(tmp_path, "e", done=True), _job(tmp_path, "f", after=("e",))]
    results, seconds = jobs.run_jobs(work, workers=2, echo=lambda line: None,
                                     on_finish=finished.__setitem__)
    assert results == {"e": "E", "f": "F"} and set(seconds) == set(finished) == {"f"}
    finished.clear()
    work = [_job(tmp_path, "c"), _job(tmp_path, "d", after=("c",), done=True)]
    results, seconds = jobs.run_jobs(work, workers=0, echo=lambda line: None,
                                     on_finish=finished.__setitem__)
    assert results == {"c": "C", "d": "D"}
    assert set(seconds) == set(finished) == {"c"}
    assert {s["name"]: s["pid"] == os.getpid() for s in _seen(tmp_path)} == {
        "a": True, "b": True, "e": True, "f": False, "c": True, "d": True}
    assert not (tmp_path / "c").exists()          # no log: its output is this process's


def test_a_failed_stage_here_names_itself_and_no_log(tmp_path):
    work = [_job(tmp_path, "teacher", fail, ("diverged",), here=True),
            _job(tmp_path, "after", after=("teacher",))]
    with pytest.raises(RuntimeError, match=r"job teacher failed: ValueError: diverged "
                                           r"\(its output is above\)"):
        jobs.run_jobs(work, workers=1, echo=lambda line: None)
    assert not (tmp_path / "seen.jsonl").exists()


def test_a_failed_job_names_itself_and_its_log_and_the_running_ones_finish(tmp_path):
    work = [_job(tmp_path, "bad", fail, ("no good",), cost=2.0), _job(tmp_path, "ok"),
            _job(tmp_path, "later", after=("bad",))]
    lines, finished = [], {}
    with pytest.raises(RuntimeError, match=r"job bad failed: ValueError: no good \(its "
                                           r"output: .*bad/log.txt\)"):
        jobs.run_jobs(work, workers=2, echo=lines.append, on_finish=finished.__setitem__)
    assert [s["name"] for s in _seen(tmp_path)] == ["ok"]      # finished, not "later"
    assert list(finished) == ["ok"]             # its time was handed on before the raise
    assert "about to fail" in (tmp_path / "bad" / "log.txt").read_text()
    assert any("bad FAILED" in line for line in lines)


def test_bad_jobs_and_worker_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="runs after unknown job"):
        jobs.run_jobs([_job(tmp_path, "a", after=("zz",))], workers=0)
    with pytest.raises(ValueError, match="wait on each other"):
        jobs.run_jobs([_job(tmp_path, "a", after=("b",)), _job(tmp_path, "b", after=("a",))],
                      workers=0)
    with pytest.raises(ValueError, match="duplicate names"):
        jobs.run_jobs([_job(tmp_path, "a"), _job(tmp_path, "a")], workers=0)
    with pytest.raises(ValueError, match="config.workers: -2"):
        jobs.resolve_workers(-2, 4)
    assert jobs.resolve_workers(0, 4) == 0
    assert jobs.resolve_workers(8, 3) == 3
    assert 1 <= jobs.resolve_workers(-1, 100) == min(jobs.available_cores(), 100)
    # On an accelerator the jobs run in the process that holds it.
    assert jobs.resolve_workers(-1, 4, "tpu") == jobs.resolve_workers(0, 4, "gpu") == 0
    with pytest.raises(ValueError, match="config.workers: 2 worker processes, but this run "
                                         "computes on tpu"):
        jobs.resolve_workers(2, 4, "tpu")


def test_the_latest_progress_line_is_read_from_a_redrawn_log(tmp_path):
    log = tmp_path / "log.txt"
    assert jobs._last_progress_line(str(log)) == "(no output yet)"
    log.write_text("data: 10 rows\ntrain 1/9 steps\rtrain 2/9 steps | ETA 00:03\r")
    assert jobs._last_progress_line(str(log)) == "train 2/9 steps | ETA 00:03"


def compile_and_report_cache():
    """A job: compiles a function and says where jax keeps compiled programs."""
    import jax
    import jax.numpy as jnp
    jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((64, 64))).block_until_ready()
    return jax.config.jax_compilation_cache_dir


def test_workers_share_a_compilation_cache_per_core_count(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    cache = tmp_path / "xla_cache"
    work = [_job(tmp_path, name, fn=compile_and_report_cache, args=()) for name in "ab"]
    results, _ = jobs.run_jobs(work, workers=2, echo=lambda line: None,
                               compile_cache=str(cache))
    assert set(results.values()) == {str(cache / "1-core")}
    assert [p for p in os.listdir(cache / "1-core") if p.endswith("-cache")]


@pytest.mark.skipif(not jobs._can_idle(), reason="SCHED_IDLE is Linux's")
def test_stages_here_run_in_this_process_with_idle_priority_workers_beside_them(tmp_path):
    """A `here` job runs in this process (a thread of it); the worker jobs that do
    not wait on it run beside it at idle priority, and those after it at normal
    priority, never on a core a running job has."""
    seen = str(tmp_path / "seen.jsonl")
    work = [_job(tmp_path, "teacher", stage_here, (seen, "teacher", "early"), here=True),
            _job(tmp_path, "sample", stage_here, (seen, "sample", "late"), here=True,
                 after=("teacher",)),
            _job(tmp_path, "early", cost=5.0), _job(tmp_path, "late", after=("teacher",)),
            _job(tmp_path, "student", after=("sample",))]
    lines = []
    results, seconds = jobs.run_jobs(work, workers=2, echo=lines.append)
    assert results == {n: n.upper() for n in ("teacher", "sample", "early", "late", "student")}
    assert set(seconds) == set(results)
    by_name = {s["name"]: s for s in _seen(tmp_path)}
    assert [s["name"] for s in _seen(tmp_path)] == ["early", "teacher", "late", "sample",
                                                  "student"]
    for name in ("teacher", "sample"):
        assert by_name[name]["pid"] == os.getpid() and not by_name[name]["idle"]
    assert by_name["early"]["idle"] and by_name["late"]["idle"]      # beside the stages
    assert not by_name["student"]["idle"]                            # after them
    assert by_name["student"]["pid"] not in {by_name["early"]["pid"], by_name["late"]["pid"]}
    assert any("early ... (in a worker at idle priority" in line for line in lines)
    assert not (tmp_path / "teacher").exists()        # a stage here writes no log of its own
    assert not [t for t in threading.enumerate() if t.name.startswith("job ")]   # ended


def stage_span(path, name):
    """A job here: records when it starts and ends, 0.3 s apart."""
    start = time.monotonic()
    time.sleep(0.3)
    with open(path, "a") as f:
        f.write(json.dumps({"name": name, "start": start, "end": time.monotonic()}) + "\n")
    return name.upper()


def test_stages_here_run_one_at_a_time_and_with_workers_0_in_order(tmp_path):
    seen = str(tmp_path / "seen.jsonl")
    work = [_job(tmp_path, "a", stage_here, (seen, "a", "b", 0.5), here=True),
            _job(tmp_path, "b", stage_here, (seen, "b", "a", 0.5), here=True),
            _job(tmp_path, "c", after=("a", "b"))]
    results, _ = jobs.run_jobs(work, workers=1, echo=lambda line: None)
    assert results == {"a": "A", "b": "B", "c": "C"}
    # Neither saw the other run beside it: each waited its 0.5 s for nothing.
    order = [s["name"] for s in _seen(tmp_path)]
    assert sorted(order[:2]) == ["a", "b"] and order[2] == "c"
    # Their spans do not overlap: the second starts after the first has ended.
    spans = str(tmp_path / "spans.jsonl")
    jobs.run_jobs([_job(tmp_path, n, stage_span, (spans, n), here=True) for n in "xyz"],
                  workers=2, echo=lambda line: None)
    ran = sorted(map(json.loads, open(spans)), key=lambda s: s["start"])
    assert len(ran) == 3
    assert all(b["start"] >= a["end"] for a, b in zip(ran, ran[1:]))
    (tmp_path / "seen.jsonl").unlink()
    jobs.run_jobs(work, workers=0, echo=lambda line: None)
    assert all(s["pid"] == os.getpid() for s in _seen(tmp_path))


def test_a_finished_job_drops_the_jobs_it_leaves_nothing_to_do(tmp_path):
    """`drop`: a stage that finds nothing for some jobs (the filter, when no sample
    passes) drops them and every job that waits on them; started ones run on."""
    work = [_job(tmp_path, "filter", here=True), _job(tmp_path, "student", after=("filter",)),
            _job(tmp_path, "eval", after=("student",)), _job(tmp_path, "other",
                                                             after=("filter",))]
    asked = []

    def drop(name, result):
        asked.append((name, result))
        return ["student", "no such job"] if name == "filter" else []
    for workers in (0, 2):
        (tmp_path / "seen.jsonl").unlink(missing_ok=True)
        lines = []
        results, _ = jobs.run_jobs(work, workers=workers, echo=lines.append, drop=drop)
        assert set(results) == {"filter", "other"}
        assert {s["name"] for s in _seen(tmp_path)} == {"filter", "other"}
        assert ("filter", "FILTER") in asked
    assert any("(2 of 2 jobs)" in line for line in lines)


def test_after_the_stages_the_job_that_ends_the_run_soonest_starts():
    """`make demo` after its stages: answer-only (started beside them) holds one
    worker for 0.85 of a student still; online KD (1.3) on the free one would start
    the last student at 1.3 and end at 2.3; a plain student there lets online KD
    follow answer-only and both workers end near 2.1 (`make demo` measured 684 s
    after its stages the first way, 596 s the second)."""
    def job(name, cost, after=()):
        return jobs.Job(name, record, (), "log", after=after, cost=cost)
    kd, unfiltered, filtered = job("kd", 1.3), job("unfiltered", 1.0), job("filtered", 1.0)
    evals = [job(f"eval:{j.name}", 0.0, after=(j.name,)) for j in (kd, unfiltered, filtered)]
    waiting = [kd, unfiltered, filtered, *evals]
    running = {"answer_only": 0.85}
    end = {j.name: jobs._simulated_end(j, waiting, running, 1, {"filter"})
           for j in (kd, unfiltered, filtered)}
    assert end["kd"] == pytest.approx(2.3)
    assert end["unfiltered"] == end["filtered"] == pytest.approx(2.15)
    # With both workers free (the old order: nothing beside the stages) the longest
    # chain first is also the soonest end: 1.3 + 1.0 against 1.0 + 1.0 + ...
    assert jobs._simulated_end(kd, waiting, {}, 2, set()) <= jobs._simulated_end(
        unfiltered, waiting, {}, 2, set())


def test_a_jobs_progress_is_read_from_its_log(tmp_path):
    log = tmp_path / "log.txt"
    assert jobs._progress(str(log)) == 0.0
    log.write_text("train: data /a/b/1/answer_only.jsonl: 4000 examples\n")
    assert jobs._progress(str(log)) == 0.0
    log.write_text("train 70/840 steps | 0.49 steps/s\rtrain 210/840 steps | 3.1 steps/s\r")
    assert jobs._progress(str(log)) == pytest.approx(0.25)


def test_the_schedulers_lines_end_a_stages_open_progress_line_first(tmp_path, capsys):
    """A stage's bar (stderr) redraws its line with '\\r'; a line the scheduler
    prints (stdout) while it is open ends it first instead of trailing it."""
    bar_stream = io.StringIO()
    progress.Progress(2, "steps", "teacher", stream=bar_stream, min_interval_s=0.0).update(1)
    assert "\n" not in bar_stream.getvalue()
    jobs.run_jobs([_job(tmp_path, "a", stage_span, (str(tmp_path / "spans.jsonl"), "a"),
                        here=True)], workers=0)      # the default echo: _print_now
    assert "a" in capsys.readouterr().out
    assert bar_stream.getvalue().endswith("\n") and bar_stream.getvalue().count("\n") == 1
