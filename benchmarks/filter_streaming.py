"""distill-filter, streamed (this tree) vs the in-memory stage it replaced (d0c135b).

What it measures, on synthetic traces written here (answers that verify, random
word text so nothing is a duplicate, 4 samples per prompt, decontamination
against the shared evaluation sets, the default filter order):

  * throughput: samples/s of the whole stage on `--r1 N` R1-length traces
    (`--words` words each, ~6k tokens), both implementations, same worker count;
  * memory: peak RSS of the stage's main process (the worker processes hold one
    task each and are reported separately) on `--short` counts of short traces,
    to show that the streamed stage's memory does not grow with the count except
    for its dedup index, while the in-memory stage's grows with the data;
  * equality: on the smallest run the streamed stage with `dedup.scope="prompt"`
    (the old stage's only scope) keeps exactly the samples the old stage keeps.

Three arms, each in its own subprocess (a fresh interpreter: peak RSS is per run):
  * streamed: this tree's stage;
  * in-memory: the old stage's code (`git show d0c135b:distill_jax/filters/rejection.py`)
    calling this tree's filters (isolates the stage's orchestration: reading, dedup,
    memory);
  * before: the whole d0c135b tree (a `git worktree` of it), filters included
    (this tree's language filter scans words ~1.65x faster).
Every arm's main process imports jax, as the stage does. The workers' peak RSS is
ru_maxrss of the children, which on Linux includes the parent's image at fork time
(before exec), so it is an upper bound on what a worker holds.

    python benchmarks/filter_streaming.py [--r1 20000] [--short 20000,200000] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

OLD_COMMIT = "d0c135b"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze")
         for b in ("ba", "ce", "di", "fo", "gu", "ha", "ji", "ko", "lu", "ma", "ne", "po")]


def write_traces(directory: str, samples: int, words: int, seed: int = 0,
                 per_shard: int = 2000) -> None:
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    shard, lines = 0, []
    for k in range(samples):
        pid, j = f"p{k // 4}", k % 4
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        body = " ".join(rng.choice(VOCAB) for _ in range(words))
        # Paragraphs of ~100 words: the readability filter's limit is 3000 characters.
        body = "\n\n".join(" ".join(body.split()[i:i + 100]) for i in range(0, words, 100))
        text = f"{body}\nSo {a} + {b} = {a + b}.\n</think>\nThe answer is \\boxed{{{a + b}}}."
        lines.append(json.dumps({
            "prompt_id": pid, "sample_index": j, "text": text, "finish_reason": "stop",
            "problem": f"Add {a} and {b} (problem {pid}).", "reference": {"answer": str(a + b)},
            "kind": "math", "source": "synthetic", "assistant_prefix": "<think>\n",
            "num_tokens": int(words * 1.3)}))
        if len(lines) == per_shard or k == samples - 1:
            with open(os.path.join(directory, f"shard-{shard:05d}.jsonl"), "w") as f:
                f.write("\n".join(lines) + "\n")
            shard, lines = shard + 1, []


def _config(traces: str, out: str, workers: int, scope: str):
    sys.path.insert(0, ROOT)
    from configs import filter_default
    c = filter_default.get_config()
    if "input" in c:
        c.input.path = traces
    else:                                    # the d0c135b tree's config
        c.input_dir = traces
    c.output_dir = out
    c.num_workers = workers
    c.max_per_prompt = 4
    c.dedup.scope = scope
    c.decontamination.data_dir = SHARED_DATA
    return c


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEAK_BEFORE_OUTPUT = [0.0]    # peak RSS before the outputs (and the tfds dataset) are built


def run_new(traces, out, workers, scope) -> None:
    from distill_jax.filters import rejection, stage_files
    assemble = stage_files.WorkDir.assemble

    def measured(self, *args):
        PEAK_BEFORE_OUTPUT[0] = _peak_rss_mb()
        return assemble(self, *args)

    stage_files.WorkDir.assemble = measured
    rejection.filter_traces(_config(traces, out, workers, scope))


def run_old(traces, out, workers, scope, whole_tree: str = "") -> None:
    import glob
    import importlib

    import jax  # noqa: F401 -- as the old stage's filter_traces did (its process count)
    if whole_tree:                  # the d0c135b package, filters and all
        global ROOT
        ROOT = whole_tree
        sys.path.insert(0, whole_tree)
        old = importlib.import_module("distill_jax.filters.rejection")
        assert old.__file__.startswith(whole_tree), old.__file__
    else:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:distill_jax/filters/rejection.py"], cwd=ROOT,
            capture_output=True, text=True, check=True).stdout
        # A real module file: the old stage's worker processes (spawn) import it by name.
        where = tempfile.mkdtemp()
        with open(os.path.join(where, "old_rejection.py"), "w") as f:
            f.write(source)
        sys.path.insert(0, where)
        old = importlib.import_module("old_rejection")
    c = _config(traces, out, workers, scope).to_dict()
    stage = {k: c[k] for k in ("filters", "decontamination", "dedup", "max_per_prompt",
                               "pass_at_k")}
    paths = sorted(glob.glob(os.path.join(traces, "*.jsonl")))
    samples, malformed = old.read_samples(paths)
    results = old._evaluate_all(samples, stage, workers)
    report, kept, rejected = old._select(samples, results, stage, malformed)
    PEAK_BEFORE_OUTPUT[0] = _peak_rss_mb()
    old._write_outputs(os.path.abspath(out), report, kept, rejected, malformed)


def child(args) -> None:
    """One arm in this (fresh) process; prints its numbers as one JSON line."""
    start = time.perf_counter()
    if args.arm == "new":
        run_new(args.traces, args.out, args.workers, args.scope)
    else:
        run_old(args.traces, args.out, args.workers, args.scope,
                args.old_tree if args.arm == "before" else "")
    elapsed = time.perf_counter() - start
    kept = sum(1 for _ in open(os.path.join(args.out, "curated.jsonl")))
    print(json.dumps({
        "seconds": elapsed, "kept": kept, "peak_rss_mb": _peak_rss_mb(),
        "peak_before_output_mb": PEAK_BEFORE_OUTPUT[0],
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def arm(name, traces, out, workers, scope="dataset", old_tree="") -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", "--arm", name, "--traces", traces,
                           "--out", out, "--workers", str(workers), "--scope", scope,
                           "--old-tree", old_tree],
                          cwd=old_tree if name == "before" else ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kept_ids(out: str) -> list:
    return [(r["prompt_id"], r["sample_index"]) for r in
            map(json.loads, open(os.path.join(out, "curated.jsonl")))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--r1", type=int, default=20000)
    p.add_argument("--words", type=int, default=4500)
    p.add_argument("--short", default="20000,200000")
    p.add_argument("--short-words", type=int, default=150)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", action="store_true")
    p.add_argument("--arm")
    p.add_argument("--traces")
    p.add_argument("--out")
    p.add_argument("--scope", default="dataset")
    p.add_argument("--old-tree", default="")
    args = p.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = os.path.join(tmp, "old-tree")
        subprocess.run(["git", "worktree", "add", "--detach", old_tree, OLD_COMMIT], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            rows = run_all(args, tmp, old_tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT)
    print_tables(args, rows)


def run_all(args, tmp: str, old_tree: str) -> list:
    rows = []
    runs = [("short", int(n), args.short_words) for n in args.short.split(",") if n] + \
        ([("R1-length", args.r1, args.words)] if args.r1 else [])
    for kind, n, words in runs:
        traces = os.path.join(tmp, f"traces-{kind}-{n}")
        write_traces(traces, n, words)
        size = sum(os.path.getsize(os.path.join(traces, f)) for f in os.listdir(traces))
        new = arm("new", traces, os.path.join(tmp, f"new-{n}"), args.workers)
        old = arm("old", traces, os.path.join(tmp, f"old-{n}"), args.workers)
        before = arm("before", traces, os.path.join(tmp, f"before-{n}"), args.workers,
                     old_tree=old_tree)
        row = {"traces": kind, "samples": n, "input_mb": size / 2**20, "new": new, "old": old,
               "before": before}
        if (kind, n) == runs[0][:2]:
            arm("new", traces, os.path.join(tmp, "new-prompt-scope"), args.workers,
                scope="prompt")
            row["same_kept_as_old"] = kept_ids(os.path.join(tmp, "new-prompt-scope")) == \
                kept_ids(os.path.join(tmp, f"old-{n}"))
        rows.append(row)
        print(json.dumps(row), flush=True)
        for d in (traces, os.path.join(tmp, f"new-{n}"), os.path.join(tmp, f"old-{n}"),
                  os.path.join(tmp, f"before-{n}")):
            subprocess.run(["rm", "-rf", d])
    return rows


def print_tables(args, rows: list) -> None:
    print(f"\n{args.workers} worker processes, {os.cpu_count()} cores\n")
    print("| traces | samples | input MB | samples/s: streamed / in-memory / before | streamed "
          "vs in-memory / vs before | peak RSS MB, filtering / with outputs (workers): "
          "streamed | in-memory | before | kept |")
    print("|---|---|---|---|---|---|---|---|---|")

    def rss(a):
        return (f"{a['peak_before_output_mb']:.0f} / {a['peak_rss_mb']:.0f} "
                f"({a['workers_peak_rss_mb']:.0f})")

    for r in rows:
        n, new, old, before = r["samples"], r["new"], r["old"], r["before"]
        print(f"| {r['traces']} | {n} | {r['input_mb']:.0f} | {n / new['seconds']:.0f} / "
              f"{n / old['seconds']:.0f} / {n / before['seconds']:.0f} | "
              f"{old['seconds'] / new['seconds']:.2f}x / {before['seconds'] / new['seconds']:.2f}x"
              f" | {rss(new)} | {rss(old)} | {rss(before)} | "
              f"{new['kept']} / {old['kept']} / {before['kept']} |")
    for r in rows:
        if "same_kept_as_old" in r:
            print(f"\nstreamed (dedup.scope=prompt) keeps the same samples as the in-memory "
                  f"stage on {r['samples']} {r['traces']} traces: {r['same_kept_as_old']}")


if __name__ == "__main__":
    main()
