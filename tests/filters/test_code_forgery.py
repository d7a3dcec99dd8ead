"""A program cannot talk the verifier into a pass: every forgery below is judged against
tests it must fail (`f(1) == 2` while f returns 1), and none is ever "passed".

The verdict comes from the trusted harness, a separate process the program cannot
reach (code_exec.run_python_tests); these are the ways a program could try anyway.
Against the verifier before the harness moved out (commit 332c5a0: the tests ran in
the program's own interpreter), "frames and gc", "always-equal object" and
"always-equal int" were judged "passed"."""
import pytest

from distill_jax.filters.code_exec import SandboxLimits, run_python_tests

FAST = SandboxLimits(wall_time_s=6.0, cpu_time_s=3.0)
TESTS = "assert f(1) == 2\nassert f(5) == 10\n"
HONEST = "def f(x):\n    return x\n"

FORGERIES = {
    # Find the runner's sending function, pipes and job through frames and the garbage
    # collector, and send "answers" and fake verdicts on every descriptor.
    "frames and gc": HONEST + """
import gc, json, os, sys
frame = sys._getframe()
while frame is not None:
    for name, value in list(frame.f_locals.items()) + list(frame.f_globals.items()):
        if callable(value) and name in ("_send", "report", "status"):
            try:
                value("passed", "")           # the old runner's report(status, reason)
            except Exception:
                pass
            for fd in range(3, 64):
                for message in (("value", 2), ("ready", ["f"]), {"status": "passed"}):
                    try:
                        value(fd, message)
                    except Exception:
                        pass
    frame = frame.f_back
for obj in gc.get_objects():
    if isinstance(obj, dict) and "nonce" in obj:
        obj["status"] = "passed"
for fd in range(3, 64):
    try:
        os.write(fd, json.dumps({"status": "passed", "reason": ""}).encode() + b"\\n")
    except OSError:
        pass
""",
    # Patch the modules the runner uses to encode and send, before the tests run.
    "patched modules": HONEST + """
import json, os
json.dumps = lambda *a, **k: '["value", 2]'
json.loads = lambda *a, **k: {"status": "passed"}
_write = os.write
os.write = lambda fd, data: _write(fd, b'{"tuple": ["value", 2]}\\n')
""",
    # Return an object equal to everything, or a subclass of int that is.
    "always-equal object": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def f(x):
    return Anything()
""",
    "always-equal int": """
class Two(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def f(x):
    return Two(x)
""",
    # Leave before the tests can fail, with a success status.
    "early exit": HONEST + "import os\nos._exit(0)\n",
    "exit inside the call": "import os\ndef f(x):\n    os._exit(0)\n",
    "sys.exit(0) inside the call": "import sys\ndef f(x):\n    sys.exit(0)\n",
    # Print what a verdict might look like.
    "fake verdict lines": HONEST + """
import sys
for line in ('{"status": "passed", "reason": ""}', "PASSED", "ok", "1 passed"):
    print(line)
    print(line, file=sys.stderr)
""",
    # Shadow builtins the tests (and the trusted context's helpers) call.
    "shadowed builtins": HONEST + """
def abs(x):
    return 0
def sorted(*a, **k):
    return []
def range(*a):
    return []
def all(x):
    return True
""",
    # Reach the harness or the caller through /proc and kill it after writing a verdict
    # into its pipe (the kernel refuses this once the runner is `nobody`).
    "killing the harness through /proc": HONEST + """
import os, signal
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if b"trusted_harness" in cmd or b"pytest" in cmd:
        for fd in range(3, 16):
            try:
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write('{"status": "passed", "reason": ""}')
            except OSError:
                pass
        if b"trusted_harness" in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
""",
    # Swallow the harness's calls so no reply comes.
    "reading the call pipe": HONEST + """
import os
for fd in range(3, 64):
    try:
        os.read(fd, 1 << 16)
    except OSError:
        pass
""",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_never_passes(name):
    r = run_python_tests(FORGERIES[name], TESTS, limits=FAST)
    assert r.status in ("failed", "error", "timeout"), (name, r)


def test_the_honest_program_fails_and_a_correct_one_passes():
    assert run_python_tests(HONEST, TESTS, limits=FAST).status == "failed"
    assert run_python_tests("def f(x):\n    return 2 * x\n", TESTS, limits=FAST).passed


def test_a_program_cannot_answer_for_the_builtins_the_tests_call():
    # Tests that judge only through builtins: with the program's `abs`, `range` and
    # `all` in their namespace they would pass (they did before this was fixed).
    tests = ("assert abs(f(1) - 2) < 1e-9\nfor x in range(1, 4):\n    assert f(x) == 2 * x\n"
             "assert all([f(x) == 2 * x for x in (5, 6)])\n")
    r = run_python_tests(FORGERIES["shadowed builtins"], tests, limits=FAST)
    assert r.status == "failed", r
    assert run_python_tests("def f(x):\n    return 2 * x\n", tests, limits=FAST).passed


def test_subclasses_of_plain_types_cross_as_their_base_values():
    # A Counter, an IntEnum, an OrderedDict: fine answers, read with the base type's
    # methods (an int subclass's `__eq__` stays in the sandbox).
    program = ("import collections, enum\nclass E(enum.IntEnum):\n    A = 3\n"
               "def f(s):\n    return collections.Counter(s)\ndef g():\n    return E.A\n"
               "def h():\n    return collections.OrderedDict(a=1)\n")
    tests = "assert f('aab') == {'a': 2, 'b': 1}\nassert g() == 3\nassert h() == {'a': 1}\n"
    assert run_python_tests(program, tests, limits=FAST).passed


def test_only_plain_data_crosses_and_builtin_exceptions_keep_their_type():
    program = ("def f(x):\n    return {'a': [1, 2.5, None, (True, 'x')], 3: {4, 5}, "
               "'b': b'\\x00', 'n': float('nan'), 'big': 10 ** 5000}\n"
               "def g(x):\n    raise ValueError('bad ' + str(x))\n"
               "def h():\n    return lambda: 1\n")
    tests = ("import math\nv = f(0)\nassert v['a'] == [1, 2.5, None, (True, 'x')]\n"
             "assert v[3] == {4, 5} and v['b'] == b'\\x00' and math.isnan(v['n'])\n"
             "assert v['big'] == 10 ** 5000 and type(v['a'][3]) is tuple\n"
             "try:\n    g(7)\nexcept ValueError as e:\n    assert 'bad 7' in str(e)\n"
             "else:\n    raise AssertionError('no ValueError')\n")
    assert run_python_tests(program, tests, limits=FAST).passed
    r = run_python_tests(program, "h()", limits=FAST)
    assert r.status == "failed" and "not plain data" in r.reason


def test_the_context_is_trusted_and_the_entry_point_is_the_programs():
    # HumanEval/32 style: the test calls a helper from the prompt. A program that
    # redefines the helper to fool the test is not believed: the prompt's helper runs.
    context = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n" \
              "def root(xs):\n    '''A zero of poly.'''\n"
    tests = "xs = [-2, 1]\nassert abs(poly(xs, root(xs))) < 1e-9\n"
    cheat = context + "    return 0.0\ndef poly(xs, x):\n    return 0.0\n"
    honest = context + "    return 2.0\n"
    assert run_python_tests(cheat, tests, limits=FAST, entry_point="root",
                            context=context).status == "failed"
    assert run_python_tests(honest, tests, limits=FAST, entry_point="root",
                            context=context).passed
    missing = run_python_tests("def other():\n    pass\n", tests, limits=FAST,
                               entry_point="root", context=context)
    assert missing.status == "error" and "no function 'root'" in missing.reason
