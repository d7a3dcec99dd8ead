"""Judging programs on stdin/stdout tests (competitive-programming data: APPS,
CodeContests, LiveCodeBench).

`run_io_tests(program, cases)` runs a Python program once per test input in the
sandbox of `code_exec` (same limits, layers and work directory) and compares each
output with the expected one here, in the parent. A case is {"input": str,
"output": str}; `io_cases_from_reference` reads them from a record's reference
(our `io_tests`, APPS' `input_output`, LiveCodeBench's `public_test_cases` /
`private_test_cases`).

Compare rules (`compare=`), applied to the output decoded as UTF-8 (bytes that are
not UTF-8 are replaced by U+FFFD and judged, never a crash; the reason says so):
  * "tokens" (default): the outputs split on ASCII whitespace must be the same list
    of tokens, as Codeforces' and LiveCodeBench's checkers do: "\\r\\n", trailing
    spaces, blank lines and a missing final newline are accepted;
  * "exact": the decoded output equals the expected text, character for character;
  * "float:<tol>" (e.g. "float:1e-6"): tokens; where the expected token is a real
    number (a point or an exponent) and the output's is a number, they are equal
    when |got - expected| <= tol * max(1, |expected|) (absolute or relative error);
    all other tokens must be identical (an expected integer -- a count, a residue
    mod 1e9+7 -- is exact).

Verdicts, per case: "passed", "wrong_answer", "runtime_error" (an uncaught
exception, a non-zero exit, a signal), "time_limit" (the case's wall limit
`case_time_s`, or its CPU limit: min(limits.cpu_time_s, ceil(case_time_s))
seconds), "memory_limit" (MemoryError under limits.memory_bytes of address space),
"output_limit" (more than limits.max_output_bytes printed: the program is killed
as soon as it passes the limit), and "compile_error" (every case, when the program
does not compile). `IOResult.status`: "passed" when every case passed, "error"
after a compile error (or when the sandbox itself failed), "timeout" when a case
hit its time limit, else "failed"; `reason` names the first failing case, its
verdict, and expected vs got (truncated). With stop_on_first_failure (default),
judging stops at the first failing case: `cases` ends there.

Why expected outputs never enter the sandbox: a program that could read them could
print them. Whatever the program can reach -- its process's memory (objects via
`gc`, frames, raw bytes in /proc/self/mem), files in its directory, the
environment -- holds only inputs (with "fork", the inputs of every case of the
program: the runner received them all). The expected outputs, the comparison and
the verdict stay in this process; the sandbox hands back raw output bytes (base64
in JSON lines, on a pipe that each case's child closes before the program runs) and
exit facts. A program can only print an answer.

Isolation:
  * "fork" (default): one sandbox (one `sandbox_runner.py` process, locked down
    once) per program, or per FORK_CHUNK = 256 cases of it. The runner compiles
    the program once and forks a child per case; it never runs program code
    itself. Each child starts with CPU time 0 (so the CPU limit holds per case),
    runs the program in a fresh `__main__` and installs the audit hook itself.
    Memory and module state do not carry over from case to case (a new child each
    time); files written in the work directory do, since it is the program's for
    all of its cases.
  * "process": one sandbox per case (a new interpreter, work directory and
    lock-down each time): slower, kept to measure "fork" against
    (benchmarks/code_judge_throughput.py).
stop_on_first_failure: the runner stops by itself after a case that failed in a way
it can see (a limit, a signal, a non-zero exit); a wrong answer only this process
can see, and it then stops reading and kills the sandbox (a case already started
is lost, at most one).
Wall limits: each case has `case_time_s`; a sandbox is given limits.wall_time_s
(start-up and the runner's own work) plus case_time_s per case of it before it is
killed (status "timeout").
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import pickle
import re
import selectors
import signal
import time
import zlib
from typing import Callable

from distill_jax.filters.code_exec import SandboxedChild, SandboxLimits, _Pipes

VERDICTS = ("passed", "wrong_answer", "runtime_error", "time_limit", "memory_limit",
            "output_limit", "compile_error")
ISOLATIONS = ("fork", "process")
# Cases per sandbox with isolation="fork": the runner's own CPU time (about 0.5 ms a
# case, more with big outputs) counts against limits.cpu_time_s, so a problem with
# thousands of cases is judged by a few sandboxes in turn.
FORK_CHUNK = 256
_KEEP_CHARS = 2000            # stdout kept per CaseVerdict (the comparison sees it all)
_SHOW_CHARS = 60              # expected / got in a reason


@dataclasses.dataclass
class CaseVerdict:
    index: int
    verdict: str
    reason: str = ""
    wall_s: float = 0.0
    stdout: str = ""                 # decoded, the first _KEEP_CHARS characters
    stderr: str = ""                 # the last 4 KiB
    exit_code: int | None = None     # None when a signal ended it
    signal: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


@dataclasses.dataclass
class IOResult:
    status: str                      # "passed" | "failed" | "timeout" | "error"
    reason: str = ""
    cases: list[CaseVerdict] = dataclasses.field(default_factory=list)
    first_failure: int | None = None
    wall_s: float = 0.0
    layers: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def _shown(self) -> CaseVerdict | None:
        if self.first_failure is not None:
            for c in self.cases:
                if c.index == self.first_failure:
                    return c
        return self.cases[-1] if self.cases else None

    # ExecResult's other fields, from the first failing case (else the last one run).
    @property
    def stdout(self) -> str:
        c = self._shown()
        return c.stdout if c else ""

    @property
    def stderr(self) -> str:
        c = self._shown()
        return c.stderr if c else ""

    @property
    def returncode(self) -> int | None:
        c = self._shown()
        if c is None:
            return None
        return c.exit_code if c.signal is None else -c.signal


# ---------------------------------------------------------------- comparing

_TOKEN_RE = re.compile(r"[^ \t\n\r\x0b\x0c]+")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _short(text: str, limit: int = _SHOW_CHARS) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _tokens_differ(expected: str, got: str, same: Callable[[str, str], bool]) -> str | None:
    exp, out = _TOKEN_RE.findall(expected), _TOKEN_RE.findall(got)
    for k, (e, g) in enumerate(zip(exp, out)):
        if e != g and not same(e, g):
            return f"token {k + 1}: expected {_short(e, 30)}, got {_short(g, 30)}"
    if len(exp) != len(out):
        return f"expected {len(exp)} tokens, got {len(out)}"
    return None


def _exact_differ(expected: str, got: str) -> str | None:
    if expected == got:
        return None
    k = next((k for k, (e, g) in enumerate(zip(expected, got)) if e != g),
             min(len(expected), len(got)))
    return (f"first difference at character {k}: expected {_short(expected[k:k + 20], 30)}, "
            f"got {_short(got[k:k + 20], 30)}")


def _float_same(tol: float) -> Callable[[str, str], bool]:
    def same(e: str, g: str) -> bool:
        if not (_NUMBER_RE.fullmatch(e) and _NUMBER_RE.fullmatch(g)):
            return False
        if "." not in e and "e" not in e.lower():
            return False     # an expected integer (a count, a residue mod 1e9+7) is exact
        a, b = float(g), float(e)
        return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol * max(1.0, abs(b))
    return same


def comparer(rule: str) -> Callable[[str, str], str | None]:
    """The compare rule `rule` as a function (expected, got) -> None when they match,
    else a short description of the first difference. ValueError for an unknown rule."""
    if rule == "tokens":
        return lambda e, g: _tokens_differ(e, g, lambda a, b: False)
    if rule == "exact":
        return _exact_differ
    if isinstance(rule, str) and rule.startswith("float:"):
        try:
            tol = float(rule[len("float:"):])
        except ValueError:
            tol = float("nan")
        if not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"compare rule {rule!r}: the tolerance must be a number >= 0")
        same = _float_same(tol)
        return lambda e, g: _tokens_differ(e, g, same)
    raise ValueError(f"unknown compare rule {rule!r}: use 'tokens', 'exact' or 'float:<tol>'")


# ---------------------------------------------------------------- verdicts


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _case_verdict(index: int, raw: dict, expected: str, differ, limits: SandboxLimits,
                  case_time_s: float) -> CaseVerdict:
    data = base64.b64decode(raw["stdout_b64"])
    try:
        got, note = data.decode("utf-8"), ""
    except UnicodeDecodeError:
        got, note = data.decode("utf-8", errors="replace"), \
            " (the output is not valid UTF-8: judged decoded with replacement characters)"
    stderr = str(raw.get("stderr", ""))
    code, sig = raw.get("exit"), raw.get("signal")
    verdict = CaseVerdict(index, "passed", "", float(raw.get("wall_s", 0.0)), got[:_KEEP_CHARS],
                          stderr, code, sig)
    last_err = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    if raw.get("timeout"):
        verdict.verdict, verdict.reason = "time_limit", f"wall-clock limit of {case_time_s:g}s"
    elif sig == signal.SIGXCPU:
        cpu = max(1, min(int(limits.cpu_time_s), math.ceil(case_time_s)))
        verdict.verdict, verdict.reason = "time_limit", f"CPU limit of {cpu}s"
    elif raw.get("output_limit") or int(raw.get("stdout_total", 0)) > limits.max_output_bytes:
        verdict.verdict = "output_limit"
        verdict.reason = f"printed more than {limits.max_output_bytes} bytes"
    elif raw.get("memory"):
        verdict.verdict = "memory_limit"
        verdict.reason = f"MemoryError (limit {limits.memory_bytes} bytes of address space)"
    elif sig is not None:
        verdict.verdict = "runtime_error"
        verdict.reason = f"killed by {_signal_name(int(sig))}"
        if sig == signal.SIGXFSZ:
            verdict.reason += f" (file size limit of {limits.max_file_bytes} bytes)"
    elif code != 0:
        verdict.verdict = "runtime_error"
        verdict.reason = (last_err[:300] if code == 1 and last_err else f"exit code {code}"
                          + (f": {last_err[:300]}" if last_err else ""))
    else:
        difference = differ(expected, got)
        if difference is not None:
            verdict.verdict = "wrong_answer"
            verdict.reason = (f"{difference}; expected {_short(expected)}, got {_short(got)}"
                              + note)
    return verdict


def _summary(verdicts: list[CaseVerdict], n_cases: int) -> tuple[str, str, int | None]:
    failed = [v for v in verdicts if not v.passed]
    if not failed:
        if len(verdicts) < n_cases:     # should not happen: the caller checks
            return "error", f"only {len(verdicts)} of {n_cases} cases judged", None
        return "passed", f"{n_cases} of {n_cases} cases passed", None
    first = failed[0]
    reason = f"case {first.index}: {first.verdict}: {first.reason}"
    if len(failed) > 1 and first.verdict != "compile_error":
        counts: dict[str, int] = {}
        for v in failed:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        reason += (f" ({len(failed)} of {len(verdicts)} judged cases failed: "
                   + ", ".join(f"{k} {c}" for k, c in counts.items()) + ")")
    if first.verdict == "compile_error":
        status = "error"
    elif any(v.verdict == "time_limit" for v in failed):
        status = "timeout"
    else:
        status = "failed"
    return status, reason, first.index


# ---------------------------------------------------------------- the sandbox


class _SandboxFailure(Exception):
    """The sandbox stopped answering (not the program's verdict)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _run_sandbox(program: str, inputs: list[str], limits: SandboxLimits, case_time_s: float,
                 stop_on_first_failure: bool, on_case: Callable[[int, dict], bool]
                 ) -> tuple[str | None, tuple[str, ...]]:
    """One sandbox_runner.py on `inputs`: calls on_case(i, raw result) per case in order
    until it returns False. Returns (compile error or None, layers); raises
    _SandboxFailure when the runner stops early or runs past its deadline."""
    fds = _Pipes()
    result_r, result_w = fds.pipe()
    job = {"mode": "io", "program": program, "cases": inputs, "case_wall_time_s": case_time_s,
           "result_fd": result_w, "stop_on_first_failure": stop_on_first_failure}
    try:
        with SandboxedChild(job, limits, (result_w,)) as child:
            fds.close(result_w)
            deadline = child.start + limits.wall_time_s + len(inputs) * case_time_s
            buffer, next_case, compile_error = b"", 0, None
            done = timed_out = False
            with fds.take(result_r, "rb") as reader, selectors.DefaultSelector() as sel:
                sel.register(reader, selectors.EVENT_READ)
                while not done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not sel.select(remaining):
                        timed_out = True
                        break
                    chunk = reader.read(1 << 16)
                    if not chunk:
                        break
                    buffer += chunk
                    while not done and b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        try:
                            message = json.loads(line)
                        except ValueError:
                            raise _SandboxFailure("error", "a malformed line from the sandbox "
                                                  "runner") from None
                        if not isinstance(message, dict):
                            raise _SandboxFailure("error", "a malformed line from the sandbox "
                                                  "runner (not an object)")
                        if "compile_error" in message:
                            compile_error, done = str(message["compile_error"]), True
                        elif message.get("case") != next_case:
                            raise _SandboxFailure("error", "the sandbox answered out of order")
                        else:
                            next_case += 1
                            try:
                                go_on = on_case(message["case"], message)
                            except (KeyError, TypeError, ValueError, binascii.Error) as e:
                                raise _SandboxFailure("error", f"a malformed result from the "
                                                      f"sandbox runner ({e!r})") from None
                            done = not go_on or next_case == len(inputs)
            limit = child.limit_reason()
            child.kill()
            if done:
                return compile_error, child.layers()
            stderr = child.outputs()[1].strip()
            detail = f": {stderr.splitlines()[-1][:300]}" if stderr else ""
            if timed_out:
                raise _SandboxFailure("timeout", f"the sandbox did not finish within "
                                      f"{deadline - child.start:g}s (case {next_case})")
            if limit is not None:
                raise _SandboxFailure(limit[0], f"the sandbox runner stopped at case "
                                      f"{next_case}: {limit[1]}")
            raise _SandboxFailure("error", f"the sandbox runner stopped at case {next_case} "
                                  f"(exit {child.proc.returncode}){detail}")
    finally:
        fds.close_all()


def _check_cases(cases) -> None:
    if not isinstance(cases, (list, tuple)):
        raise ValueError(f"cases must be a list of {{'input', 'output'}} dicts, "
                         f"not {type(cases).__name__}")
    if not cases:
        raise ValueError("no cases to judge (a program with no tests would pass)")
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ValueError(f"case {i}: not a dict with 'input' and 'output'")
        for key in ("input", "output"):
            if key not in case:
                raise ValueError(f"case {i}: missing {key!r}")
            if not isinstance(case[key], str):
                raise ValueError(f"case {i}: {key!r} must be a str, "
                                 f"not {type(case[key]).__name__}")


def run_io_tests(program: str, cases: list[dict], limits: SandboxLimits | None = None,
                 case_time_s: float = 2.0, compare: str = "tokens",
                 stop_on_first_failure: bool = True, isolation: str = "fork") -> IOResult:
    """Judges `program` on stdin/stdout `cases` ([{"input": str, "output": str}, ...]);
    see the module docstring. ValueError, before anything runs, for a malformed case
    (naming its index), an unknown compare rule or isolation."""
    if not isinstance(program, str):
        raise ValueError(f"program must be a str, not {type(program).__name__}")
    _check_cases(cases)
    differ = comparer(compare)
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}: use 'fork' or 'process'")
    if not (case_time_s > 0):
        raise ValueError(f"case_time_s must be > 0, not {case_time_s!r}")
    limits = limits or SandboxLimits()
    start = time.monotonic()
    verdicts: list[CaseVerdict] = []
    layers: tuple[str, ...] = ()

    def on_case(offset: int):
        def judge(local: int, raw: dict) -> bool:
            index = offset + local
            verdicts.append(_case_verdict(index, raw, cases[index]["output"], differ, limits,
                                          case_time_s))
            return verdicts[-1].passed or not stop_on_first_failure
        return judge

    inputs = [c["input"] for c in cases]
    try:
        if isolation == "fork":
            runs = [(k, inputs[k:k + FORK_CHUNK]) for k in range(0, len(inputs), FORK_CHUNK)]
        else:
            runs = [(i, [text]) for i, text in enumerate(inputs)]
        for offset, chunk in runs:
            compile_error, run_layers = _run_sandbox(program, chunk, limits, case_time_s,
                                                     stop_on_first_failure, on_case(offset))
            layers = layers or run_layers
            if compile_error is not None:
                verdicts[:] = [CaseVerdict(i, "compile_error", compile_error)
                               for i in range(len(cases))]
                break
            if verdicts and not verdicts[-1].passed and stop_on_first_failure:
                break
    except _SandboxFailure as e:
        first = next((v.index for v in verdicts if not v.passed), None)
        return IOResult(e.status, e.reason, verdicts, first, time.monotonic() - start, layers)
    status, reason, first = _summary(verdicts, len(cases))
    return IOResult(status, reason, verdicts, first, time.monotonic() - start, layers)


# ---------------------------------------------------------------- references


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain builtins only: any class or function reference is refused, so
    nothing in the data can run code (LiveCodeBench pickles a JSON string)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name} in test data")


def _json_field(value, field: str):
    """A field that is JSON text or already parsed; LiveCodeBench's compressed private
    tests (base64 of zlib of a pickled JSON string) are read too."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        import io
        text = _NoGlobals(io.BytesIO(zlib.decompress(base64.b64decode(value, validate=True)))
                          ).load()
        if isinstance(text, bytes):
            text = text.decode()
        return json.loads(text) if isinstance(text, str) else text
    except (binascii.Error, zlib.error, pickle.UnpicklingError, ValueError, EOFError,
            TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"reference[{field!r}] is neither JSON nor LiveCodeBench's "
                         f"compressed form ({type(e).__name__})") from None


def _text(value, where: str) -> str:
    """A test input or output: a str, or APPS' list of lines."""
    if value is None:
        raise ValueError(f"{where} is missing")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError(f"{where} must be a string (or a list of strings), "
                     f"not {type(value).__name__}")


def io_cases_from_reference(reference: dict) -> list[dict] | None:
    """The stdin/stdout cases of a record's reference, as [{"input", "output"}, ...]:
      * ours: reference["io_tests"] = [{"input": str, "output": str}, ...];
      * APPS: reference["input_output"], JSON text or a dict {"inputs": [...],
        "outputs": [...]} (an element may be a list of lines: joined with "\\n");
        with "fn_name" it is a function-call problem: None;
      * LiveCodeBench: reference["public_test_cases"] and ["private_test_cases"],
        JSON text (or the compressed private form) or lists of {"input", "output",
        "testtype"}; the "stdin" ones of both, public first ("functional" ones are
        function calls).
    None when the reference has no stdin/stdout tests; ValueError naming the field and
    index for a malformed one."""
    if not isinstance(reference, dict):
        raise ValueError(f"reference must be a dict, not {type(reference).__name__}")
    if reference.get("io_tests") is not None:
        tests = _json_field(reference["io_tests"], "io_tests")
        if not isinstance(tests, list):
            raise ValueError(f"reference['io_tests'] must be a list, not {type(tests).__name__}")
        cases = []
        for i, t in enumerate(tests):
            if not isinstance(t, dict):
                raise ValueError(f"reference['io_tests'][{i}] must be a dict")
            cases.append({k: _text(t.get(k), f"reference['io_tests'][{i}][{k!r}]")
                          for k in ("input", "output")})
        return cases or None
    if reference.get("input_output") is not None:
        spec = _json_field(reference["input_output"], "input_output")
        if not isinstance(spec, dict):
            raise ValueError(f"reference['input_output'] must be a dict, "
                             f"not {type(spec).__name__}")
        if spec.get("fn_name"):
            return None
        inputs, outputs = spec.get("inputs"), spec.get("outputs")
        for key, value in (("inputs", inputs), ("outputs", outputs)):
            if not isinstance(value, list):
                raise ValueError(f"reference['input_output'][{key!r}] must be a list, "
                                 f"not {type(value).__name__}")
        if len(inputs) != len(outputs):
            raise ValueError(f"reference['input_output']: {len(inputs)} inputs but "
                             f"{len(outputs)} outputs")
        cases = [{"input": _text(x, f"reference['input_output']['inputs'][{i}]"),
                  "output": _text(y, f"reference['input_output']['outputs'][{i}]")}
                 for i, (x, y) in enumerate(zip(inputs, outputs))]
        return cases or None
    lcb = [f for f in ("public_test_cases", "private_test_cases") if reference.get(f) is not None]
    if lcb:
        cases = []
        for field in lcb:
            tests = _json_field(reference[field], field)
            if not isinstance(tests, list):
                raise ValueError(f"reference[{field!r}] must be a list, "
                                 f"not {type(tests).__name__}")
            for i, t in enumerate(tests):
                if not isinstance(t, dict):
                    raise ValueError(f"reference[{field!r}][{i}] must be a dict")
                kind = t.get("testtype", "stdin")
                if kind not in ("stdin", "functional"):
                    raise ValueError(f"reference[{field!r}][{i}]: unknown testtype {kind!r}")
                if kind == "stdin":
                    cases.append({k: _text(t.get(k), f"reference[{field!r}][{i}][{k!r}]")
                                  for k in ("input", "output")})
        return cases or None
    return None
