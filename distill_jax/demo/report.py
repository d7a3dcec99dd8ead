"""What the demo pipeline reports: pass@1 with uncertainty per model, the claims
as paired comparisons, accuracy by difficulty, the knowledge frontier, and for a
study (several seeds) whether each claim holds in every seed.

Everything here reads the evaluation outputs (`eval/<model>/per_problem.jsonl`)
and the training metrics; nothing trains or samples. The intervals come from
`evaluation/statistics.py` (seeded bootstrap over problems), so a report
recomputed from the same outputs is identical.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from distill_jax.data.prompts import load_prompts
from distill_jax.demo import arithmetic
from distill_jax.evaluation import statistics

# The claims, each a comparison of two models on the same held-out problems:
# (claim, a, b). A claim is shown when the paired 95% interval of
# pass@1(a) - pass@1(b) lies above 0, reversed when it lies below 0 (b beats a),
# and stated "not shown at this size" otherwise.
COMPARISONS = (
    ("verification matters: filtered beats unfiltered", "filtered", "unfiltered"),
    ("traces beat answers: filtered beats answer-only", "filtered", "answer_only"),
    ("base matters: the pre-trained base beats random init", "filtered_base", "filtered"),
    ("capacity gap: the student beats a smaller one", "filtered", "filtered_small"),
    ("online KD on top of filtered SFT", "kd_online", "filtered"),
    ("offline top-k KD on top of filtered SFT", "kd_offline", "filtered"),
    ("on-policy distillation after filtered SFT", "on_policy", "filtered"))
# The arms trained on the teacher's traces: the knowledge frontier is measured on them.
TRACE_ARMS = ("unfiltered", "filtered", "kd_online", "kd_offline", "on_policy",
              "filtered_base", "filtered_small")
# The capacity gap's students, smaller first: the same filtered traces, two sizes.
CAPACITY = ("filtered_small", "filtered")
# One colour per model in every panel (matplotlib's 10 tab colours, in this order).
_MODELS = ("teacher", "answer_only", "unfiltered", "filtered", "kd_online", "kd_offline",
           "on_policy", "filtered_base", "filtered_small")


def _color(name: str) -> str | None:
    return f"C{_MODELS.index(name)}" if name in _MODELS else None


def _ordered(names) -> list[str]:
    """Models in the demo's order (results.json stores them sorted by name)."""
    return sorted(names, key=lambda n: (_MODELS.index(n) if n in _MODELS else len(_MODELS), n))


def per_problem_rates(out: str, name: str) -> dict[str, float]:
    """Each held-out problem's c/n for one evaluated model, by prompt id."""
    rates = {}
    with open(os.path.join(out, "eval", name, "per_problem.jsonl")) as f:
        for row in map(json.loads, f):
            rates[row["prompt_id"]] = row["correct"] / row["samples"]
    return rates


def curve(workdir: str, key: str = "ce") -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def uncertainty(out: str, names: list[str], seed: int) -> dict[str, Any]:
    """pass@1 with its 95% bootstrap interval over problems per model; the paired
    interval of each COMPARISONS difference whose two models were evaluated;
    pass@1 per difficulty (the problem's number of steps); the capacity gap per
    difficulty; and the knowledge frontier (each trace-trained student on the
    problems the teacher solved in none of its samples, against the rest)."""
    rates = {name: per_problem_rates(out, name) for name in names}
    problems = sorted(rates[names[0]])
    vectors = {name: [r[p] for p in problems] for name, r in rates.items()}
    intervals = {name: statistics.pass_at_1_interval(v, seed=seed).as_dict()
                 for name, v in vectors.items()}
    questions = {p.id: p.problem
                 for p in load_prompts(os.path.join(out, "data", "test_prompts.jsonl"), "jsonl")}
    steps = {i: arithmetic.num_steps(q) for i, q in questions.items()}
    buckets = sorted({steps[p] for p in problems})
    by_difficulty = {
        name: {str(k): {"problems": sum(steps[p] == k for p in problems),
                        "pass@1": _mean(r[p] for p in problems if steps[p] == k)}
               for k in buckets} for name, r in rates.items()}
    comparisons = []
    for claim, a, b in COMPARISONS:
        if a in vectors and b in vectors:
            diff = statistics.paired_difference(vectors[a], vectors[b], seed=seed)
            comparisons.append({"claim": claim, "a": a, "b": b, **diff.as_dict(),
                                "shown": diff.low > 0.0, "verdict": verdict(diff.as_dict())})
    result = {"intervals": intervals, "comparisons": comparisons,
              "by_difficulty": by_difficulty,
              "misread_doubles": {name: misread_rate(out, name, questions) for name in names}}
    if all(arm in vectors for arm in CAPACITY):
        result["capacity"] = _capacity(rates, problems, steps, buckets, seed)
    if "teacher" in rates:
        result["frontier"] = _frontier(rates, problems, seed)
    return result


def misread_rate(out: str, name: str, questions: Mapping[str, str]) -> dict[str, Any]:
    """How often a model's test samples wrote a doubling as "+ 2", the misconception
    in the teacher's corpus (`arithmetic.misread_doubles`): the mechanism behind
    "verification matters" made visible, a student inheriting it or not."""
    with open(os.path.join(out, "eval", name, "per_problem.jsonl")) as f:
        return _misread_total(arithmetic.misread_count(questions[row["prompt_id"]], text)
                              for row in map(json.loads, f) for text in row["texts"])


def misread_in_data(path: str) -> dict[str, Any]:
    """The same count over a training JSONL (prompt: the question, then the
    instruction on its own line; response: the worked solution)."""
    with open(path) as f:
        return _misread_total(arithmetic.misread_count(row["prompt"].split("\n", 1)[0],
                                                       row["response"])
                              for row in map(json.loads, f))


def _misread_total(counts) -> dict[str, Any]:
    doublings = misread = 0
    for d, m in counts:
        doublings, misread = doublings + d, misread + m
    return {"doublings": doublings, "misread": misread,
            "rate": misread / doublings if doublings else 0.0}


def _capacity(rates, problems, steps, buckets, seed) -> dict[str, Any]:
    """Per difficulty: what each student size keeps of the teacher's pass@1, and
    the paired difference filtered - filtered_small on that bucket's problems."""
    out = {}
    for k in buckets:
        ids = [p for p in problems if steps[p] == k]
        row = {"problems": len(ids)}
        for name in ("teacher",) + CAPACITY:
            if name in rates:
                row[name] = _mean(rates[name][p] for p in ids)
        small, large = CAPACITY
        diff = statistics.paired_difference([rates[large][p] for p in ids],
                                            [rates[small][p] for p in ids], seed=seed)
        row["larger_minus_smaller"] = diff.as_dict()
        out[str(k)] = row
    return out


def _frontier(rates, problems, seed) -> dict[str, Any]:
    never = [p for p in problems if rates["teacher"][p] == 0.0]
    solved = [p for p in problems if rates["teacher"][p] > 0.0]
    result = {"teacher_never_solved": len(never), "teacher_solved": len(solved), "arms": {}}
    if not never or not solved:
        return result
    for arm in TRACE_ARMS:
        if arm not in rates:
            continue
        on_never = [rates[arm][p] for p in never]
        on_solved = [rates[arm][p] for p in solved]
        diff = statistics.unpaired_difference(on_solved, on_never, seed=seed)
        result["arms"][arm] = {
            "on_never_solved": statistics.pass_at_1_interval(on_never, seed=seed).as_dict(),
            "on_solved": _mean(on_solved),
            "solved_minus_never": diff.as_dict(), "shown": diff.low > 0.0}
    return result


def verdict(diff: Mapping[str, float]) -> str:
    """A claim "a beats b" from the paired interval of pass@1(a) - pass@1(b)."""
    if diff["low"] > 0.0:
        return "shown"
    if diff["high"] < 0.0:
        return "reversed: b beats a"
    return "not shown at this size"


def format_results(results: dict[str, Any]) -> str:
    lines = [f"Held-out test: {results['test_problems']} problems, "
             f"{results['samples_per_problem']} samples each (pass@1 averaged), "
             f"seed {results['seed']}; 95% bootstrap intervals over problems.", "",
             "| model | training examples | pass@1 | 95% interval |", "|---|---|---|---|"]
    examples = results["training_examples"]
    intervals = results.get("intervals", {})
    for name in _ordered(results["accuracy"]):
        acc = results["accuracy"][name]
        n = examples.get(name, "")
        if name == "on_policy" and results.get("on_policy"):
            op = results["on_policy"]
            n = f"{examples['filtered']} + {op['steps'] * op['samples_per_step']} own samples"
        elif name.startswith("kd") or name.startswith("filtered_"):
            n = examples["filtered"]
        ci = intervals.get(name)
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""
        lines.append(f"| {name} | {n} | {acc:.3f} | {span} |")
    for name, why in results.get("skipped_arms", {}).items():
        lines.append(f"| {name} | 0 | skipped: {why} | |")
    if results.get("comparisons"):
        lines += ["", "| claim | difference in pass@1 | paired 95% interval | |",
                  "|---|---|---|---|"]
        for c in results["comparisons"]:
            lines.append(f"| {c['claim']} ({c['a']} - {c['b']}) | {c['estimate']:+.3f} | "
                         f"[{c['low']:+.3f}, {c['high']:+.3f}] | {verdict(c)} |")
    lines += _difficulty_table(results.get("by_difficulty", {}))
    lines += _misread_lines(results)
    lines += _capacity_table(results.get("capacity"))
    lines += _frontier_table(results.get("frontier"))
    op = results.get("on_policy")
    if op and op["held_out_reverse_kl"]:
        kl = op["held_out_reverse_kl"]
        lines += ["", f"on_policy: {op['steps']} steps of {op['samples_per_step']} student "
                      f"samples ({op['kind']}) from the filtered student; held-out reverse KL "
                      f"to the teacher {kl[0][1]:.4f} at step {kl[0][0]} -> {kl[-1][1]:.4f} "
                      f"at step {kl[-1][0]}."]
    return "\n".join(lines)


def _misread_lines(results: Mapping[str, Any]) -> list[str]:
    """The misconception's rate: in the teacher's samples (the unfiltered data), in
    the filtered data, and in each model's test samples."""
    misread = {n: m for n, m in results.get("misread_doubles", {}).items() if m["doublings"]}
    data = results.get("misread_in_training_data")
    if not misread and not data:
        return []
    lines = ["", "Doublings written as \"+ 2\" (the teacher's corpus's misconception):"]
    if data:
        lines.append("training data: " + ", ".join(
            f"{n} {m['rate']:.3f} ({m['misread']} of {m['doublings']})" for n, m in data.items()))
    if misread:
        lines.append("test samples: " + ", ".join(
            f"{n} {misread[n]['rate']:.3f}" for n in _ordered(misread)))
    return lines


def _difficulty_table(by_difficulty: Mapping[str, Any],
                      title: str = "pass@1 by the problem's number of steps (problems per "
                                   "bucket):") -> list[str]:
    if not by_difficulty:
        return []
    buckets = sorted({int(k) for d in by_difficulty.values() for k in d})
    counts = next(iter(by_difficulty.values()))
    header = [f"{k} steps ({counts.get(str(k), {}).get('problems', 0):.0f})" for k in buckets]
    lines = ["", title, "",
             "| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(buckets)]
    for name in _ordered(by_difficulty):
        d = by_difficulty[name]
        lines.append(f"| {name} | " + " | ".join(
            f"{d[str(k)]['pass@1']:.3f}" if str(k) in d else "" for k in buckets) + " |")
    return lines


def _capacity_table(capacity: Mapping[str, Any] | None) -> list[str]:
    if not capacity:
        return []
    lines = ["", "Capacity gap by difficulty: pass@1 of the teacher and of each student "
                 "size on the same filtered traces, and filtered - filtered_small (paired "
                 "95% interval):",
             "", "| steps | teacher | filtered_small | filtered | filtered - filtered_small |",
             "|---|---|---|---|---|"]
    for k, row in capacity.items():
        d = row["larger_minus_smaller"]
        lines.append(f"| {k} | {row.get('teacher', float('nan')):.3f} | "
                     f"{row['filtered_small']:.3f} | {row['filtered']:.3f} | {d['estimate']:+.3f} "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] |")
    return lines


def _frontier_table(frontier: Mapping[str, Any] | None) -> list[str]:
    if not frontier:
        return []
    lines = ["", f"Knowledge frontier: {frontier['teacher_never_solved']} test problems the "
                 f"teacher solved in none of its samples, {frontier['teacher_solved']} it "
                 f"solved at least once."]
    if not frontier["arms"]:
        return lines
    lines += ["", "| student | pass@1 where the teacher never solves (95%) | where it does | "
                  "difference (95%) |", "|---|---|---|---|"]
    for arm, f in frontier["arms"].items():
        n, d = f["on_never_solved"], f["solved_minus_never"]
        lines.append(f"| {arm} | {n['estimate']:.3f} [{n['low']:.3f}, {n['high']:.3f}] | "
                     f"{f['on_solved']:.3f} | {d['estimate']:+.3f} "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] |")
    return lines


def plot_results(results: dict[str, Any], path: str) -> None:
    # A bare Figure (no pyplot): no global backend switch, so a notebook that calls
    # this keeps its inline plots.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(16, 4))
    ax1, ax3, ax2 = fig.subplots(1, 3)
    names = _ordered(results["accuracy"])
    accuracy = [results["accuracy"][n] for n in names]
    intervals = results.get("intervals", {})
    errors = None
    if all(n in intervals for n in names):      # 95% bootstrap intervals as error bars
        errors = [[a - intervals[n]["low"] for n, a in zip(names, accuracy)],
                  [intervals[n]["high"] - a for n, a in zip(names, accuracy)]]
    ax1.bar(names, accuracy, color=[_color(n) or "grey" for n in names], yerr=errors,
            capsize=4)
    ax1.set_ylabel("pass@1 on held-out test (95% interval)")
    ax1.set_title("accuracy per arm")
    ax1.tick_params(axis="x", rotation=30)
    _plot_difficulty(ax3, results.get("by_difficulty", {}))
    _plot_curves(ax2, results["curves"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_difficulty(ax, by_difficulty: Mapping[str, Any]) -> None:
    for name in _ordered(by_difficulty):
        d = by_difficulty[name]
        steps = sorted(d, key=int)
        ax.plot([int(k) for k in steps], [d[k]["pass@1"] for k in steps], marker="o",
                label=name, color=_color(name))
    ax.set_xticks(sorted({int(k) for d in by_difficulty.values() for k in d}))
    ax.set_xlabel("steps in the problem")
    ax.set_ylabel("pass@1")
    ax.set_title("accuracy by difficulty")
    ax.legend(fontsize=7)


def _plot_curves(ax, curves: Mapping[str, Any]) -> None:
    for arm in _ordered(curves):
        points = curves[arm]
        if points:
            steps, ce = zip(*points)
            ax.plot(steps, ce, label=arm, color=_color(arm))
    ax.set_xlabel("step")
    ax.set_ylabel("training cross-entropy")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("student training curves")


# --- a study: the same pipeline under several seeds --------------------------------

def study_summary(per_seed: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """Each seed's results side by side: pass@1 per model per seed with its mean,
    each claim's paired interval per seed and whether it is shown in every seed,
    accuracy by difficulty averaged over seeds, and the frontier per seed."""
    seeds = sorted(per_seed)
    models = [m for m in per_seed[seeds[0]]["accuracy"]
              if all(m in per_seed[s]["accuracy"] for s in seeds)]
    accuracy = {m: {"per_seed": {str(s): per_seed[s]["intervals"][m] for s in seeds},
                    "mean": _mean(per_seed[s]["accuracy"][m] for s in seeds)} for m in models}
    claims = []
    for claim, a, b in COMPARISONS:
        rows = {str(s): c for s in seeds for c in per_seed[s].get("comparisons", [])
                if (c["a"], c["b"]) == (a, b)}
        if len(rows) == len(seeds):
            shown = sum(r["low"] > 0.0 for r in rows.values())
            reversed_ = sum(r["high"] < 0.0 for r in rows.values())
            claims.append({"claim": claim, "a": a, "b": b, "per_seed": rows,
                           "mean_estimate": _mean(r["estimate"] for r in rows.values()),
                           "seeds_shown": shown, "seeds_reversed": reversed_,
                           "shown_in_every_seed": shown == len(seeds)})
    by_difficulty = {}
    for m in models:
        buckets = sorted({k for s in seeds for k in per_seed[s]["by_difficulty"].get(m, {})},
                         key=int)
        by_difficulty[m] = {k: {"pass@1": _mean(per_seed[s]["by_difficulty"][m][k]["pass@1"]
                                                for s in seeds),
                                "problems": _mean(per_seed[s]["by_difficulty"][m][k]["problems"]
                                                  for s in seeds)} for k in buckets}
    frontier = {str(s): per_seed[s]["frontier"] for s in seeds if "frontier" in per_seed[s]}
    frontier_arms = sorted({a for f in frontier.values() for a in f["arms"]})
    frontier_every_seed = {a: len(frontier) == len(seeds) and all(
        a in f["arms"] and f["arms"][a]["shown"] for f in frontier.values())
        for a in frontier_arms}
    capacity = {str(s): per_seed[s]["capacity"] for s in seeds if "capacity" in per_seed[s]}
    # What each seed's run took on this invocation's clock, and the stages it read
    # back from an earlier one instead of building them (that clock does not count
    # them; each seed's results.json keeps the time they took to build).
    seconds = {str(s): per_seed[s]["total_seconds"] for s in seeds
               if "total_seconds" in per_seed[s]}
    reused = {str(s): per_seed[s]["reused_stages"] for s in seeds
              if per_seed[s].get("reused_stages")}
    return {"seeds": seeds, "accuracy": accuracy, "claims": claims, "seconds": seconds,
            "reused_stages": reused,
            "by_difficulty": by_difficulty, "frontier": frontier,
            "frontier_shown_in_every_seed": frontier_every_seed, "capacity": capacity,
            "curves": per_seed[seeds[0]].get("curves", {}),
            "test_problems": per_seed[seeds[0]]["test_problems"],
            "samples_per_problem": per_seed[seeds[0]]["samples_per_problem"]}


def format_study(study: dict[str, Any]) -> str:
    seeds = study["seeds"]
    cols = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"Study: {len(seeds)} seeds (each seed re-runs every stage: data order, "
             f"teacher, sampling, students); held-out test of {study['test_problems']} "
             f"problems x {study['samples_per_problem']} samples per seed; 95% bootstrap "
             "intervals over problems.", "",
             f"| model | {cols} | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    for m in _ordered(study["accuracy"]):
        row = study["accuracy"][m]
        cells = " | ".join(f"{row['per_seed'][str(s)]['estimate']:.3f} "
                           f"[{row['per_seed'][str(s)]['low']:.3f}, "
                           f"{row['per_seed'][str(s)]['high']:.3f}]" for s in seeds)
        lines.append(f"| {m} | {cells} | {row['mean']:.3f} |")
    lines += ["", f"| claim | {cols} | verdict |", "|---|" + "---|" * (len(seeds) + 1)]
    for c in study["claims"]:
        cells = " | ".join(f"{c['per_seed'][str(s)]['estimate']:+.3f} "
                           f"[{c['per_seed'][str(s)]['low']:+.3f}, "
                           f"{c['per_seed'][str(s)]['high']:+.3f}]" for s in seeds)
        if c["shown_in_every_seed"]:
            outcome = "shown in every seed"
        elif c["seeds_shown"]:
            outcome = f"shown in {c['seeds_shown']} of {len(seeds)} seeds"
        else:
            outcome = "not shown at this size"
        if c["seeds_reversed"]:
            outcome += f"; reversed (b beats a) in {c['seeds_reversed']} of {len(seeds)}"
        lines.append(f"| {c['claim']} ({c['a']} - {c['b']}) | {cells} | {outcome} |")
    lines += _difficulty_table(study["by_difficulty"], "pass@1 by the problem's number of "
                               "steps, mean over seeds (problems per bucket, mean per seed):")
    if study["frontier"]:
        lines += ["", "Knowledge frontier per seed: each student's pass@1 on the problems its "
                      "seed's teacher never solved, against the problems it solved "
                      "(difference, 95%):", "",
                  f"| student | {cols} | solved - never > 0 in every seed |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for arm, every in study["frontier_shown_in_every_seed"].items():
            cells = []
            for s in seeds:
                f = study["frontier"].get(str(s), {})
                a = f.get("arms", {}).get(arm)
                cells.append("" if a is None else
                             f"{a['on_never_solved']['estimate']:.3f} vs {a['on_solved']:.3f} "
                             f"({a['solved_minus_never']['low']:+.3f}, "
                             f"{a['solved_minus_never']['high']:+.3f})")
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {'yes' if every else 'no'} |")
        counts = ", ".join(f"seed {s}: {f['teacher_never_solved']} never / "
                           f"{f['teacher_solved']} solved" for s, f in study["frontier"].items())
        lines += ["", f"Problems the teacher never solved: {counts}."]
    seconds = study.get("seconds", {})
    if seconds:
        each = ", ".join(f"seed {s} {t:.0f} s" for s, t in seconds.items())
        lines += ["", f"Wall clock: {each}; {sum(seconds.values()) / 60:.1f} min in all."]
        reused = study.get("reused_stages", {})
        if reused:
            lines.append("On this invocation's clock, which does not count the stages it "
                         "reused from an earlier one (each seed's results.json names them, "
                         "reused_stages, with the time each took to build, stage_seconds): "
                         + "; ".join(f"seed {s} reused {len(names)} stage{'s' * (len(names) > 1)}"
                                     + (f" ({', '.join(names)})" if len(names) <= 5 else "")
                                     for s, names in reused.items()) + ".")
    return "\n".join(lines)


def plot_study(study: dict[str, Any], path: str) -> None:
    """Four panels: pass@1 per model and seed with 95% bars; each claim's paired
    difference per seed with its interval; pass@1 by difficulty (mean over seeds);
    the first seed's student training curves."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(20, 4.5))
    ax1, ax2, ax3, ax4 = fig.subplots(1, 4)
    seeds, models = study["seeds"], _ordered(study["accuracy"])
    width = 0.8 / len(seeds)
    for j, s in enumerate(seeds):
        cis = [study["accuracy"][m]["per_seed"][str(s)] for m in models]
        xs = [i + (j - (len(seeds) - 1) / 2) * width for i in range(len(models))]
        ax1.bar(xs, [c["estimate"] for c in cis], width, label=f"seed {s}",
                yerr=[[c["estimate"] - c["low"] for c in cis],
                      [c["high"] - c["estimate"] for c in cis]], capsize=2)
    ax1.set_xticks(range(len(models)))
    ax1.set_xticklabels(models, rotation=40, ha="right", fontsize=8)
    ax1.set_ylabel("pass@1 on held-out test (95% interval)")
    ax1.set_title("accuracy per model and seed")
    ax1.legend(fontsize=7)
    claims = study["claims"]
    for j, s in enumerate(seeds):
        ys = [i + (j - (len(seeds) - 1) / 2) * 0.2 for i in range(len(claims))]
        rows = [c["per_seed"][str(s)] for c in claims]
        ax2.errorbar([r["estimate"] for r in rows], ys, fmt="o",
                     xerr=[[r["estimate"] - r["low"] for r in rows],
                           [r["high"] - r["estimate"] for r in rows]], label=f"seed {s}")
    ax2.axvline(0.0, color="grey", lw=1)
    ax2.set_yticks(range(len(claims)))
    ax2.set_yticklabels([f"{c['a']} - {c['b']}" for c in claims], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("difference in pass@1 (paired 95% interval)")
    ax2.set_title("claims, per seed")
    ax2.legend(fontsize=7)
    _plot_difficulty(ax3, study["by_difficulty"])
    ax3.set_title("accuracy by difficulty (mean over seeds)")
    _plot_curves(ax4, study["curves"])
    ax4.set_title(f"student training curves (seed {seeds[0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
