"""`distill-pipeline`: the whole R1 recipe in miniature, on the synthetic task.

  1. tokenizer  SentencePiece trained on the task's text;
  2. teacher    a small model trained (distill-train) on worked solutions in the
                R1 format — on purpose only briefly, so it is good but imperfect;
  3. generate   n teacher samples per training prompt (distill-generate, with the
                teacher's top-k logprobs for offline KD);
  4. filter     verification + quality filters (distill-filter), the tfds dataset;
  5. students   same size, same init, one per arm:
                  answer_only   SFT on the gold answer alone (no reasoning)
                  unfiltered    SFT on every teacher sample
                  filtered      SFT on the rejection-filtered samples (R1)
                  kd_online     filtered + soft-target KL against the teacher (online)
                  kd_offline    filtered + KL to the stored top-k logprobs (offline)
                  on_policy     the filtered student, then on-policy distillation: it
                                samples the training prompts and the teacher scores
                                every token (reverse KL), for a fixed number of steps
  6. evaluate   every student and the teacher on the held-out test split
                (k samples, pass@1 averaged over k);
  7. report     results.json, a table, and results.png (accuracy per arm and the
                training curves).

Every stage writes into its own directory under `output_dir` and is skipped on
a rerun when its output is complete, so an interrupted pipeline resumes where
it stopped.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax

from distill_jax import models
from distill_jax.chat import ChatFormat
from distill_jax.data.prompts import R1_MATH_SUFFIX, load_prompts
from distill_jax.demo import arithmetic
from distill_jax.evaluation import statistics
from distill_jax.evaluation.runner import sample_and_score, summarize
from distill_jax.fileio import write_json_atomic, write_text_atomic
from distill_jax.filters.config import default_config as filter_defaults
from distill_jax.filters.rejection import filter_traces
from distill_jax.sampling.config import default_config as generate_defaults
from distill_jax.sampling.generate import generate_traces
from distill_jax.sampling.params import SamplingParams
from distill_jax.sampling.sampler import Sampler
from distill_jax.tokenizer import load_tokenizer, train_sentencepiece
from distill_jax.training.config import base_config as train_defaults
from distill_jax.training.run import train

ARMS = ("answer_only", "unfiltered", "filtered", "kd_online", "kd_offline", "on_policy")
# What the demo compares, each on the same held-out problems: (claim, arm a, arm b);
# a claim is shown when the paired 95% interval of pass@1(a) - pass@1(b) excludes 0.
COMPARISONS = (("verification matters: filtered beats unfiltered", "filtered", "unfiltered"),
               ("traces beat answers: filtered beats answer-only", "filtered", "answer_only"),
               ("online KD on top of filtered SFT", "kd_online", "filtered"),
               ("offline top-k KD on top of filtered SFT", "kd_offline", "filtered"),
               ("on-policy distillation after filtered SFT", "on_policy", "filtered"))


def _done(path: str) -> bool:
    return os.path.exists(path)


def _response(problem: arithmetic.Problem, with_reasoning: bool = True) -> str:
    if with_reasoning:
        steps = problem.solution.rsplit("\n", 1)[0]
        return f"<think>\n{steps}\n</think>\nThe answer is \\boxed{{{problem.answer}}}."
    return f"<think>\n</think>\nThe answer is \\boxed{{{problem.answer}}}."


def _write_jsonl(path: str, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _prepare_data(config, out: str) -> dict[str, str]:
    d = os.path.join(out, "data")
    os.makedirs(d, exist_ok=True)
    paths = {name: os.path.join(d, f"{name}.jsonl") for name in
             ("teacher_sft", "train_prompts", "test_prompts", "answer_only")}
    if all(_done(p) for p in paths.values()):
        return paths
    dc = config.data
    # Disjoint index ranges: the teacher's own training data, the prompts it
    # answers for the students, and the test split.
    teacher = arithmetic.make_split(config.seed, 0, dc.teacher_problems)
    train_p = arithmetic.make_split(config.seed, 10**6, dc.train_prompts)
    test_p = arithmetic.make_split(config.seed, 2 * 10**6, dc.test_problems)

    def user(p):
        return f"{p.question}\n{R1_MATH_SUFFIX}"
    _write_jsonl(paths["teacher_sft"], [
        {"prompt": user(p), "response": _response(p), "prompt_id": f"teacher-{k}",
         "sample_index": 0} for k, p in enumerate(teacher)])
    _write_jsonl(paths["answer_only"], [
        {"prompt": user(p), "response": _response(p, with_reasoning=False),
         "prompt_id": f"train-{k}", "sample_index": 0} for k, p in enumerate(train_p)])
    for name, split, prefix in (("train_prompts", train_p, "train"), ("test_prompts", test_p,
                                                                         "test")):
        _write_jsonl(paths[name], [{"id": f"{prefix}-{k}", "problem": p.question,
                                    "answer": str(p.answer)} for k, p in enumerate(split)])
    return paths


def _tokenizer(config, out: str) -> str:
    path = os.path.join(out, "tokenizer.model")
    if _done(path):
        return path
    problems = arithmetic.make_split(config.seed, 0, 2000)
    corpus = [f"{p.question}\n{R1_MATH_SUFFIX}\n{_response(p)}" for p in problems]
    return train_sentencepiece(corpus, os.path.join(out, "tokenizer"),
                               vocab_size=config.tokenizer_vocab_size)


def _train_config(config, workdir: str, data_path: str, tokenizer: str, section) -> Any:
    c = train_defaults()
    c.workdir = workdir
    c.seed = config.seed
    c.data.path = data_path
    c.data.tokenizer_path = tokenizer
    c.data.chat_template = "chatml"
    c.data.seq_len = config.seq_len
    c.model.preset = section.preset
    c.model.dtype = c.model.param_dtype = "float32"
    c.model.init_seed = section.init_seed
    c.model.overrides = _model_overrides(section)
    c.train.batch_size = section.batch_size
    c.train.num_steps = section.num_steps
    c.train.learning_rate = section.learning_rate
    c.train.warmup_steps = section.warmup_steps
    c.train.final_lr_fraction = 0.1
    c.train.weight_decay = 0.0
    c.train.log_every = 5
    c.train.checkpoint_every = max(section.num_steps // 2, 1)
    c.train.tensorboard = True
    c.train.export_dir = os.path.join(workdir, "export")
    c.train.export_dtype = "float32"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    return c


def _model_overrides(section) -> dict[str, Any]:
    return {k: section[k] for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                                    "num_kv_heads", "head_dim") if section.get(k)}


def _train_model(config, workdir, data_path, tokenizer, section, kd=None) -> str:
    export = os.path.join(workdir, "export")
    if _done(os.path.join(workdir, "summary.json")):
        return export
    c = _train_config(config, workdir, data_path, tokenizer, section)
    if kd is not None:
        for k, v in kd.items():
            if isinstance(v, dict):        # a section: change its keys, keep the others
                c.kd[k].update(v)
            else:
                c.kd[k] = v
    train(c)
    return export


def _on_policy(config, workdir, start, teacher, tokenizer, paths) -> str:
    """Arm on_policy: the filtered arm's student (`start`) trained further on its own
    samples of the training prompts, graded token by token by the teacher; the
    reverse KL on held-out prompts is logged before, during and after."""
    export = os.path.join(workdir, "export")
    if _done(os.path.join(workdir, "summary.json")):
        return export
    oc = config.on_policy
    section = copy.deepcopy(config.student)
    section.update(num_steps=oc.num_steps, batch_size=oc.batch_size,
                   learning_rate=oc.learning_rate, warmup_steps=oc.warmup_steps)
    c = _train_config(config, workdir, "", tokenizer, section)
    c.model.preset, c.model.overrides, c.model.checkpoint = "", {}, start
    c.kd.mode, c.kd.kind = "on_policy", oc.kind
    c.kd.teacher.update(checkpoint=teacher, dtype="float32", param_dtype="float32")
    c.on_policy.prompts.path = paths["train_prompts"]
    c.on_policy.eval_prompts.path = paths["test_prompts"]
    c.on_policy.eval_prompts.limit = oc.eval_prompts
    c.on_policy.eval_every = max(oc.num_steps // 4, 1)
    c.on_policy.update(n=oc.n, max_new_tokens=config.generate.max_new_tokens,
                       temperature=1.0, top_p=1.0)
    train(c)
    return export


def _generate(config, out, teacher, tokenizer, prompts_path) -> str:
    d = os.path.join(out, "traces")
    if _done(os.path.join(d, "summary.json")):
        return d
    g = generate_defaults()
    g.output_dir = d
    g.prompts.path = prompts_path
    g.prompts.format = "jsonl"
    g.prompts.limit = 0
    g.prompts_per_shard = config.generate.prompts_per_shard
    g.num_slots = config.generate.num_slots
    g.tokenizer.path = tokenizer
    g.tokenizer.chat_template = "chatml"
    g.teacher.checkpoint = teacher
    g.teacher.dtype = g.teacher.param_dtype = "float32"
    g.teacher.id = "demo-teacher"
    for k in ("n", "temperature", "top_p", "max_new_tokens", "return_top_k"):
        g.sampling[k] = config.generate[k]
    g.mesh = None
    generate_traces(g)
    return d


def _filter(config, out, traces, test_prompts) -> str:
    d = os.path.join(out, "curated")
    if _done(os.path.join(d, "report.json")):
        return d
    f = filter_defaults()
    f.input.path = traces
    f.output_dir = d
    f.num_workers = config.filter.num_workers
    f.max_per_prompt = config.filter.max_per_prompt
    f.filters.length.min_tokens = 4
    # Decontaminate against the demo's own test split. Its problems come from one
    # template, so any shared 8-gram is a template phrase; only near-copies count.
    f.decontamination.eval_sets = (f"{test_prompts}:problem",)
    f.decontamination.data_dir = ""
    f.decontamination.min_overlap_fraction = config.filter.min_overlap_fraction
    filter_traces(f)
    return d


def _unfiltered(out, traces) -> str:
    """Every teacher sample as a training example (arm b)."""
    path = os.path.join(out, "data", "unfiltered.jsonl")
    if _done(path):
        return path
    rows = []
    for name in sorted(os.listdir(traces)):
        if not (name.startswith("shard-") and name.endswith(".jsonl")):   # not top-k sidecars
            continue
        with open(os.path.join(traces, name)) as f:
            for line in f:
                r = json.loads(line)
                rows.append({"prompt_id": r["prompt_id"], "sample_index": r["sample_index"],
                             "prompt": r["user_message"],
                             "response": r["assistant_prefix"] + r["text"]})
    _write_jsonl(path, rows)
    return path


def _evaluate(config, name, checkpoint, tokenizer_path, prompts_path, out) -> dict[str, Any]:
    path = os.path.join(out, "eval", name, "summary.json")
    if _done(path):
        with open(path) as f:
            return json.load(f)
    from distill_jax.evaluation.runner import write_results
    tokenizer = load_tokenizer(tokenizer_path, chat_template="chatml")
    fmt = ChatFormat.create(tokenizer, "chatml")
    cfg, params = models.model_from_section(
        models.model_section(checkpoint=checkpoint, dtype="float32", param_dtype="float32"))
    sampler = Sampler(cfg, params, tokenizer=tokenizer, num_slots=config.evaluate.num_slots,
                      pad_id=tokenizer.pad_id or 0)
    prompts = load_prompts(prompts_path, "jsonl")
    ec = config.evaluate
    sp = SamplingParams(n=ec.k, temperature=ec.temperature, top_p=ec.top_p,
                        max_new_tokens=ec.max_new_tokens, seed=config.seed,
                        stop_token_ids=fmt.stop_token_ids())
    results = sample_and_score(sampler, fmt, prompts, sp)
    summary = summarize(results, ks=(1, ec.k))
    write_results(os.path.dirname(path), results, summary)
    return summary


def _per_problem_rates(out: str, name: str) -> dict[str, float]:
    """Each held-out problem's c/n for one evaluated model, by prompt id."""
    rates = {}
    with open(os.path.join(out, "eval", name, "per_problem.jsonl")) as f:
        for row in map(json.loads, f):
            rates[row["prompt_id"]] = row["correct"] / row["samples"]
    return rates


def uncertainty(out: str, names: list[str], seed: int) -> dict[str, Any]:
    """pass@1 with its 95% bootstrap interval over problems per model, the paired
    interval of each COMPARISONS difference whose two arms were evaluated
    (evaluation/statistics.py), and pass@1 per difficulty (the problem's number of
    steps) per model."""
    rates = {name: _per_problem_rates(out, name) for name in names}
    problems = sorted(rates[names[0]])
    vectors = {name: [r[p] for p in problems] for name, r in rates.items()}
    intervals = {name: statistics.pass_at_1_interval(v, seed=seed).as_dict()
                 for name, v in vectors.items()}
    steps = {p.id: arithmetic.num_steps(p.problem)
             for p in load_prompts(os.path.join(out, "data", "test_prompts.jsonl"), "jsonl")}
    by_difficulty = {}
    for name, r in rates.items():
        buckets: dict[int, list[float]] = {}
        for problem_id, rate in r.items():
            buckets.setdefault(steps[problem_id], []).append(rate)
        by_difficulty[name] = {str(k): {"problems": len(v), "pass@1": sum(v) / len(v)}
                               for k, v in sorted(buckets.items())}
    comparisons = []
    for claim, a, b in COMPARISONS:
        if a in vectors and b in vectors:
            diff = statistics.paired_difference(vectors[a], vectors[b], seed=seed)
            comparisons.append({"claim": claim, "a": a, "b": b, **diff.as_dict(),
                                "shown": diff.excludes_zero()})
    return {"intervals": intervals, "comparisons": comparisons, "by_difficulty": by_difficulty}


def _curve(workdir: str, key: str = "ce") -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r[key]) for r in map(json.loads, f) if key in r]


def run(config) -> dict[str, Any]:
    """Runs (or resumes) the pipeline; returns the results written to results.json."""
    if jax.process_count() > 1:
        raise ValueError("distill-pipeline is the single-host demo; on several hosts run the "
                         "stages (distill-generate, -filter, -train, -evaluate), which are "
                         "multi-host aware")
    start = time.monotonic()
    config = apply_quick(config)
    unknown = [a for a in config.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"config.arms: unknown arm(s) {unknown}; choose from {ARMS}")
    if "on_policy" in config.arms and "filtered" not in config.arms:
        raise ValueError("config.arms: the on_policy arm starts from the filtered arm's "
                         "student: keep 'filtered' in config.arms")
    out = os.path.abspath(config.output_dir)
    os.makedirs(out, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name, fn, *args, **kwargs):
        t = time.monotonic()
        print(f"pipeline: {name} ...", flush=True)
        result = fn(*args, **kwargs)
        timings[name] = round(time.monotonic() - t, 1)
        return result

    tokenizer = stage("tokenizer", _tokenizer, config, out)
    paths = stage("data", _prepare_data, config, out)
    teacher = stage("teacher", _train_model, config, os.path.join(out, "teacher"),
                    paths["teacher_sft"], tokenizer, config.teacher)
    traces = stage("generate", _generate, config, out, teacher, tokenizer,
                   paths["train_prompts"])
    curated = stage("filter", _filter, config, out, traces, paths["test_prompts"])
    unfiltered = _unfiltered(out, traces)
    data = {"answer_only": paths["answer_only"], "unfiltered": unfiltered,
            "filtered": os.path.join(curated, "tfds"), "kd_online": os.path.join(curated, "tfds"),
            "kd_offline": os.path.join(curated, "curated.jsonl")}
    kd = {"kd_online": {"mode": "online", "alpha": config.kd.alpha,
                        "temperature": config.kd.temperature,
                        "teacher": {"checkpoint": teacher, "dtype": "float32",
                                    "param_dtype": "float32"}},
          "kd_offline": {"mode": "offline", "alpha": config.kd.alpha,
                         "temperature": config.kd.temperature, "topk": config.generate.return_top_k}}
    with open(os.path.join(curated, "report.json")) as f:
        report = json.load(f)
    arms = [a for a in ARMS if a in config.arms]
    skipped = {}
    if report["output"]["samples"] == 0:
        # Nothing survived the filters: the arms that train on it have no data.
        for arm in ("filtered", "kd_online", "kd_offline", "on_policy"):
            if arm in arms:
                skipped[arm] = "no teacher sample passed the filters"
        arms = [a for a in arms if a not in skipped]
    exports = {}
    for arm in arms:
        workdir = os.path.join(out, "students", arm)
        if arm == "on_policy":
            exports[arm] = stage(f"student:{arm}", _on_policy, config, workdir,
                                 exports["filtered"], teacher, tokenizer, paths)
            continue
        exports[arm] = stage(f"student:{arm}", _train_model, config, workdir, data[arm],
                             tokenizer, config.student, kd.get(arm))
    evals = {"teacher": stage("eval:teacher", _evaluate, config, "teacher", teacher, tokenizer,
                              paths["test_prompts"], out)}
    for arm in arms:
        evals[arm] = stage(f"eval:{arm}", _evaluate, config, arm, exports[arm], tokenizer,
                           paths["test_prompts"], out)
    results = {
        "test_problems": config.data.test_problems, "samples_per_problem": config.evaluate.k,
        "seed": config.seed, "accuracy": {name: e["pass@1"] for name, e in evals.items()},
        "skipped_arms": skipped,
        "pass_at_k": {name: e["pass@k"] for name, e in evals.items()},
        "training_examples": {"answer_only": config.data.train_prompts,
                              "unfiltered": report["input"]["samples"],
                              "filtered": report["output"]["samples"]},
        "filter_stages": [{k: s[k] for k in ("name", "in", "out")} for s in report["stages"]],
        "teacher_pass_at_1_on_train_prompts": report["teacher"]["pass_at_k"].get("1"),
        "curves": {arm: _curve(os.path.join(out, "students", arm)) for arm in arms
                   if arm != "on_policy"},
        "stage_seconds": timings, "total_seconds": round(time.monotonic() - start, 1),
    }
    results.update(uncertainty(out, list(evals), config.seed))
    if "on_policy" in arms:
        workdir = os.path.join(out, "students", "on_policy")
        results["on_policy"] = {
            "steps": config.on_policy.num_steps, "kind": config.on_policy.kind,
            "samples_per_step": config.on_policy.batch_size,
            "held_out_reverse_kl": _curve(workdir, "eval/reverse_kl"),
            "held_out_teacher_logprob": _curve(workdir, "eval/teacher_logprob"),
            "train_reverse_kl": _curve(workdir, "reverse_kl")}
    write_json_atomic(os.path.join(out, "results.json"), results)
    table = format_results(results)
    write_text_atomic(os.path.join(out, "results.md"), table + "\n")
    print(table)
    try:
        plot_results(results, os.path.join(out, "results.png"))
    except ImportError:
        print("pipeline: matplotlib is not installed; skipping results.png")
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = [f"Held-out test: {results['test_problems']} problems, "
             f"{results['samples_per_problem']} samples each (pass@1 averaged), "
             f"seed {results['seed']}; 95% bootstrap intervals over problems.", "",
             "| model | training examples | pass@1 | 95% interval |", "|---|---|---|---|"]
    examples = results["training_examples"]
    intervals = results.get("intervals", {})
    for name, acc in results["accuracy"].items():
        n = examples.get(name, examples["filtered"] if name.startswith("kd") else "")
        if name == "on_policy" and results.get("on_policy"):
            op = results["on_policy"]
            n = f"{examples['filtered']} + {op['steps'] * op['samples_per_step']} own samples"
        ci = intervals.get(name)
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""
        lines.append(f"| {name} | {n} | {acc:.3f} | {span} |")
    for name, why in results.get("skipped_arms", {}).items():
        lines.append(f"| {name} | 0 | skipped: {why} | |")
    if results.get("comparisons"):
        lines += ["", "| claim | difference in pass@1 | paired 95% interval | |",
                  "|---|---|---|---|"]
        for c in results["comparisons"]:
            verdict = "shown" if c["shown"] else "not shown at this size"
            lines.append(f"| {c['claim']} ({c['a']} - {c['b']}) | {c['estimate']:+.3f} | "
                         f"[{c['low']:+.3f}, {c['high']:+.3f}] | {verdict} |")
    by_difficulty = results.get("by_difficulty")
    if by_difficulty:
        buckets = sorted({int(k) for d in by_difficulty.values() for k in d})
        counts = next(iter(by_difficulty.values()))
        header = [f"{k} steps ({counts.get(str(k), {}).get('problems', 0)})" for k in buckets]
        lines += ["", "pass@1 by the problem's number of steps (problems per bucket):", "",
                  "| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(buckets)]
        for name, d in by_difficulty.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{d[str(k)]['pass@1']:.3f}" if str(k) in d else "" for k in buckets) + " |")
    op = results.get("on_policy")
    if op and op["held_out_reverse_kl"]:
        kl = op["held_out_reverse_kl"]
        lines += ["", f"on_policy: {op['steps']} steps of {op['samples_per_step']} student "
                      f"samples ({op['kind']}) from the filtered student; held-out reverse KL "
                      f"to the teacher {kl[0][1]:.4f} at step {kl[0][0]} -> {kl[-1][1]:.4f} "
                      f"at step {kl[-1][0]}."]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: str) -> None:
    # A bare Figure (no pyplot): no global backend switch, so a notebook that calls
    # this keeps its inline plots.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(16, 4))
    ax1, ax3, ax2 = fig.subplots(1, 3)
    names = list(results["accuracy"])
    accuracy = [results["accuracy"][n] for n in names]
    intervals = results.get("intervals", {})
    errors = None
    if all(n in intervals for n in names):      # 95% bootstrap intervals as error bars
        errors = [[a - intervals[n]["low"] for n, a in zip(names, accuracy)],
                  [intervals[n]["high"] - a for n, a in zip(names, accuracy)]]
    ax1.bar(names, accuracy, color="tab:blue", yerr=errors, capsize=4)
    ax1.set_ylabel("pass@1 on held-out test (95% interval)")
    ax1.set_title("accuracy per arm")
    ax1.tick_params(axis="x", rotation=30)
    for name, d in results.get("by_difficulty", {}).items():
        steps = sorted(d, key=int)
        ax3.plot([int(k) for k in steps], [d[k]["pass@1"] for k in steps], marker="o",
                 label=name)
    ax3.set_xticks(sorted({int(k) for d in results.get("by_difficulty", {}).values()
                           for k in d}))
    ax3.set_xlabel("steps in the problem")
    ax3.set_ylabel("pass@1")
    ax3.set_title("accuracy by difficulty")
    ax3.legend(fontsize=8)
    for arm, curve in results["curves"].items():
        if curve:
            steps, ce = zip(*curve)
            ax2.plot(steps, ce, label=arm)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training cross-entropy")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.set_title("student training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def apply_quick(config):
    """`quick=True`: the test-sized variant; `quick_settings` mirrors the config's
    structure and its values replace the config's."""
    if not config.get("quick"):
        return config
    c = copy.deepcopy(config)

    def merge(target, settings):
        for key, value in settings.items():
            if hasattr(value, "items"):
                merge(target[key], value)
            else:
                target[key] = value
    merge(c, c.quick_settings)
    return c
