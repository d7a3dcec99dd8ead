"""The sympy worker process (sympy_worker.py) seen from the parent: start, ask, time out."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time

class SymbolicWorkerError(RuntimeError):
    """The sympy worker process could not be started (an environment problem)."""


class SymbolicChecker:
    """A sympy worker process with a hard per-call time limit.

    Sympy can hang in C code (huge integer powers) where no signal or thread
    can stop it, so it runs in a child process that is killed and restarted on
    timeout. Calls are serialized by a lock and work from any thread.
    """

    def __init__(self, memory_limit_bytes: int = 2 << 30):
        self.memory_limit_bytes = memory_limit_bytes
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.timeouts = 0

    def _start(self) -> subprocess.Popen:
        # A script path, not `-m`: the worker imports nothing of ours, and `-I`
        # keeps the caller's PYTHON* variables and user site out of it.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "DISTILL_SYMPY_MEMORY": str(self.memory_limit_bytes)}
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.join(os.path.dirname(__file__), "sympy_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1)
        # Importing sympy takes a second or more; it is not part of any call's limit.
        ready, _, _ = select.select([proc.stdout], [], [], 120.0)
        if not ready or proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            raise SymbolicWorkerError("the sympy worker process did not start")
        return proc

    def request(self, request: dict, timeout_s: float = 5.0) -> tuple[dict | None, float]:
        """The worker's reply to one request (sympy_worker.py), or None on a timeout,
        a dead worker or a malformed reply; and the seconds it took (start excluded)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            start = time.monotonic()
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, timeout_s))
                if not ready:
                    raise TimeoutError
                line = proc.stdout.readline()
                if not line:
                    raise TimeoutError      # the worker died (e.g. at its memory cap)
                reply = json.loads(line)
                if not isinstance(reply, dict):
                    raise ValueError(f"malformed reply {line[:100]!r}")
                return reply, time.monotonic() - start
            except (TimeoutError, OSError, ValueError):
                self.timeouts += 1
                self._kill()
                return None, time.monotonic() - start

    def equal(self, a: str, b: str, timeout_s: float = 5.0) -> bool:
        reply, _ = self.request({"op": "equal", "a": a, "b": b}, timeout_s)
        return reply is not None and reply.get("equal") is True

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()


_CHECKER: SymbolicChecker | None = None
_CHECKER_LOCK = threading.Lock()


def _symbolic_checker() -> SymbolicChecker:
    global _CHECKER
    with _CHECKER_LOCK:
        if _CHECKER is None:
            _CHECKER = SymbolicChecker()
        return _CHECKER

