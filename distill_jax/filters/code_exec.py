"""Code verification: run a generated Python program against tests in a sandbox.

Each program runs in its own process (`sandbox_runner.py`), in a fresh
temporary directory that is deleted afterwards, with an environment holding
only PATH/HOME/TMPDIR/LANG, under wall-clock and CPU limits, an address-space
limit, a file-size limit, and with stdout/stderr capped. The runner adds
network and mount namespaces where the OS allows them and a Python audit hook
everywhere (details and the order of layers: `sandbox_runner.py`); the
`layers` field of each result says which were in force.

What this protects against: model-written code that loops, allocates without
bound, forks, talks to the network, writes or deletes files outside its
directory, or reads the caller's secrets — by mistake or by the usual escapes.
It is not a boundary against a determined attacker (the audit hook lives in
the same interpreter as the program); for hostile code, run the filter stage
inside a VM or gVisor as well.

Statuses: "passed" (program and tests ran to the end), "failed" (the tests
raised, e.g. an AssertionError), "timeout" (wall or CPU limit), "error" (the
program did not compile or raised before the tests, hit the memory limit, or
exited early).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
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


def _remove_cgroup(path: str) -> None:
    if not path:
        return
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)      # the killed processes are still being reaped


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


def run_python_tests(program: str, test_code: str = "", timeout_s: float | None = None,
                     limits: SandboxLimits | None = None) -> ExecResult:
    """Runs `program` then `test_code` in one namespace in the sandbox."""
    limits = limits or SandboxLimits()
    if timeout_s is not None:
        limits = dataclasses.replace(limits, wall_time_s=timeout_s,
                                     cpu_time_s=min(limits.cpu_time_s, timeout_s))
    workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
    cgroup = _make_pids_cgroup(limits.max_processes)
    read_fd, write_fd = os.pipe()
    nonce = secrets.token_hex(16)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8"}
    job = {"program": program, "test_code": test_code, "nonce": nonce, "result_fd": write_fd,
           "workdir": workdir, "cgroup_dir": cgroup, "limits": dataclasses.asdict(limits)}
    start = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=workdir, env=env, pass_fds=(write_fd,),
            start_new_session=True)
        os.close(write_fd)
        write_fd = -1
        readers = [_CappedReader(proc.stdout, limits.max_output_bytes),
                   _CappedReader(proc.stderr, limits.max_output_bytes)]
        for r in readers:
            r.start()
        result_reader = _CappedReader(os.fdopen(read_fd, "rb", buffering=0), 1 << 16)
        read_fd = -1
        result_reader.start()
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_time_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
        for r in (*readers, result_reader):
            r.join(timeout=5)
        wall = time.monotonic() - start
        stdout, stderr = readers[0].text(), readers[1].text()
        report = _parse_report(bytes(result_reader.data), nonce)
        layers = tuple(report.get("layers", ())) if report else ()
        if timed_out:
            return ExecResult("timeout", f"wall-clock limit of {limits.wall_time_s:g}s",
                              stdout, stderr, proc.returncode, wall, layers)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not report:
            return ExecResult("timeout", f"CPU limit of {limits.cpu_time_s:g}s", stdout, stderr,
                              proc.returncode, wall, layers)
        if report:
            return ExecResult(report["status"], report.get("reason", ""), stdout, stderr,
                              proc.returncode, wall, layers)
        reason = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exited with code {proc.returncode} before the tests finished")
        if proc.returncode == -signal.SIGXFSZ:
            reason = f"file size limit of {limits.max_file_bytes} bytes"
        return ExecResult("error", reason, stdout, stderr, proc.returncode, wall, layers)
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        _remove_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kills the runner and anything it started (its own session / process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _parse_report(data: bytes, nonce: str) -> dict | None:
    try:
        report = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(report, dict) or report.get("nonce") != nonce \
            or report.get("status") not in STATUSES:
        return None
    return report


def run_many(jobs: Sequence[tuple[str, str]], max_workers: int | None = None,
             limits: SandboxLimits | None = None) -> list[ExecResult]:
    """Runs (program, test_code) jobs, at most `max_workers` at a time (default:
    CPU count); results in job order. One job's crash or limit never touches another."""
    workers = max_workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_python_tests(job[0], job[1], limits=limits), jobs))
