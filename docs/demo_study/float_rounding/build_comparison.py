"""Rebuilds comparison.{md,json} in this folder from the committed runs (stdlib only):

  python docs/demo_study/float_rounding/build_comparison.py

The demo's core arms per seed, run under three kinds of float rounding:
  amd, two threads   core_arms_two_threads_study.json (seed 0 is `make demo`)
  amd, one thread    seed0_core_arms_one_thread_results.json, ../study.json (seeds 1-2)
  intel, from scratch  intel_core_arms_study.json: every stage rerun on another CPU
                     (seed 0 `make demo` from a fresh clone, two threads; seeds 1-2 one
                     thread each), so its teacher, samples and filters differ too.
The two AMD runs of a seed share the teacher, samples and inits (only the students
were retrained); the Intel run shares only the config and the problems.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = ("answer_only", "unfiltered", "filtered", "kd_online")
CLAIMS = ("filtered-unfiltered", "filtered-answer_only", "kd_online-filtered")
SEEDS = ("0", "1", "2")


def _load(name):
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


def _from_study(study, seed):
    """One seed's row of a study.json: pass@1 per model, the claims' paired intervals."""
    accuracy = {m: v["per_seed"][seed]["estimate"] for m, v in study["accuracy"].items()
                if seed in v["per_seed"] and m in ARMS + ("teacher",)}
    claims = {f'{c["a"]}-{c["b"]}': c["per_seed"][seed] for c in study["claims"]
              if f'{c["a"]}-{c["b"]}' in CLAIMS and seed in c["per_seed"]}
    return {"accuracy": accuracy, "claims": claims}


def _from_results(results):
    """A single run's results.json, in the same shape."""
    return {"accuracy": {m: v for m, v in results["accuracy"].items() if m in ARMS + ("teacher",)},
            "claims": {f'{c["a"]}-{c["b"]}': c for c in results["comparisons"]
                       if f'{c["a"]}-{c["b"]}' in CLAIMS}}


def build():
    two, every_arm, intel = (_load("core_arms_two_threads_study.json"),
                             _load("../study.json"), _load("intel_core_arms_study.json"))
    seed0_one = _load("seed0_core_arms_one_thread_results.json")
    runs = {}
    for seed in SEEDS:
        one = _from_results(seed0_one) if seed == "0" else _from_study(every_arm, seed)
        one["accuracy"]["teacher"] = _from_study(two, seed)["accuracy"]["teacher"]
        runs[seed] = {"amd_two_threads": _from_study(two, seed), "amd_one_thread": one,
                      "intel": _from_study(intel, seed)}
    return {"arms": list(ARMS), "claims": list(CLAIMS), "runs": runs}


def _signed(x):
    return f"{x:+.3f}".replace("-", "−")


def table(data) -> str:
    def label(run, seed):
        if run == "intel":   # seed 0 is `make demo` (2 threads), seeds 1-2 ran side by side
            return "Intel, every stage, " + ("2 threads" if seed == "0" else "1 thread")
        return {"amd_two_threads": "AMD, 2 threads", "amd_one_thread": "AMD, 1 thread"}[run]

    lines = ["| seed | run | teacher | " + " | ".join(a.replace("_", "-") for a in ARMS) + " | "
             + " | ".join(c.replace("-", " − ").replace("_", "-") for c in CLAIMS) + " |",
             "|---" * (3 + len(ARMS) + len(CLAIMS)) + "|"]
    for seed, by_run in data["runs"].items():
        for run, r in by_run.items():
            acc = [f'{r["accuracy"][m]:.3f}' for m in ("teacher",) + ARMS]
            claims = [f'{_signed(r["claims"][c]["estimate"])} [{_signed(r["claims"][c]["low"])}, '
                      f'{_signed(r["claims"][c]["high"])}]' for c in CLAIMS]
            lines.append(f"| {seed} | {label(run, seed)} | " + " | ".join(acc + claims) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    data = build()
    with open(os.path.join(HERE, "comparison.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(HERE, "comparison.md"), "w") as f:
        f.write(
            "The demo's core arms per seed under three kinds of float rounding (README, "
            "\"Float rounding\"): on a 2-core AMD EPYC VM with XLA's default threads and "
            "with 1 thread (the same teacher, samples and inits: only the students "
            "retrained), and on a 2-core Intel Xeon VM with every stage rerun from scratch "
            "(teacher, samples, filters, students). pass@1 on the 400 test problems; claims "
            "as paired 95% intervals. Built by build_comparison.py from the JSON files it "
            "names; the numbers are in comparison.json.\n\n" + table(data) + "\n")
