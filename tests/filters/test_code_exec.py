"""The code sandbox: HumanEval's canonical solutions, and every escape the issue lists."""
import json
import os
import socket
import threading
import time
import uuid

import pytest

from distill_jax.filters.code_exec import (SandboxLimits, extract_code, humaneval_test_code,
                                           run_many, run_python_tests)

FAST = SandboxLimits(wall_time_s=6.0, cpu_time_s=3.0)


def _humaneval(shared_data):
    with open(os.path.join(shared_data, "humaneval.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_return_none_fails(shared_data):
    rows = _humaneval(shared_data)
    assert len(rows) == 164
    tests = [humaneval_test_code(r["test"], r["entry_point"]) for r in rows]
    # As the correctness filter judges them: the tests in the trusted harness, with the
    # prompt as trusted context and the entry point the program's.
    good = run_many([(r["prompt"] + r["canonical_solution"], t, r["entry_point"], r["prompt"])
                     for r, t in zip(rows, tests)], max_workers=4)
    failed = [(r["task_id"], g.status, g.reason) for r, g in zip(rows, good) if not g.passed]
    assert not failed
    none = run_many([(r["prompt"] + "    return None\n", t, r["entry_point"], r["prompt"])
                     for r, t in zip(rows, tests)], max_workers=4)
    passed = [r["task_id"] for r, n in zip(rows, none) if n.passed]
    assert not passed
    assert {n.status for n in none} <= {"failed", "error"}


def test_statuses_and_captured_output():
    ok = run_python_tests("def f(x):\n    print('hi')\n    return x + 1", "assert f(1) == 2",
                          limits=FAST)
    assert ok.status == "passed" and ok.stdout == "hi\n"
    bad = run_python_tests("def f(x):\n    return x", "assert f(1) == 2", limits=FAST)
    assert bad.status == "failed" and "AssertionError" in bad.reason
    assert "AssertionError" in bad.stderr
    syntax = run_python_tests("def f(x) return", "", limits=FAST)
    assert syntax.status == "error" and "SyntaxError" in syntax.reason
    raises = run_python_tests("raise ValueError('boom')", "", limits=FAST)
    assert raises.status == "error" and "ValueError in the program" in raises.reason


def test_infinite_loop_is_stopped_by_cpu_limit():
    r = run_python_tests("while True:\n    pass", "", limits=FAST)
    assert r.status == "timeout" and "CPU" in r.reason
    assert r.wall_s < FAST.wall_time_s + 2


def test_sleeping_forever_is_stopped_by_wall_clock():
    r = run_python_tests("import time\ntime.sleep(100)", "", limits=SandboxLimits(wall_time_s=2))
    assert r.status == "timeout" and "wall-clock" in r.reason and r.wall_s < 5


def test_allocating_10gib_fails():
    r = run_python_tests("x = bytearray(10 * 2**30)\nx[-1] = 1", "", limits=FAST)
    assert r.status == "error" and "memory" in r.reason.lower()


FORK_BOMB = """
import os, time
for _ in range(1000):
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
"""


def test_fork_bomb_is_denied():
    r = run_python_tests(FORK_BOMB, "", limits=FAST)
    assert r.status == "error" and "starting processes" in r.reason


def test_network_is_denied():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(2)
    port = server.getsockname()[1]
    received = []

    def accept():
        try:
            conn, _ = server.accept()
            received.append(conn.recv(100))
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'leaked')")
    r = run_python_tests(program, "", limits=FAST)
    t.join(3)
    server.close()
    assert r.status == "error" and "network" in r.reason
    assert received == []


def test_writes_outside_the_work_directory_are_denied(tmp_path):
    target = tmp_path / f"escape-{uuid.uuid4().hex}"
    tmp_target = f"/tmp/escape-{uuid.uuid4().hex}"
    for path in (target, tmp_target):
        r = run_python_tests(f"open({str(path)!r}, 'w').write('x')", "", limits=FAST)
        assert r.status == "error" and "outside the work directory" in r.reason
        assert not os.path.exists(path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    r = run_python_tests(f"import os\nos.remove({str(victim)!r})", "", limits=FAST)
    assert r.status == "error" and victim.read_text() == "keep me"
    # Its own directory is writable, and is gone afterwards.
    r = run_python_tests("import os\nopen('out.txt', 'w').write('ok')\nprint(os.getcwd())\n"
                         "def read():\n    return open('out.txt').read()",
                         "assert read() == 'ok'", limits=FAST)
    assert r.status == "passed"
    assert not os.path.exists(r.stdout.strip())


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_SECRET", "s3cret-value")
    r = run_python_tests("import os\nassert 'DISTILL_TEST_SECRET' not in os.environ\n"
                         "print(sorted(os.environ))", "", limits=FAST)
    assert r.status == "passed"
    assert "DISTILL_TEST_SECRET" not in r.stdout
    r = run_python_tests("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
                         "", limits=FAST)
    assert r.status == "error" and "s3cret" not in r.stdout


def test_early_exit_cannot_fake_a_pass():
    r = run_python_tests("import os\nos._exit(0)", "assert False", limits=FAST)
    assert r.status == "error" and "before the tests started" in r.reason
    r = run_python_tests("def f():\n    raise SystemExit(0)", "f()\nassert False", limits=FAST)
    assert r.status == "error" and "exited" in r.reason
    r = run_python_tests("import os\ndef f():\n    os._exit(0)", "f()\nassert False",
                         limits=FAST)
    assert r.status == "error" and "before the tests finished" in r.reason


def test_output_is_capped():
    r = run_python_tests("print('x' * 10_000_000)", "",
                         limits=SandboxLimits(max_output_bytes=1000))
    assert r.status == "passed"
    assert r.stdout.startswith("x" * 1000) and "more bytes dropped" in r.stdout
    assert len(r.stdout) < 1100


def test_bad_jobs_do_not_affect_good_ones_in_parallel():
    good = ("def f(x):\n    return 2 * x", "assert f(21) == 42")
    bad = [("while True:\n    pass", ""), ("x = bytearray(10 * 2**30)", ""), (FORK_BOMB, ""),
           ("import time\ntime.sleep(100)", "")]
    jobs = [good, *bad, good, good]
    start = time.monotonic()
    results = run_many(jobs, max_workers=3, limits=FAST)
    assert [r.status for r in results] == ["passed", "timeout", "error", "error", "timeout",
                                           "passed", "passed"]
    assert time.monotonic() - start < 30
    # And the parent can still run jobs afterwards.
    assert run_python_tests(*good, limits=FAST).passed


def _kernel_layer_result(program, layer):
    """Runs with the audit hook off: only the kernel layers stand in the way."""
    r = run_python_tests(program, "", limits=SandboxLimits(wall_time_s=6, cpu_time_s=3,
                                                           audit_hook=False))
    if layer not in r.layers:
        pytest.skip(f"this machine does not allow the {layer} layer (layers: {r.layers})")
    return r


def test_kernel_layers_alone_deny_network_writes_and_forks(tmp_path):
    r = _kernel_layer_result("import socket\nsocket.create_connection(('127.0.0.1', 9), 2)",
                             "netns")
    assert r.status == "error" and "unreachable" in r.reason.lower()
    target = f"/tmp/escape-{uuid.uuid4().hex}"
    r = _kernel_layer_result(f"open({target!r}, 'w').write('x')", "readonly-fs")
    assert r.status == "error" and "Read-only file system" in r.reason
    assert not os.path.exists(target)
    r = _kernel_layer_result(FORK_BOMB, "pids-cgroup")
    assert r.status == "error" and "Resource temporarily unavailable" in r.reason


def test_extract_code():
    text = ("<think>try ```python\nx = 1\n```</think>\nFinal:\n```python\ndef f():\n"
            "    return 1\n```\nand ```\nnot this\n```")
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("```\nplain\n```") == "plain\n"
    assert extract_code("<think>```py\na = 2\n```</think> no code after") == "a = 2\n"
    assert extract_code("no code") is None
