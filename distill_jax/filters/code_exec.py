"""Code verification: run a generated Python program in a sandbox, judge it outside.

Two processes per program. The untrusted program runs alone in a sandboxed child
(`sandbox_runner.py`): a fresh temporary directory that is deleted afterwards,
an environment holding only PATH/HOME/TMPDIR/LANG, wall-clock and CPU limits, an
address-space limit, a file-size limit, stdout/stderr capped, network and mount
namespaces where the OS allows them and a Python audit hook everywhere (details
and the order of layers: `sandbox_runner.py`); the `layers` field of each result
says which were in force. The tests run in a trusted harness process
(`trusted_harness.py`) that the program cannot reach: function-call tests
(HumanEval's `check(candidate)`) call the program's functions remotely, with
plain data across the pipe (`plain_data.py`), and compare in the harness; the
verdict travels on a descriptor only the harness holds. stdin/stdout tests
(`io_judge.py`) hand the program's outputs back to this process, which compares
them with expected outputs that never enter the sandbox.

What this protects against: model-written code that loops, allocates without
bound, forks, talks to the network, writes or deletes files outside its
directory, or reads the caller's secrets -- by mistake or by the usual escapes --
and code that games its tests: a program cannot reach the verdict through frames
or the garbage collector, by patching modules, by exiting early with status 0,
by printing a verdict, or by returning an object equal to everything
(tests/filters/test_code_forgery.py). It is not a boundary against a determined
attacker (the audit hook lives in the program's interpreter and the kernel
layers depend on the machine); for hostile code, run the filter stage inside a
VM or gVisor as well.

Statuses: "passed" (the tests ran to the end), "failed" (the tests raised: a
failed assertion, an exception from the program's function, a return value that
is not plain data), "timeout" (wall or CPU limit), "error" (the program did not
compile, raised at top level, hit the memory limit, exited or was killed before
the tests finished, or lacks the entry point).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

_log = logging.getLogger(__name__)
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trusted_harness.py")
STATUSES = ("passed", "failed", "timeout", "error")


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_time_s: float = 10.0
    cpu_time_s: float = 10.0
    memory_bytes: int = 1 << 30
    max_output_bytes: int = 64 << 10      # per stream; the rest is counted and dropped
    max_file_bytes: int = 16 << 20        # any single file the program writes
    max_processes: int = 16               # pids cgroup / RLIMIT_NPROC headroom
    namespaces: bool = True               # network + read-only mount namespaces if allowed
    audit_hook: bool = True               # tests switch it off to check the kernel layers


@dataclasses.dataclass
class ExecResult:
    status: str
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    wall_s: float = 0.0
    layers: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


_CODE_BLOCK_RE = re.compile(r"```([a-zA-Z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str | None) -> str | None:
    """The last ```python block (after `</think>` if there is one there), else the
    last fenced block of any language; None if there is none."""
    if not text:
        return None
    segments = [text.rsplit("</think>", 1)[1], text] if "</think>" in text else [text]
    for segment in segments:
        blocks = _CODE_BLOCK_RE.findall(segment)
        python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
        if python:
            return python[-1]
        if blocks:
            return blocks[-1][1]
    return None


def humaneval_test_code(test: str, entry_point: str) -> str:
    """HumanEval's `check(candidate)` tests, called on the solution's function."""
    return f"{test}\n\ncheck({entry_point})\n"


_UID_COUNTER = itertools.count()


def _make_pids_cgroup(max_processes: int) -> str:
    """A cgroup with a pids limit the runner joins, where this machine lets us."""
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if not os.path.exists(os.path.join(root, "cgroup.procs")) or not os.access(root, os.W_OK):
            continue
        path = os.path.join(root, f"distill-sandbox-{os.getpid()}-{next(_UID_COUNTER)}")
        try:
            os.mkdir(path)
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(max_processes))
            return path
        except OSError:
            _remove_cgroup(path)
    return ""


def _kill_cgroup(path: str) -> None:
    """Kills every process in the cgroup, wherever it moved (a new session or process
    group escapes `killpg`; it cannot leave its cgroup)."""
    if not path:
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:    # cgroup v2: all at once
            f.write("1")
        return
    except OSError:
        pass
    for _ in range(20):                                            # v1: until it is empty
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _remove_cgroup(path: str) -> None:
    if not path:
        return
    _kill_cgroup(path)
    for _ in range(250):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)      # the killed processes are still being reaped
    _log.warning("could not remove the sandbox cgroup %s (processes still in it?)", path)


class _CappedReader(threading.Thread):
    """Drains a pipe so the child never blocks, keeping the first `cap` bytes."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.data = bytearray()
        self.total = 0

    def run(self) -> None:
        while True:
            chunk = self.stream.read(65536)
            if not chunk:
                return
            self.total += len(chunk)
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        if self.total > len(self.data):
            out += f"\n[... {self.total - len(self.data)} more bytes dropped]"
        return out


class SandboxedChild:
    """One sandbox_runner.py process on a job: its own work directory (deleted after),
    pids cgroup, empty environment and process group; stdout/stderr drained and capped.

    Use as a context manager: on exit the whole process group is killed and the work
    directory removed. `extra_fds` are passed to the child (pipe ends it uses).
    """

    def __init__(self, job: dict, limits: SandboxLimits, extra_fds: tuple[int, ...] = ()):
        self.limits = limits
        self.workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
        self.cgroup = _make_pids_cgroup(limits.max_processes)
        status_r, status_w = os.pipe()      # the layers in force, before the program runs
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.workdir,
               "TMPDIR": self.workdir, "LANG": "C.UTF-8"}
        job = dict(job, workdir=self.workdir, cgroup_dir=self.cgroup, status_fd=status_w,
                   limits=dataclasses.asdict(limits))
        self.start = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=self.workdir, env=env,
                pass_fds=(status_w, *extra_fds), start_new_session=True)
        except BaseException:
            os.close(status_r)               # no child: nothing of this job may stay behind
            _remove_cgroup(self.cgroup)
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        finally:
            os.close(status_w)
        self._status = _CappedReader(os.fdopen(status_r, "rb", buffering=0), 1 << 12)
        self._out = _CappedReader(self.proc.stdout, limits.max_output_bytes)
        self._err = _CappedReader(self.proc.stderr, limits.max_output_bytes)
        for reader in (self._status, self._out, self._err):
            reader.start()
        try:
            self.proc.stdin.write(json.dumps(job).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def __enter__(self) -> "SandboxedChild":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        _remove_cgroup(self.cgroup)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        _kill_cgroup(self.cgroup)            # what it started, even in another session
        _kill_group(self.proc)               # (and where no cgroup could be made)
        for reader in (self._status, self._out, self._err):
            reader.join(timeout=5)

    def layers(self) -> tuple[str, ...]:
        try:
            return tuple(json.loads(bytes(self._status.data).decode()).get("layers", ()))
        except (ValueError, UnicodeDecodeError, AttributeError):
            return ()

    def outputs(self) -> tuple[str, str]:
        return self._out.text(), self._err.text()

    def limit_reason(self) -> tuple[str, str] | None:
        """("timeout" | "error", why) when the kernel stopped the child at a limit;
        call before `kill` (which ends the child with SIGKILL itself)."""
        code = self.proc.poll()
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            return "timeout", f"CPU limit of {self.limits.cpu_time_s:g}s"
        if code == -signal.SIGXFSZ:
            return "error", f"file size limit of {self.limits.max_file_bytes} bytes"
        return None


def run_python_tests(program: str, test_code: str = "", timeout_s: float | None = None,
                     limits: SandboxLimits | None = None, entry_point: str | None = None,
                     context: str = "") -> ExecResult:
    """Runs `program` in the sandbox and judges it with `test_code` in a trusted harness.

    The tests run in their own process (trusted_harness.py) and reach the program's
    functions only through remote calls that carry plain data (plain_data.py):
    nothing the program does -- walking frames, patching modules, exiting early,
    printing a verdict, returning an object equal to everything -- can make a
    failing test pass. `context` is trusted code run in the harness first (a
    HumanEval prompt: helpers such as `poly` the tests call); `entry_point` names
    the function under test, which is always the program's.
    """
    limits = limits or SandboxLimits()
    if timeout_s is not None:
        limits = dataclasses.replace(limits, wall_time_s=timeout_s,
                                     cpu_time_s=min(limits.cpu_time_s, timeout_s))
    fds = _Pipes()
    call_r, call_w = fds.pipe()
    reply_r, reply_w = fds.pipe()
    verdict_r, verdict_w = fds.pipe()
    harness = None
    try:
        with SandboxedChild({"mode": "serve", "program": program, "call_fd": call_r,
                             "reply_fd": reply_w}, limits, (call_r, reply_w)) as child:
            fds.close(call_r, reply_w)
            harness = subprocess.Popen(
                [sys.executable, "-I", HARNESS], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(call_w, reply_r, verdict_w), start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            fds.close(call_w, reply_r, verdict_w)
            verdict_reader = _CappedReader(fds.take(verdict_r, "rb"), 1 << 16)
            verdict_reader.start()
            harness_err = _CappedReader(harness.stderr, limits.max_output_bytes)
            harness_err.start()
            harness.stdin.write(json.dumps({
                "test_code": test_code, "context": context, "entry_point": entry_point,
                "call_fd": call_w, "reply_fd": reply_r, "verdict_fd": verdict_w}).encode())
            harness.stdin.close()
            timed_out = False
            try:
                harness.wait(timeout=max(0.0, limits.wall_time_s - (time.monotonic() - child.start)))
            except subprocess.TimeoutExpired:
                timed_out = True
            limit = child.limit_reason()
            _kill_group(harness)
            child.kill()
            verdict_reader.join(timeout=5)
            harness_err.join(timeout=5)
            wall = time.monotonic() - child.start
            stdout, stderr = child.outputs()
            if harness_err.data:
                stderr += harness_err.text()
            layers, code = child.layers(), child.proc.returncode
            if timed_out:
                return ExecResult("timeout", f"wall-clock limit of {limits.wall_time_s:g}s",
                                  stdout, stderr, code, wall, layers)
            verdict = _parse_verdict(bytes(verdict_reader.data))
            if harness.returncode != 0:
                # Killed or stopped from outside (the program can reach a process of the
                # same user through /proc where the kernel layers are missing): whatever
                # its pipe holds is not its verdict.
                verdict = None
            if limit is not None and (verdict is None or verdict["status"] != "passed"):
                return ExecResult(*limit, stdout, stderr, code, wall, layers)
            if verdict is None:
                return ExecResult("error", "the test harness gave no verdict", stdout, stderr,
                                  code, wall, layers)
            return ExecResult(verdict["status"], verdict["reason"], stdout, stderr, code, wall,
                              layers)
    finally:
        fds.close_all()
        if harness is not None and harness.poll() is None:
            _kill_group(harness)


class _Pipes:
    """The pipe ends a call still owns, each closed exactly once (threads of run_many
    reuse fd numbers: closing one twice could close another job's pipe)."""

    def __init__(self):
        self._open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._open.update((r, w))
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            self._open.remove(fd)
            os.close(fd)

    def take(self, fd: int, mode: str):
        """A file object that now owns `fd`."""
        self._open.remove(fd)
        return os.fdopen(fd, mode, buffering=0)

    def close_all(self) -> None:
        self.close(*list(self._open))


def _kill_group(proc: subprocess.Popen) -> None:
    """Kills a process and anything it started (its own session / process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _parse_verdict(data: bytes) -> dict | None:
    try:
        verdict = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(verdict, dict) or verdict.get("status") not in STATUSES:
        return None
    return {"status": verdict["status"], "reason": str(verdict.get("reason", ""))}


def run_many(jobs: Sequence[tuple], max_workers: int | None = None,
             limits: SandboxLimits | None = None) -> list[ExecResult]:
    """Runs jobs `(program, test_code[, entry_point[, context]])` (the arguments of
    `run_python_tests`), at most `max_workers` at a time (default: CPU count); results
    in job order. One job's crash or limit never touches another."""
    workers = max_workers or os.cpu_count() or 1

    def run(job: tuple) -> ExecResult:
        program, test_code, *rest = job
        entry_point, context = (list(rest) + [None, ""])[:2]
        return run_python_tests(program, test_code, limits=limits, entry_point=entry_point,
                                context=context)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, jobs))
