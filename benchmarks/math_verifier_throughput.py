"""Math answer verification: distill_jax `math_equal` vs math-verify, throughput and agreement.

What it measures. Rejection filtering checks every sampled math trace's final
answer against the problem's gold answer, so the verifier's rate (answer pairs
verified per second on the CPUs of a sampling host) decides whether filtering can
keep up with sampling, and its verdicts decide which traces are kept. The
reference is math-verify (the grader open-r1 and TRL use), run the way its users
run it: `verify(parse(f"${gold}$"), parse(f"${pred}$"))` in-process, with its
default SIGALRM timeouts (they work because a pool worker runs its tasks in its
main thread).

Three arms, over the same pairs and the same `multiprocessing.Pool`:
  * ours:            `math_equal(gold, pred)` (second_opinion=True: math-verify is
                     asked, inside our sympy worker, only where our LaTeX reader
                     cannot read an answer);
  * ours, no 2nd op: `math_equal(gold, pred, second_opinion=False)`;
  * math-verify:     as above.
Our sympy worker subprocess (one per pool worker, started on first use) and both
libraries' imports are started before timing: every pool worker runs a warm-up in
its initializer, then each arm maps a small warm-up batch untimed. Then `--rounds`
rounds each run every arm once over all pairs; an arm's time is its median.

The pairs (deterministic for a seed) come from the reference data, never from a
model: half "own" (a problem's gold answer vs the answer `extract_answer` finds in
the problem's reference solution: the same answer, as a solution writes it) and
half "other" (a gold answer vs the reference answer of another problem of the
same dataset, drawn at random: almost always a different answer). Problems are
drawn with replacement, by dataset weight (`--mix`), so MATH-500's LaTeX answers
are about half of the pairs though the dataset has only 500 problems. (MATH-500's
`answer` is the last `\\boxed{}` of its solution in every problem, so its "own"
pairs are identical strings: they measure reading an answer, not equivalence.)
Data: GSM8K test + train, MATH-500 and AIME 2024 JSONL files under `--data-dir`.

Agreement is reported per dataset and kind (how many pairs each arm says are
equal), with the pairs where ours and math-verify disagree, by direction.

    python benchmarks/math_verifier_throughput.py [--pairs 10000] [--processes N] [--write]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from distill_jax.data.prompts import gsm8k_gold  # noqa: E402
from distill_jax.filters.math_answer import extract_answer, math_equal  # noqa: E402

# ../shared/data next to the repository, as the tests read it.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
DEFAULT_MIX = "math500=0.5,gsm8k=0.45,aime24=0.05"


@dataclasses.dataclass(frozen=True)
class Problem:
    gold: str          # the dataset's reference answer
    stated: str        # the answer extract_answer finds in the reference solution


@dataclasses.dataclass(frozen=True)
class Pair:
    dataset: str
    kind: str          # "own" or "other"
    gold: str
    pred: str


# ---------------------------------------------------------------- data


def _jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(data_dir: str) -> tuple[dict[str, list[Problem]], dict[str, int]]:
    """Problems per dataset, and per dataset how many were dropped because no
    answer could be extracted from the reference solution."""
    gsm8k = _jsonl(os.path.join(data_dir, "gsm8k_test.jsonl")) + \
        _jsonl(os.path.join(data_dir, "gsm8k_train.jsonl"))
    raw = {
        "gsm8k": [(gsm8k_gold(r["answer"]), extract_answer(r["answer"])) for r in gsm8k],
        "math500": [(r["answer"], extract_answer(r["solution"]))
                    for r in _jsonl(os.path.join(data_dir, "math500_test.jsonl"))],
        "aime24": [(str(r["answer"]), extract_answer(r["solution"]))
                   for r in _jsonl(os.path.join(data_dir, "aime24_test.jsonl"))],
    }
    problems = {name: [Problem(g, s) for g, s in rows if s is not None]
                for name, rows in raw.items()}
    dropped = {name: len(raw[name]) - len(problems[name]) for name in raw}
    return problems, dropped


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight)
    return mix


def build_pairs(problems: dict[str, list[Problem]], mix: dict[str, float], n: int,
                seed: int) -> list[Pair]:
    """n pairs, the first half "own" and the second "other", then shuffled."""
    rng = random.Random(seed)
    names = sorted(mix)
    datasets = rng.choices(names, weights=[mix[k] for k in names], k=n)
    pairs = []
    for k, name in enumerate(datasets):
        rows = problems[name]
        i = rng.randrange(len(rows))
        if k < n // 2:
            pairs.append(Pair(name, "own", rows[i].gold, rows[i].stated))
        else:
            j = rng.randrange(len(rows) - 1)
            j += j >= i                       # another problem, uniformly
            pairs.append(Pair(name, "other", rows[i].gold, rows[j].gold))
    rng.shuffle(pairs)
    return pairs


# ---------------------------------------------------------------- verifiers (run in pool workers)


def ours(pair: Pair) -> tuple[bool | None, float]:
    start = time.perf_counter()
    verdict = math_equal(pair.gold, pair.pred)
    return verdict, time.perf_counter() - start


def ours_no_second_opinion(pair: Pair) -> tuple[bool | None, float]:
    start = time.perf_counter()
    verdict = math_equal(pair.gold, pair.pred, second_opinion=False)
    return verdict, time.perf_counter() - start


def math_verify(pair: Pair) -> tuple[bool | None, float]:
    """math-verify as its users call it; None when it raised (counted, read as "no")."""
    from math_verify import parse, verify
    start = time.perf_counter()
    try:
        verdict = verify(parse(f"${pair.gold}$"), parse(f"${pair.pred}$"))
    except Exception:  # noqa: BLE001
        verdict = None
    return verdict, time.perf_counter() - start


ARMS = {"ours": ours, "ours_no_second_opinion": ours_no_second_opinion,
        "math_verify": math_verify}
LABELS = {"ours": "ours (second_opinion=True)",
          "ours_no_second_opinion": "ours (second_opinion=False)",
          "math_verify": "math-verify 0.9.0"}

_WARMUP = [Pair("warmup", "own", "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
           Pair("warmup", "own", "\\log_2 8", "3"),          # our second-opinion path
           Pair("warmup", "own", "(1, 2]", "(1,2]")]


def _warm_worker() -> None:
    """Pool initializer: imports, starts this process's sympy worker, runs each arm once."""
    for fn in ARMS.values():
        for pair in _WARMUP:
            fn(pair)


# ---------------------------------------------------------------- timing


def run_arm(pool, name: str, pairs: list[Pair], chunksize: int) -> dict:
    """One timed pass of one arm over all pairs, with progress lines."""
    fn = ARMS[name]
    verdicts, latencies = [], []
    step = max(1, len(pairs) // 5)
    start = time.perf_counter()
    for k, (verdict, seconds) in enumerate(pool.imap(fn, pairs, chunksize=chunksize), 1):
        verdicts.append(verdict)
        latencies.append(seconds)
        if k % step == 0 and k < len(pairs):
            elapsed = time.perf_counter() - start
            print(f"    {k}/{len(pairs)} pairs, {k / elapsed:,.0f} pairs/s", flush=True)
    return {"verdicts": verdicts, "latencies": latencies, "seconds": time.perf_counter() - start}


def run_arms(pool, arms: list[str], pairs: list[Pair], chunksize: int, warmup: int,
             rounds: int, processes: int) -> dict[str, dict]:
    """Each round runs every arm once (so a slow drift of a shared machine hits all
    alike); an arm's time is its median over the rounds, its verdicts are round 1's,
    and a pair's latency (seconds inside the verifier call) is its median over the rounds."""
    for name in arms:                         # untimed: every worker has run every arm
        pool.map(ARMS[name], pairs[:warmup], chunksize=max(1, warmup // (4 * processes)))
    results = {}
    for r in range(rounds):
        for name in arms:
            print(f"round {r + 1}/{rounds}: {LABELS[name]} ...", flush=True)
            run = run_arm(pool, name, pairs, chunksize)
            print(f"    {len(pairs) / run['seconds']:,.0f} pairs/s ({run['seconds']:.2f} s)",
                  flush=True)
            if name not in results:
                results[name] = {"verdicts": run["verdicts"], "times": [], "per_pair": []}
            results[name]["times"].append(run["seconds"])
            results[name]["per_pair"].append(run["latencies"])
    for res in results.values():
        res["seconds"] = statistics.median(res["times"])
        res["rate"] = len(pairs) / res["seconds"]
        res["latencies"] = [statistics.median(t) for t in zip(*res.pop("per_pair"))]
    return results


def latency_summary(latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return (f"per pair: median {1e3 * q[49]:.2f} ms, p99 {1e3 * q[98]:.1f} ms, "
            f"max {1e3 * max(latencies):.1f} ms, pairs over 1 s: {sum(t > 1 for t in latencies)}")


# ---------------------------------------------------------------- reports


def print_mix(pairs: list[Pair], problems: dict[str, list[Problem]], dropped: dict[str, int]):
    counts = collections.Counter((p.dataset, p.kind) for p in pairs)
    print(f"{len(pairs)} pairs (dataset: problems available -> own + other pairs):")
    for name in sorted(problems):
        own, other = counts[(name, "own")], counts[(name, "other")]
        note = f", {dropped[name]} dropped (no answer in the solution)" if dropped[name] else ""
        share = 100 * (own + other) / len(pairs)
        print(f"  {name:8s} {len(problems[name]):5d} problems{note} -> "
              f"{own} own + {other} other = {own + other} ({share:.1f}%)")


def print_speed(results: dict[str, dict], n: int) -> None:
    print(f"\nthroughput over {n} pairs:")
    base = results.get("math_verify")
    for name, r in results.items():
        ratio = ""
        if base and name != "math_verify":
            ratio = f", {r['rate'] / base['rate']:.2f}x math-verify"
        rounds = ", ".join(f"{t:.2f}" for t in r["times"])
        print(f"  {LABELS[name]:30s} {r['rate']:8,.0f} pairs/s  {r['seconds']:7.2f} s "
              f"(median of {rounds}){ratio}")
        print(f"  {'':30s} {latency_summary(r['latencies'])}")


def print_latency_by_dataset(pairs: list[Pair], results: dict[str, dict]) -> None:
    """Mean seconds inside the verifier per pair, by dataset: the pair mix sets the
    overall ratio (an integer pair is cheap for both), so here is each kind on its own."""
    print("\nmean ms per pair inside the verifier, by dataset and kind:")
    groups = collections.defaultdict(list)
    for k, p in enumerate(pairs):
        groups[f"{p.dataset}/{p.kind}"].append(k)
    base = results.get("math_verify")
    for key in sorted(groups):
        idx = groups[key]
        means = {a: 1e3 * statistics.fmean(r["latencies"][k] for k in idx)
                 for a, r in results.items()}
        cells = ", ".join(f"{LABELS[a]} {m:.3f}" for a, m in means.items())
        ratio = (f"  (math-verify / ours: {means['math_verify'] / means['ours']:.1f}x)"
                 if base and "ours" in means else "")
        print(f"  {key:16s} {cells}{ratio}")


def print_agreement(pairs: list[Pair], results: dict[str, dict]) -> None:
    names = list(results)
    print("\npairs judged equal (dataset/kind: n, then per arm):")
    print("  " + f"{'':16s}{'n':>6s}" + "".join(f"{LABELS[k]:>32s}" for k in names))
    groups = collections.defaultdict(list)
    for k, p in enumerate(pairs):
        groups[(p.dataset, p.kind)].append(k)
        groups[("all", p.kind)].append(k)
    for key in sorted(groups, key=lambda g: (g[0] == "all", g)):
        idx = groups[key]
        cells = "".join(f"{sum(results[a]['verdicts'][k] is True for k in idx):>32d}"
                        for a in names)
        print(f"  {key[0] + '/' + key[1]:16s}{len(idx):6d}{cells}")
    for a in names:
        errors = sum(v is None for v in results[a]["verdicts"])
        if errors:
            print(f"  {LABELS[a]}: {errors} pairs raised (counted as not equal)")


def disagreements(pairs: list[Pair], a: list, b: list) -> collections.Counter:
    """(dataset, kind, gold, pred, a's verdict, b's verdict) -> how many pairs."""
    return collections.Counter((p.dataset, p.kind, p.gold, p.pred, x is True, y is True)
                               for p, x, y in zip(pairs, a, b) if (x is True) != (y is True))


def print_disagreements(pairs: list[Pair], results: dict[str, dict], limit: int) -> None:
    if "ours" not in results or "math_verify" not in results:
        return
    diff = disagreements(pairs, results["ours"]["verdicts"], results["math_verify"]["verdicts"])
    by_dir = collections.Counter()
    for (dataset, kind, *_, x, _y), count in diff.items():
        by_dir[(x, dataset, kind)] += count
    total = sum(diff.values())
    print(f"\nours (default) vs math-verify: {total} pairs disagree ({len(diff)} distinct)")
    for x, label in ((False, "ours NOT equal, math-verify equal"),
                     (True, "ours equal, math-verify NOT equal")):
        parts = [f"{d}/{k} {c}" for (xx, d, k), c in sorted(by_dir.items()) if xx == x]
        print(f"  {label}: {sum(c for (xx, *_), c in by_dir.items() if xx == x)}"
              + (f" ({', '.join(parts)})" if parts else ""))
    if "ours_no_second_opinion" in results:
        so = disagreements(pairs, results["ours"]["verdicts"],
                           results["ours_no_second_opinion"]["verdicts"])
        print(f"  (ours with vs without the second opinion differ on {sum(so.values())} pairs)")
    print(f"\nup to {limit} distinct disagreeing pairs (gold | pred | ours | math-verify | count):")
    for (dataset, kind, gold, pred, x, y), count in diff.most_common(limit):
        print(f"  [{dataset}/{kind}] {gold!r} | {pred!r} | {x} | {y} | x{count}")


def write_rows(results: dict[str, dict], n: int, processes: int, pairs: list[Pair]) -> None:
    """Appends the table rows to BENCHMARKS.md (imports common, hence jax and torch,
    only now: after the pool is closed)."""
    import common
    base = results["math_verify"]
    shares = collections.Counter(p.dataset for p in pairs)
    mix = ", ".join(f"{name} {100 * c / n:.0f}%" for name, c in shares.most_common())
    for name in ("ours", "ours_no_second_opinion"):
        if name in results:
            r = results[name]
            common.append_row([f"{LABELS[name]}, {n:,} pairs ({mix}), {processes} processes",
                               f"{r['rate']:,.0f} pairs/s", f"{base['rate']:,.0f} pairs/s",
                               f"{r['rate'] / base['rate']:.2f}x", _agreement_cell(pairs, r, base)])


def _agreement_cell(pairs: list[Pair], ours_r: dict, theirs: dict) -> str:
    own = [k for k, p in enumerate(pairs) if p.kind == "own"]
    other = [k for k, p in enumerate(pairs) if p.kind == "other"]

    def eq(r, idx):
        return sum(r["verdicts"][k] is True for k in idx)
    both = list(zip(ours_r["verdicts"], theirs["verdicts"]))
    only_ours = sum(x is True and y is not True for x, y in both)
    only_theirs = sum(y is True and x is not True for x, y in both)
    return (f"equal on own {eq(ours_r, own)} vs {eq(theirs, own)} of {len(own)}, on other "
            f"{eq(ours_r, other)} vs {eq(theirs, other)} of {len(other)}; "
            f"only ours {only_ours}, only math-verify {only_theirs}")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=os.cpu_count())
    ap.add_argument("--chunksize", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=200, help="untimed pairs mapped before each arm")
    ap.add_argument("--rounds", type=int, default=5, help="timed passes per arm (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", default=DEFAULT_MIX, help="dataset weights (sampled with replacement)")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="comma-separated subset of " + ",".join(ARMS))
    ap.add_argument("--data-dir", default=DATA_DIR)
    ap.add_argument("--show", type=int, default=40, help="disagreeing pairs to print")
    ap.add_argument("--write", action="store_true", help="append the table rows to BENCHMARKS.md")
    args = ap.parse_args()

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        ap.error(f"--arms: choose from {', '.join(ARMS)}")
    if args.write and set(arms) != set(ARMS):
        ap.error("--write needs all three arms")
    problems, dropped = load_problems(args.data_dir)
    mix = parse_mix(args.mix)
    if set(mix) - set(problems):
        ap.error(f"--mix: datasets are {', '.join(sorted(problems))}")
    pairs = build_pairs(problems, mix, args.pairs, args.seed)
    print_mix(pairs, problems, dropped)
    print(f"{args.processes} processes, chunksize {args.chunksize}, seed {args.seed}", flush=True)

    with multiprocessing.Pool(processes=args.processes, initializer=_warm_worker) as pool:
        results = run_arms(pool, arms, pairs, args.chunksize, args.warmup, args.rounds,
                           args.processes)

    print_speed(results, len(pairs))
    print_latency_by_dataset(pairs, results)
    print_agreement(pairs, results)
    print_disagreements(pairs, results, args.show)
    if args.write:
        write_rows(results, len(pairs), args.processes, pairs)


if __name__ == "__main__":
    main()
