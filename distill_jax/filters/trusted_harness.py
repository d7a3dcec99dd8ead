"""The trusted side of function-call tests: runs the tests, calls the program remotely.

Started by `code_exec.run_python_tests` as `python -I trusted_harness.py`, beside the
sandboxed child that runs the untrusted program (sandbox_runner.py `_serve`). It
reads its job (JSON) on stdin:
  {"test_code": str, "context": str, "entry_point": str | null,
   "call_fd": int, "reply_fd": int, "verdict_fd": int}
and writes one verdict {"status": "passed" | "failed" | "error", "reason": str} to
verdict_fd, an fd only this process holds: the program cannot reach the tests,
the expected values, the comparisons or the verdict.

Namespace of the tests: the trusted `context` first (a HumanEval prompt: the
helper functions a test may call, such as `poly` or `encode_cyclic`), then a
proxy for each function the program defines that neither the context nor the
builtins do (a program's `abs` or `sum` never answers for the tests) -- and
always for `entry_point`, the function under test. A proxy call sends the
arguments as plain data (plain_data.py) and returns the program's answer rebuilt
as fresh builtins, so `assert candidate(x) == y` compares values the program
never touched. An exception the program raises is raised here as the builtin
exception of that name (tests that expect a ValueError still work), else as
ProgramRaised.
"""
import builtins
import json
import os
import sys
import traceback

# plain_data.py sits next to this script; `-I` keeps the script's folder off sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain_data  # noqa: E402
del sys.path[0]

MAX_REPLY_BYTES = 64 << 20


class ProgramRaised(Exception):
    """The function under test raised an exception that is not a builtin one."""


class ProgramGone(Exception):
    """The program stopped answering: it exited, was killed, or broke the protocol."""


class Program:
    """The sandboxed program, seen through its two pipes."""

    def __init__(self, call_fd: int, reply_fd: int):
        self._calls = os.fdopen(call_fd, "wb")
        self._replies = os.fdopen(reply_fd, "rb")

    def receive(self):
        line = self._replies.readline(MAX_REPLY_BYTES)
        if not line:
            raise ProgramGone("the program exited or was killed")
        if not line.endswith(b"\n"):
            raise ProgramGone(f"a reply of more than {MAX_REPLY_BYTES} bytes")
        message = plain_data.decode(line)
        if type(message) is not tuple or not message or type(message[0]) is not str:
            raise ProgramGone(f"a malformed reply {str(message)[:100]}")
        return message

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            request = plain_data.encode(("call", name, list(args), kwargs))
        except plain_data.NotPlainData as e:
            raise TypeError(f"an argument of {name}() is not plain data: {e}") from None
        try:
            self._calls.write(request.encode() + b"\n")
            self._calls.flush()
        except (BrokenPipeError, OSError):
            raise ProgramGone(f"the program exited before {name}() was called") from None
        reply = self.receive()
        kind = reply[0]
        if kind == "value" and len(reply) == 2:
            return reply[1]
        if kind == "raised" and len(reply) == 3:
            _, type_name, message = reply
            if type_name == "SystemExit":
                raise ProgramGone(f"{name}() exited (SystemExit {message})")
            error = getattr(builtins, str(type_name), None)
            if isinstance(error, type) and issubclass(error, Exception):
                raise error(f"{name}() raised {type_name}: {message}")
            raise ProgramRaised(f"{name}() raised {type_name}: {message}")
        if kind == "not plain" and len(reply) == 2:
            raise TypeError(f"{name}() returned something that is not plain data: {reply[1]}")
        raise ProgramGone(f"a malformed reply to {name}(): {str(reply)[:100]}")


def _proxy(program: Program, name: str):
    def call(*args, **kwargs):
        return program.call(name, args, kwargs)
    call.__name__ = call.__qualname__ = name
    return call


def _judge(job: dict) -> tuple[str, str]:
    program = Program(int(job["call_fd"]), int(job["reply_fd"]))
    try:
        hello = program.receive()
    except (ProgramGone, plain_data.NotPlainData) as e:
        return "error", f"{e} before the tests started"
    if hello[0] == "error" and len(hello) == 2:
        return "error", str(hello[1])
    if hello[0] != "ready" or len(hello) != 2 or type(hello[1]) is not list:
        return "error", f"a malformed greeting {str(hello)[:100]}"
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(job.get("context") or "", "<context>", "exec"), namespace)
    for name in hello[1]:
        # Never a builtin's name: a program's `abs` or `sum` would otherwise answer for
        # the tests and for the context's own helpers.
        if type(name) is str and (name == job.get("entry_point") or (
                name not in namespace and not hasattr(builtins, name))):
            namespace[name] = _proxy(program, name)
    entry_point = job.get("entry_point")
    if entry_point and entry_point not in hello[1]:
        return "error", f"the program defines no function {entry_point!r}"
    try:
        exec(compile(job.get("test_code") or "", "<tests>", "exec"), namespace)
    except ProgramGone as e:
        return "error", f"{e} before the tests finished"
    except SystemExit as e:
        return "failed", f"SystemExit({e.code!r}) in the tests"
    except BaseException as e:  # noqa: BLE001 — any failure of the tests is a verdict
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        sys.stderr.write("".join(tb[-3:]))
        return "failed", f"{type(e).__name__} in the tests: {str(e)[:300]}"
    return "passed", ""


def main() -> None:
    job = json.loads(sys.stdin.read())
    verdict_fd = int(job["verdict_fd"])
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    try:
        status, reason = _judge(job)
    except BaseException as e:  # noqa: BLE001 — a broken test file is an error, said so
        status, reason = "error", f"the harness failed: {type(e).__name__}: {str(e)[:300]}"
    os.write(verdict_fd, json.dumps({"status": status, "reason": reason}).encode())


if __name__ == "__main__":
    main()
