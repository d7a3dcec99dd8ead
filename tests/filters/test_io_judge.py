"""Stdin/stdout judging: tiny competitive-programming problems, every verdict, the
compare rules, both isolation modes, and reading the cases of APPS / LiveCodeBench."""
import base64
import json
import pickle
import time
import uuid
import zlib

import pytest

from distill_jax.filters import io_judge
from distill_jax.filters.code_exec import SandboxLimits
from distill_jax.filters.io_judge import io_cases_from_reference, run_io_tests

FAST = SandboxLimits(wall_time_s=5, cpu_time_s=2)
CASE_S = 1.0


def judge(program, cases, **kw):
    kw.setdefault("limits", FAST)
    kw.setdefault("case_time_s", CASE_S)
    return run_io_tests(program, cases, **kw)


def verdicts(result):
    return [c.verdict for c in result.cases]


# ---------------------------------------------------------------- problems
# Each: cases, an accepted solution, and wrong ones with the index of their first
# failing case.

SUM_CASES = [{"input": "1 2 3\n", "output": "6\n"},
             {"input": "-5 5\n", "output": "0\n"},
             {"input": "1000000000 1000000000 1000000000\n", "output": "3000000000\n"},
             {"input": "7\n", "output": "7\n"}]
SUM_OK = "print(sum(map(int, input().split())))\n"
SUM_WRONG = "nums = list(map(int, input().split()))\nprint(sum(nums[:2]))\n"   # drops the 3rd

SORT_CASES = [{"input": "3\n3 1 2\n", "output": "1 2 3\n"},
              {"input": "4\n10 9 100 1\n", "output": "1 9 10 100\n"},
              {"input": "1\n5\n", "output": "5\n"}]
SORT_OK = "n = int(input())\nprint(*sorted(map(int, input().split())))\n"
SORT_WRONG = "input()\nprint(*sorted(input().split()))\n"       # sorts as strings

STAIRS_CASES = [{"input": "1\n", "output": "1\n"}, {"input": "3\n", "output": "3\n"},
                {"input": "10\n", "output": "89\n"},
                {"input": "100000\n", "output": f"{0}\n"}]   # filled in below
STAIRS_OK = """
MOD = 10**9 + 7
def ways(n):
    a, b = 1, 1          # ways to reach step 0 and step 1
    for _ in range(n - 1):
        a, b = b, (a + b) % MOD
    return b
print(ways(int(input())))
"""
STAIRS_NO_MOD = STAIRS_OK.replace("(a + b) % MOD", "a + b")


def _stairs(n):
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, (a + b) % (10**9 + 7)
    return b


STAIRS_CASES[3]["output"] = f"{_stairs(100000)}\n"

MULTI_CASES = [{"input": "3\n4 6\n10 15\n7 13\n", "output": "2\n5\n1\n"},
               {"input": "2\n0 5\n12 12\n", "output": "5\n12\n"}]
MULTI_OK = """
import sys
from math import gcd
data = sys.stdin.buffer.read().split()
t = int(data[0])
out = []
for i in range(t):
    a, b = int(data[1 + 2 * i]), int(data[2 + 2 * i])
    out.append(str(gcd(a, b)))
sys.stdout.write("\\n".join(out) + "\\n")
"""
MULTI_WRONG = "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n" \
              "    print(min(a, b))\n"          # right on 7 13 but not on 4 6

PROBLEMS = {"sum": (SUM_CASES, SUM_OK, [(SUM_WRONG, 0)]),
            "sort": (SORT_CASES, SORT_OK, [(SORT_WRONG, 1)]),
            "stairs": (STAIRS_CASES, STAIRS_OK, [(STAIRS_NO_MOD, 3)]),
            "multi": (MULTI_CASES, MULTI_OK, [(MULTI_WRONG, 0)])}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_accepted_and_wrong_solutions(name):
    cases, ok, wrongs = PROBLEMS[name]
    r = judge(ok, cases)
    assert r.passed and r.status == "passed", r.reason
    assert verdicts(r) == ["passed"] * len(cases) and r.first_failure is None
    assert "audit-hook" in r.layers and "rlimits" in r.layers
    for program, first in wrongs:
        r = judge(program, cases)
        assert r.status == "failed" and not r.passed
        assert r.first_failure == first and verdicts(r)[-1] == "wrong_answer"
        assert r.reason.startswith(f"case {first}: wrong_answer: ")
        assert "expected" in r.reason and "got" in r.reason


# ---------------------------------------------------------------- compare rules


@pytest.mark.parametrize("printed", ["6 \r\n", "6", "  6\n\n\n", "6\t\n"])
def test_whitespace_variants_pass_tokens_and_fail_exact(printed):
    program = f"import sys\nsys.stdout.write({printed!r})\n"
    cases = [{"input": "", "output": "6\n"}]
    assert judge(program, cases).passed
    exact = judge(program, cases, compare="exact")
    assert exact.status == "failed" and verdicts(exact) == ["wrong_answer"]
    assert "first difference" in exact.reason
    assert judge("print(6)", cases, compare="exact").passed


def test_tokens_do_not_join_or_split_words():
    cases = [{"input": "", "output": "1 2\n"}]
    assert judge("print('12')", cases).status == "failed"
    assert judge("print('1\\n2')", cases).passed


def test_float_tolerance():
    cases = [{"input": "1 3\n", "output": "0.333333333333\n"},
             {"input": "2 3\n", "output": "0.666666666667\n"}]
    good = "a, b = map(int, input().split())\nprint(f'{a / b:.7f}')\n"    # 0.3333333
    coarse = "a, b = map(int, input().split())\nprint(f'{a / b:.2f}')\n"  # 0.33
    assert judge(good, cases, compare="float:1e-6").passed
    assert judge(good, cases).status == "failed"                 # tokens: not identical
    r = judge(coarse, cases, compare="float:1e-6")
    assert r.status == "failed" and "'0.33'" in r.reason
    assert judge(coarse, cases, compare="float:1e-2").passed
    # Relative error for big values; words must match exactly.
    big = [{"input": "", "output": "YES 123456789.0\n"}]
    assert judge("print('YES 123456789.1')", big, compare="float:1e-6").passed
    assert judge("print('yes 123456789.1')", big, compare="float:1e-6").status == "failed"
    assert judge("print('YES nan')", big, compare="float:1e-6").status == "failed"


@pytest.mark.parametrize("rule", ["lines", "float:", "float:abc", "float:-1", "Tokens"])
def test_unknown_compare_rule_raises(rule):
    with pytest.raises(ValueError, match="compare rule"):
        judge("print(1)", [{"input": "", "output": "1"}], compare=rule)


# ---------------------------------------------------------------- limits and crashes


def test_time_limit_on_one_input():
    program = "n = int(input())\nwhile n == 0:\n    pass\nprint(n * 2)\n"
    cases = [{"input": "1\n", "output": "2\n"}, {"input": "0\n", "output": "0\n"},
             {"input": "3\n", "output": "6\n"}]
    start = time.monotonic()
    r = judge(program, cases, stop_on_first_failure=False)
    assert verdicts(r) == ["passed", "time_limit", "passed"]
    assert r.status == "timeout" and r.first_failure == 1
    assert "limit of 1s" in r.reason
    assert time.monotonic() - start < 4
    sleeper = judge("import time\ntime.sleep(60)", [{"input": "", "output": ""}])
    assert sleeper.status == "timeout" and "wall-clock" in sleeper.reason
    assert sleeper.wall_s < 4


def test_memory_limit():
    r = judge("x = bytearray(10 * 2**30)\nx[-1] = 1\nprint(1)", [{"input": "", "output": "1"}])
    assert r.status == "failed" and verdicts(r) == ["memory_limit"]
    assert "MemoryError" in r.reason


def test_runtime_errors():
    r = judge("print(int(input()))", [{"input": "1\n", "output": "1\n"},
                                      {"input": "x\n", "output": "0\n"}])
    assert verdicts(r) == ["passed", "runtime_error"]
    assert r.status == "failed" and "ValueError" in r.reason and "ValueError" in r.stderr
    r = judge("import sys\nprint(1)\nsys.exit(4)", [{"input": "", "output": "1"}])
    assert verdicts(r) == ["runtime_error"] and "exit code 4" in r.reason
    assert judge("import sys\nprint(1)\nsys.exit()", [{"input": "", "output": "1"}]).passed
    r = judge("def f(:\n    pass", SUM_CASES)
    assert r.status == "error" and "SyntaxError" in r.reason
    assert verdicts(r) == ["compile_error"] * len(SUM_CASES)
    r = judge("import os\nos.fork()\nprint(1)", [{"input": "", "output": "1"}])
    assert verdicts(r) == ["runtime_error"] and "starting processes" in r.reason


def test_output_limit():
    limits = SandboxLimits(wall_time_s=5, cpu_time_s=2, max_output_bytes=1000)
    r = judge("for _ in range(1000):\n    print('x' * 10000)", [{"input": "", "output": "x"}],
              limits=limits)
    assert verdicts(r) == ["output_limit"] and r.status == "failed"
    assert "1000 bytes" in r.reason and len(r.cases[0].stdout) == 1000
    assert r.wall_s < 3
    # Just under the limit is judged as usual.
    assert judge("print('y' * 998)", [{"input": "", "output": "y" * 998}], limits=limits).passed


def test_non_utf8_output_is_judged_not_crashed():
    r = judge("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')", [{"input": "", "output": "1"}])
    assert r.status == "failed" and verdicts(r) == ["wrong_answer"]
    assert "not valid UTF-8" in r.reason and "\ufffd" in r.cases[0].stdout


def test_stop_on_first_failure_on_and_off():
    program = "a = int(input())\nprint(a if a != 2 else -1)\n"
    cases = [{"input": f"{k}\n", "output": f"{k}\n"} for k in range(5)]
    on = judge(program, cases)
    assert verdicts(on) == ["passed", "passed", "wrong_answer"] and on.first_failure == 2
    off = judge(program, cases, stop_on_first_failure=False)
    assert verdicts(off) == ["passed", "passed", "wrong_answer", "passed", "passed"]
    assert off.first_failure == 2 and off.status == "failed"
    crash = "a = int(input())\nassert a != 1\nprint(a)\n"
    assert verdicts(judge(crash, cases)) == ["passed", "runtime_error"]
    assert verdicts(judge(crash, cases, stop_on_first_failure=False)) == \
        ["passed", "runtime_error", "passed", "passed", "passed"]


def test_malformed_cases_raise_before_running(monkeypatch):
    def no_sandbox(*a, **k):
        raise AssertionError("the sandbox was started")
    monkeypatch.setattr(io_judge, "SandboxedChild", no_sandbox)
    with pytest.raises(ValueError, match=r"case 1: missing 'output'"):
        run_io_tests("print(1)", [{"input": "", "output": "1"}, {"input": "2"}])
    with pytest.raises(ValueError, match=r"case 0: 'input' must be a str"):
        run_io_tests("print(1)", [{"input": 5, "output": "1"}])
    with pytest.raises(ValueError, match=r"case 0: not a dict"):
        run_io_tests("print(1)", ["1"])
    with pytest.raises(ValueError, match="isolation"):
        run_io_tests("print(1)", [{"input": "", "output": "1"}], isolation="thread")
    with pytest.raises(ValueError, match="no cases"):
        run_io_tests("print(1)", [])


def test_many_cases_are_split_across_sandboxes(monkeypatch):
    monkeypatch.setattr(io_judge, "FORK_CHUNK", 3)
    program = "a = int(input())\nprint(a if a != 5 else -1)\n"
    cases = [{"input": f"{k}\n", "output": f"{k}\n"} for k in range(8)]
    r = judge(program, cases, stop_on_first_failure=False)
    assert [c.index for c in r.cases] == list(range(8))
    assert verdicts(r) == ["passed"] * 5 + ["wrong_answer"] + ["passed"] * 2
    r = judge(program, cases)
    assert verdicts(r) == ["passed"] * 5 + ["wrong_answer"] and r.first_failure == 5
    assert judge("print(int(input()))", cases).passed


# ---------------------------------------------------------------- expected outputs stay out

SEARCHER = """
import gc, os, re, sys
FIND = re.compile(("EXPECTED" + "_MARK_" + "[0-9a-f]{32}").encode())
found = set()

def look(x):
    if isinstance(x, str):
        x = x.encode("utf-8", "replace")
    if isinstance(x, (bytes, bytearray)):
        found.update(m.decode() for m in FIND.findall(x))

look(sys.stdin.buffer.read())               # its own input: the planted marker is here
for k, v in os.environ.items():
    look(k), look(v)
for root, dirs, files in os.walk("."):
    for name in files:
        try:
            look(open(os.path.join(root, name), "rb").read())
        except Exception:
            pass
for path in ("/proc/self/environ", "/proc/self/cmdline", f"/proc/{os.getppid()}/environ",
             f"/proc/{os.getppid()}/cmdline"):
    try:
        look(open(path, "rb").read())
    except Exception:
        pass
look(" ".join(sys.argv))
for obj in gc.get_objects():
    for ref in gc.get_referents(obj):
        look(ref)
frame = sys._getframe()
while frame is not None:
    for value in list(frame.f_locals.values()):
        look(value)
        if isinstance(value, dict):
            for k, v in value.items():
                look(k), look(v)
    frame = frame.f_back
# Every readable byte of its own address space, freed memory included (where the
# kernel lets it: a runner that became `nobody` is not dumpable, /proc/self/mem refuses).
try:
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            try:
                mem.seek(lo)
                look(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                pass
except PermissionError:
    pass
print(sorted(found)[0] if found else "nothing")
"""


@pytest.mark.parametrize("isolation", io_judge.ISOLATIONS)
def test_program_cannot_find_the_expected_output(isolation, monkeypatch):
    secret = f"EXPECTED_MARK_{uuid.uuid4().hex}"
    planted = f"EXPECTED_MARK_{uuid.uuid4().hex}"
    monkeypatch.setenv("DISTILL_EXPECTED", secret)
    # Case 0 checks the search itself: the marker is in its own input, which the program
    # never reads from stdin but finds in its memory. Case 1's answer is nowhere it can
    # look: not in the environment, files, objects, frames or raw memory of its process.
    cases = [{"input": f"{planted}\n", "output": planted},
             {"input": "nothing to see\n", "output": secret}]
    jobs = []

    class Spy(io_judge.SandboxedChild):
        def __init__(self, job, *args):
            jobs.append(json.dumps(job))
            super().__init__(job, *args)

    monkeypatch.setattr(io_judge, "SandboxedChild", Spy)
    r = judge(SEARCHER, cases, stop_on_first_failure=False, isolation=isolation)
    assert jobs and not any(secret in job or planted + '"' in job for job in jobs)
    assert verdicts(r) == ["passed", "wrong_answer"], r.reason
    assert secret not in r.cases[1].stdout
    # With "fork" the runner's memory held every input of the program (case 0's too),
    # which the program may find in raw memory; with "process" only its own.
    assert r.cases[1].stdout.strip() in (("nothing", planted) if isolation == "fork"
                                         else ("nothing",))


# ---------------------------------------------------------------- fork vs process

MATRIX = [
    (SUM_OK, SUM_CASES), (SUM_WRONG, SUM_CASES), (SORT_WRONG, SORT_CASES),
    (STAIRS_OK, STAIRS_CASES), (MULTI_WRONG, MULTI_CASES),
    ("print(int(input()))", [{"input": "1\n", "output": "1"}, {"input": "a", "output": "0"}]),
    ("x = bytearray(10 * 2**30)", [{"input": "", "output": ""}]),
    ("print('z' * 100000)", [{"input": "", "output": "z"}]),
    ("def f(:", SUM_CASES),
    ("import time\nn = int(input())\ntime.sleep(30 if n == 2 else 0)\nprint(n)",
     [{"input": f"{k}", "output": f"{k}"} for k in range(4)]),
]


@pytest.mark.parametrize("stop", [True, False])
def test_fork_and_process_isolation_agree(stop):
    for program, cases in MATRIX:
        fork = judge(program, cases, stop_on_first_failure=stop, case_time_s=0.5)
        proc = judge(program, cases, stop_on_first_failure=stop, case_time_s=0.5,
                     isolation="process")
        assert (fork.status, fork.first_failure, verdicts(fork)) == \
            (proc.status, proc.first_failure, verdicts(proc)), program
        assert fork.layers == proc.layers


# ---------------------------------------------------------------- references


def test_cases_from_our_format():
    ref = {"io_tests": [{"input": "1 2\n", "output": "3\n"}]}
    assert io_cases_from_reference(ref) == [{"input": "1 2\n", "output": "3\n"}]
    assert io_cases_from_reference({"answer": "3"}) is None
    assert io_cases_from_reference({"io_tests": []}) is None
    with pytest.raises(ValueError, match=r"io_tests'\]\[1\]\['output'\] is missing"):
        io_cases_from_reference({"io_tests": [{"input": "1", "output": "1"}, {"input": "2"}]})


def test_cases_from_apps():
    spec = {"inputs": ["1 2\n", ["3 4", "5 6"]], "outputs": ["3\n", ["7", "11"]]}
    want = [{"input": "1 2\n", "output": "3\n"}, {"input": "3 4\n5 6", "output": "7\n11"}]
    assert io_cases_from_reference({"input_output": json.dumps(spec)}) == want
    assert io_cases_from_reference({"input_output": spec}) == want
    calls = {"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "add"}
    assert io_cases_from_reference({"input_output": json.dumps(calls)}) is None
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        io_cases_from_reference({"input_output": {"inputs": ["1", "2"], "outputs": ["1"]}})
    with pytest.raises(ValueError, match=r"\['inputs'\]\[0\] must be a string"):
        io_cases_from_reference({"input_output": {"inputs": [5], "outputs": ["1"]}})
    with pytest.raises(ValueError, match="neither JSON"):
        io_cases_from_reference({"input_output": "{not json"})


def test_cases_from_livecodebench():
    public = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    private = [{"input": "5\n", "output": "10\n", "testtype": "stdin"},
               {"input": "[1]", "output": "2", "testtype": "functional"}]
    # LiveCodeBench's release files compress the private tests: b64(zlib(pickle(json))).
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(private)))).decode()
    want = [{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "10\n"}]
    for priv in (private, json.dumps(private), packed):
        ref = {"public_test_cases": json.dumps(public), "private_test_cases": priv}
        assert io_cases_from_reference(ref) == want
    functional = [{"input": "[1]", "output": "2", "testtype": "functional"}]
    assert io_cases_from_reference({"public_test_cases": functional}) is None
    with pytest.raises(ValueError, match=r"private_test_cases'\]\[0\]: unknown testtype"):
        io_cases_from_reference({"public_test_cases": public,
                                 "private_test_cases": [{"input": "", "output": "",
                                                         "testtype": "stdio"}]})
    with pytest.raises(ValueError, match=r"public_test_cases'\]\[0\]\['output'\]"):
        io_cases_from_reference({"public_test_cases": [{"input": "1", "testtype": "stdin"}]})


def test_compressed_tests_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))
    packed = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ValueError, match="neither JSON"):
        io_cases_from_reference({"private_test_cases": packed})
    assert not (tmp_path / "pwned").exists()


def test_reference_cases_are_judged_end_to_end():
    spec = {"inputs": ["2\n1 2\n3 4\n"], "outputs": ["3\r\n7\r\n"]}
    cases = io_cases_from_reference({"input_output": json.dumps(spec)})
    program = "for _ in range(int(input())):\n    print(sum(map(int, input().split())))\n"
    assert judge(program, cases).passed


def test_float_tolerance_never_relaxes_an_expected_integer():
    from distill_jax.filters.io_judge import comparer
    same = comparer("float:1e-6")
    assert same("1000000007\n", "1000000008\n") is not None      # a residue: exact
    assert same("0.3333333\n", "0.33333334\n") is None            # a real: within 1e-6
    assert same("2.0\n", "2\n") is None
