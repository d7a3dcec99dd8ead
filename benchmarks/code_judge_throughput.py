"""Code verifier throughput: programs judged per second on the CPUs of a sampling host.

What it measures. The correctness filter runs every sampled program against its
tests in the sandbox, so the judge's rate decides whether code filtering keeps up
with sampling. Two parts, each with two arms run side by side in one process,
interleaved round by round on the same machine:

(a) HumanEval's 164 canonical solutions (prompt + canonical_solution), all of which
    pass, judged by
      * before: `code_exec.run_many` of commit 332c5a0 (program and tests in one
                sandboxed interpreter, verdict signed with a nonce). Its
                `code_exec.py` and `sandbox_runner.py` are taken with `git show`
                into a temporary directory and imported from there, so its RUNNER
                is the old runner;
      * after:  the current `run_python_tests(prompt + solution, tests,
                entry_point=..., context=prompt)`, as the correctness filter calls
                it (the program in the sandbox, the tests in a trusted harness
                process, plain data between them), through a thread pool;
    both with `--workers` concurrent jobs (default: the CPU count) and the default
    SandboxLimits.
(b) stdin/stdout problems: 8 tiny competitive-programming problems, 20 cases each
    (deterministic for a seed), judged with their accepted solutions by
    `io_judge.run_io_tests` with isolation="fork" (one sandbox per program, a forked
    child per case) vs isolation="process" (one sandbox per case), `--workers`
    problems at a time.

Each part runs `--warmup` untimed passes of both arms, then `--rounds` rounds that
run each arm once; an arm's time is its median round. Every verdict must be
"passed" (a failed one is printed and the script exits non-zero).

    python benchmarks/code_judge_throughput.py [--rounds 3] [--io-rounds 5] [--write]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, REPO)

from distill_jax.filters import code_exec, io_judge  # noqa: E402

# ../shared/data next to the repository, as the tests read it.
DATA_DIR = os.path.join(REPO, "..", "shared", "data")
BEFORE_COMMIT = "332c5a0"


# ---------------------------------------------------------------- (a) HumanEval


def load_old_code_exec(commit: str, workdir: str):
    """code_exec.py and sandbox_runner.py of `commit`, imported from `workdir`."""
    for name in ("code_exec.py", "sandbox_runner.py"):
        text = subprocess.run(["git", "-C", REPO, "show", f"{commit}:distill_jax/filters/{name}"],
                              check=True, capture_output=True).stdout
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(text)
    module_name = f"code_exec_{commit}"
    spec = importlib.util.spec_from_file_location(module_name,
                                                  os.path.join(workdir, "code_exec.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    assert os.path.dirname(module.RUNNER) == workdir
    return module


def humaneval_arms(rows: list[dict], old, workers: int) -> dict:
    jobs = [(r["prompt"] + r["canonical_solution"],
             code_exec.humaneval_test_code(r["test"], r["entry_point"]), r) for r in rows]

    def before():
        return old.run_many([(program, tests) for program, tests, _ in jobs], max_workers=workers)

    def after():
        def one(job):
            program, tests, r = job
            return code_exec.run_python_tests(program, tests, entry_point=r["entry_point"],
                                              context=r["prompt"])
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, jobs))

    return {"before": before, "after": after}


# ---------------------------------------------------------------- (b) I/O problems

MOD = 10**9 + 7


def _stairs(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, (a + b) % MOD
    return b


def _kadane(xs: list[int]) -> int:
    best = cur = xs[0]
    for x in xs[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best


def _line(xs) -> str:
    return " ".join(map(str, xs))


def io_problems(seed: int, n_cases: int) -> list[tuple[str, str, list[dict], str]]:
    """(name, accepted solution, cases, compare rule) for 8 tiny problems."""
    rng = random.Random(seed)
    problems = []

    def add(name, solution, make, compare="tokens"):
        cases = []
        for _ in range(n_cases):
            given, wanted = make()
            cases.append({"input": given, "output": wanted})
        problems.append((name, solution, cases, compare))

    def sum_line():
        xs = [rng.randint(-10**9, 10**9) for _ in range(rng.randint(1, 50))]
        return _line(xs) + "\n", f"{sum(xs)}\n"
    add("sum of a line", "print(sum(map(int, input().split())))\n", sum_line)

    def sort_list():
        xs = [rng.randint(-1000, 1000) for _ in range(rng.randint(1, 200))]
        return f"{len(xs)}\n{_line(xs)}\n", _line(sorted(xs)) + "\n"
    add("sort a list", "input()\nprint(*sorted(map(int, input().split())))\n", sort_list)

    def stairs():
        n = rng.randint(1, 5000)
        return f"{n}\n", f"{_stairs(n)}\n"
    add("climbing stairs mod 1e9+7",
        "MOD = 10**9 + 7\nn = int(input())\na, b = 1, 1\nfor _ in range(n - 1):\n"
        "    a, b = b, (a + b) % MOD\nprint(b)\n", stairs)

    def gcd_cases():
        import math
        pairs = [(rng.randint(1, 10**6), rng.randint(1, 10**6)) for _ in range(rng.randint(1, 30))]
        return (f"{len(pairs)}\n" + "".join(f"{a} {b}\n" for a, b in pairs),
                "".join(f"{math.gcd(a, b)}\n" for a, b in pairs))
    add("gcd, t test cases",
        "import sys\nfrom math import gcd\ndata = sys.stdin.buffer.read().split()\n"
        "t = int(data[0])\nprint('\\n'.join(str(gcd(int(data[1 + 2 * i]), int(data[2 + 2 * i])))"
        " for i in range(t)))\n", gcd_cases)

    def kadane():
        xs = [rng.randint(-100, 100) for _ in range(rng.randint(1, 300))]
        return f"{len(xs)}\n{_line(xs)}\n", f"{_kadane(xs)}\n"
    add("maximum subarray sum",
        "input()\nxs = list(map(int, input().split()))\nbest = cur = xs[0]\n"
        "for x in xs[1:]:\n    cur = max(x, cur + x)\n    best = max(best, cur)\nprint(best)\n",
        kadane)

    def palindromes():
        words = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
                 for _ in range(rng.randint(1, 20))]
        return (f"{len(words)}\n" + "".join(w + "\n" for w in words),
                "".join(("YES" if w == w[::-1] else "NO") + "\n" for w in words))
    add("palindromes, t test cases",
        "for _ in range(int(input())):\n    w = input().strip()\n"
        "    print('YES' if w == w[::-1] else 'NO')\n", palindromes)

    def range_sums():
        xs = [rng.randint(0, 1000) for _ in range(rng.randint(1, 200))]
        queries = []
        for _ in range(rng.randint(1, 50)):
            lo = rng.randint(1, len(xs))
            queries.append((lo, rng.randint(lo, len(xs))))
        given = f"{len(xs)} {len(queries)}\n{_line(xs)}\n" + \
            "".join(f"{lo} {hi}\n" for lo, hi in queries)
        return given, "".join(f"{sum(xs[lo - 1:hi])}\n" for lo, hi in queries)
    add("range sums (prefix sums)",
        "import sys\ninput = sys.stdin.readline\nn, q = map(int, input().split())\n"
        "pre = [0]\nfor x in map(int, input().split()):\n    pre.append(pre[-1] + x)\n"
        "out = []\nfor _ in range(q):\n    lo, hi = map(int, input().split())\n"
        "    out.append(pre[hi] - pre[lo - 1])\nprint('\\n'.join(map(str, out)))\n", range_sums)

    def mean():
        xs = [rng.randint(1, 100) for _ in range(rng.randint(1, 50))]
        return f"{len(xs)}\n{_line(xs)}\n", f"{sum(xs) / len(xs):.12f}\n"
    add("mean (float:1e-6)",
        "n = int(input())\nprint(f'{sum(map(int, input().split())) / n:.7f}')\n", mean,
        compare="float:1e-6")
    return problems


def io_arms(problems, workers: int) -> dict:
    def arm(isolation):
        def run():
            def one(p):
                _, solution, cases, compare = p
                return io_judge.run_io_tests(solution, cases, compare=compare,
                                             isolation=isolation)
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(one, problems))
        return run
    return {"fork": arm("fork"), "process": arm("process")}


# ---------------------------------------------------------------- timing


def interleaved(arms: dict, rounds: int, warmup: int, label: str) -> dict:
    """Runs every arm once per round; returns name -> (round times, last results)."""
    for k in range(warmup):
        for name, run in arms.items():
            start = time.perf_counter()
            run()
            print(f"  {label} warm-up {k + 1}: {name} {time.perf_counter() - start:.2f} s",
                  flush=True)
    times = {name: [] for name in arms}
    results = {}
    for k in range(rounds):
        for name, run in arms.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
            print(f"  {label} round {k + 1}/{rounds}: {name} {times[name][-1]:.2f} s", flush=True)
    return {name: (times[name], results[name]) for name in arms}


def check_all_passed(label: str, names: list[str], results: list) -> bool:
    bad = [(n, r.status, r.reason) for n, r in zip(names, results) if not r.passed]
    for n, status, reason in bad[:10]:
        print(f"  NOT PASSED [{label}] {n}: {status}: {reason[:200]}")
    return not bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=DATA_DIR)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="concurrent jobs (threads) in every arm")
    ap.add_argument("--rounds", type=int, default=3, help="HumanEval: timed rounds (median)")
    ap.add_argument("--io-rounds", type=int, default=5, help="I/O problems: timed rounds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes of each arm")
    ap.add_argument("--io-cases", type=int, default=20, help="cases per I/O problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--before", default=BEFORE_COMMIT, help="commit of the 'before' code_exec")
    ap.add_argument("--parts", default="humaneval,io", help="comma-separated: humaneval, io")
    ap.add_argument("--write", action="store_true", help="append the table rows to BENCHMARKS.md")
    args = ap.parse_args()
    parts = args.parts.split(",")
    ok = True
    rows = []
    print(f"{os.cpu_count()} CPUs, {args.workers} workers, Python {sys.version.split()[0]}")

    if "humaneval" in parts:
        with open(os.path.join(args.data_dir, "humaneval.jsonl")) as f:
            data = [json.loads(line) for line in f]
        tmp = tempfile.mkdtemp(prefix=f"code_exec_{args.before}-")
        try:
            old = load_old_code_exec(args.before, tmp)
            print(f"(a) HumanEval: {len(data)} canonical solutions; before = code_exec of "
                  f"{args.before} from {tmp}")
            res = interleaved(humaneval_arms(data, old, args.workers), args.rounds, args.warmup,
                              "humaneval")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rate = {}
        for name, (times, results) in res.items():
            ok &= check_all_passed(f"humaneval/{name}", [r["task_id"] for r in data], results)
            rate[name] = len(data) / statistics.median(times)
            print(f"  {name:7s} {rate[name]:6.1f} programs/s (median of "
                  f"{', '.join(f'{t:.2f}' for t in times)} s), "
                  f"{sum(r.passed for r in results)}/{len(data)} passed")
        ratio = rate["after"] / rate["before"]
        print(f"  after / before: {ratio:.2f}x")
        rows.append([f"HumanEval, {len(data)} canonical solutions, {args.workers} workers: "
                     f"after (trusted harness) vs before ({args.before}, one interpreter)",
                     f"{rate['after']:.1f} programs/s", f"{rate['before']:.1f} programs/s",
                     f"{ratio:.2f}x", f"{args.rounds} rounds, median"])

    if "io" in parts:
        problems = io_problems(args.seed, args.io_cases)
        n_cases = sum(len(p[2]) for p in problems)
        print(f"(b) I/O: {len(problems)} problems, {n_cases} cases")
        res = interleaved(io_arms(problems, args.workers), args.io_rounds, args.warmup, "io")
        rate = {}
        for name, (times, results) in res.items():
            ok &= check_all_passed(f"io/{name}", [p[0] for p in problems], results)
            median = statistics.median(times)
            rate[name] = (len(problems) / median, n_cases / median)
            print(f"  {name:7s} {rate[name][0]:6.2f} problems/s, {rate[name][1]:7.1f} cases/s "
                  f"(median of {', '.join(f'{t:.2f}' for t in times)} s)")
        ratio = rate["fork"][0] / rate["process"][0]
        print(f"  fork / process: {ratio:.2f}x")
        rows.append([f"I/O, {len(problems)} problems x {args.io_cases} cases, {args.workers} "
                     "workers: isolation=fork vs isolation=process",
                     f"{rate['fork'][0]:.2f} problems/s ({rate['fork'][1]:.0f} cases/s)",
                     f"{rate['process'][0]:.2f} problems/s ({rate['process'][1]:.0f} cases/s)",
                     f"{ratio:.2f}x", f"{args.io_rounds} rounds, median"])

    if args.write and ok:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import common        # imports jax and torch: only now
        for row in rows:
            common.append_row(row)
    if not ok:
        sys.exit("some verdicts were not 'passed'")


if __name__ == "__main__":
    main()
