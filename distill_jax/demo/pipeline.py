"""`distill-pipeline`: the whole R1 recipe in miniature, on the synthetic task.

  1. tokenizer  SentencePiece trained on the task's text;
  2. teacher    a small model trained (distill-train) on worked solutions in the
                R1 format, a share of which carry a misconception (doubling read
                as "+ 2"), so it is good but imperfect, partly systematically so;
  3. generate   n teacher samples per training prompt (distill-generate, with the
                teacher's top-k logprobs for offline KD);
  4. filter     verification + quality filters (distill-filter), the tfds dataset;
  5. students   one per arm, each the student's shape from the same random init
                unless the arm says otherwise:
                  answer_only   SFT on the gold answer alone (no reasoning)
                  unfiltered    SFT on every teacher sample
                  filtered      SFT on the rejection-filtered samples (R1)
                  kd_online     filtered + soft-target KL against the teacher (online)
                  kd_offline    filtered + KL to the stored top-k logprobs (offline)
                  on_policy     the filtered student, then on-policy distillation: it
                                samples the training prompts and the teacher scores
                                every token (reverse KL), for a fixed number of steps
                  filtered_base filtered SFT from a base pre-trained on worked
                                arithmetic of another distribution (config.base),
                                as R1's students were pre-trained models
                  filtered_small
                                filtered SFT of a smaller student (the capacity
                                gap: against the filtered arm's student)
  6. evaluate   every student and the teacher on the held-out test split
                (k samples, pass@1 averaged over k);
  7. report     results.json, a table, and results.png (demo/report.py: pass@1
                with 95% intervals, the claims as paired comparisons, accuracy by
                difficulty, the capacity gap and the knowledge frontier).

Stages 2-6 are one graph of jobs (demo/jobs.py): the teacher, sampling and the
filters run in this process on every core, one after another, while the jobs
that need none of them (answer_only, the base) start beside them in one-core
workers at idle CPU priority; the rest start in one-core workers as what they
need finishes.

Every stage writes into its own directory under `output_dir` and is skipped on
a rerun when its output is complete, so an interrupted pipeline resumes where
it stopped; each stage's build time is kept in `stage_seconds.json`
(demo/stage_times.py), so results.json reports it on a rerun too and names the
stages the rerun reused. With `config.seeds` (a study) the whole pipeline runs
once per seed under `output_dir/seed-<s>` and study.{json,md,png} put the seeds
side by side.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import jax
import numpy as np

from distill_jax import models, storage
from distill_jax.chat import ChatFormat
from distill_jax.data.prompts import Prompt, load_prompts
from distill_jax.demo import arithmetic, jobs, report, stage_times
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

ARMS = ("answer_only", "unfiltered", "filtered", "kd_online", "kd_offline", "on_policy",
        "filtered_base", "filtered_small")
# Arms that train on the filtered traces and so cannot run without them.
_NEED_FILTERED = ("filtered", "kd_online", "kd_offline", "on_policy", "filtered_base",
                  "filtered_small")
# The prompt of the base's pre-training rows (`_base_corpus`).
BASE_PROMPT = "Worked arithmetic."


def _done(path: str) -> bool:
    return os.path.exists(path)


def _response(problem: arithmetic.Problem, with_reasoning: bool = True) -> str:
    if with_reasoning:
        steps = problem.solution.rsplit("\n", 1)[0]
        return f"<think>\n{steps}\n</think>\nThe answer is \\boxed{{{problem.answer}}}."
    return f"<think>\n</think>\nThe answer is \\boxed{{{problem.answer}}}."


def _write_jsonl(path: str, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _user_message(config, question: str) -> str:
    """A problem's user turn, rendered as the stages render a prompt with
    `config.prompt_suffix` (generation, evaluation and on-policy take the same
    suffix), so the teacher learns on exactly what it is later prompted with."""
    prompt = Prompt(id="", problem=question, kind="math", source="demo", reference={})
    return prompt.user_message(config.prompt_suffix)


def _task(config) -> arithmetic.Task:
    return arithmetic.Task.from_config(config.get("task", {}))


def _test_solutions(config) -> frozenset[str]:
    """The test split's worked solutions: what no training text may contain."""
    return frozenset(p.solution for p in arithmetic.make_split(
        config.seed, 2 * 10**6, config.data.test_problems, _task(config)))


def _prepare_data(config, out: str) -> dict[str, str]:
    d = os.path.join(out, "data")
    os.makedirs(d, exist_ok=True)
    paths = {name: os.path.join(d, f"{name}.jsonl") for name in
             ("teacher_sft", "train_prompts", "test_prompts", "answer_only")}
    if all(_done(p) for p in paths.values()):
        return paths
    dc = config.data
    # Disjoint index ranges: the teacher's own training data, the prompts it
    # answers for the students, and the test split; and no training problem is a
    # numeric twin of a test problem (with small numbers, short chains recur).
    task = _task(config)
    test_p = arithmetic.make_split(config.seed, 2 * 10**6, dc.test_problems, task)
    unseen = frozenset(p.solution for p in test_p)
    teacher = arithmetic.make_split(config.seed, 0, dc.teacher_problems, task, unseen)
    train_p = arithmetic.make_split(config.seed, 10**6, dc.train_prompts, task, unseen)

    teacher = _with_misconception(config, teacher, unseen)

    def user(p):
        return _user_message(config, p.question)
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


def _with_misconception(config, problems: list[arithmetic.Problem],
                        unseen: frozenset[str]) -> list[arithmetic.Problem]:
    """The teacher's worked solutions, a `data.teacher_misconception` fraction of
    those with a doubling worked with the misconception (`arithmetic.misread_doubles`),
    unless the misread solution is a test problem's (`unseen`: "+ 2" is also a step).

    Real teachers' errors are partly systematic (a misreading, a wrong method they
    apply with some probability), and those are what verification protects a
    student from: a student imitating unverified samples learns the teacher's
    misconception at the teacher's rate, while random slips (the only errors of a
    teacher trained on clean solutions) mostly wash out (README, "Demo results")."""
    fraction = _misconception(config)
    pick = np.random.default_rng([config.seed, 11]).random(len(problems)) < fraction
    worked = []
    for p, flawed in zip(problems, pick):
        misread = arithmetic.misread_doubles(p) if flawed else p
        worked.append(p if misread.solution in unseen else misread)
    return worked


def _misconception(config) -> float:
    fraction = config.data.get("teacher_misconception", 0.0)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"config.data.teacher_misconception: {fraction} is not a fraction "
                         "in [0, 1]")
    return fraction


def _tokenizer(config, out: str) -> str:
    path = os.path.join(out, "tokenizer.model")
    if _done(path):
        return path
    problems = arithmetic.make_split(config.seed, 0, 2000, _task(config), _test_solutions(config))
    corpus = [f"{_user_message(config, p.question)}\n{_response(p)}" for p in problems]
    return train_sentencepiece(corpus, os.path.join(out, "tokenizer"),
                               vocab_size=config.tokenizer_vocab_size)


def _train_config(config, workdir: str, data_path: str, tokenizer: str, section,
                  start: str | None = None) -> Any:
    """distill-train's config for one model of the demo; `start`: a checkpoint to
    continue from instead of `section`'s random init."""
    c = train_defaults()
    c.workdir = workdir
    c.seed = config.seed
    c.data.path = data_path
    c.data.tokenizer_path = tokenizer
    c.data.chat_template = "chatml"
    c.data.seq_len = _seq_len(config, section)
    c.data.num_packing_bins = config.packing_bins
    c.model.preset = section.preset
    c.model.dtype = c.model.param_dtype = "float32"
    # The section's layout of the step (config.student's comment); the teacher's has none.
    c.model.scan_unroll = section.num_layers if section.get("unroll_layers") else 1
    c.model.remat_policy = section.get("remat_policy") or "none"
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
    if start:
        c.model.preset, c.model.overrides, c.model.checkpoint = "", {}, start
    return c


def _seq_len(config, section) -> int:
    """A model's row length: its section's own (answer_only's), else the demo's."""
    return section.get("seq_len") or config.seq_len


def _model_overrides(section) -> dict[str, Any]:
    return {k: section[k] for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                                    "num_kv_heads", "head_dim") if section.get(k)}


def _train_model(config, workdir, data_path, tokenizer, section, kd=None, start=None) -> str:
    export = os.path.join(workdir, "export")
    if _done(os.path.join(workdir, "summary.json")):
        return export
    c = _train_config(config, workdir, data_path, tokenizer, section, start)
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
    c = _train_config(config, workdir, "", tokenizer, section, start)
    # It samples with the model it trains, and a decode step is slower unrolled.
    c.model.scan_unroll = 1
    c.kd.mode, c.kd.kind = "on_policy", oc.kind
    c.kd.teacher.update(checkpoint=teacher, dtype="float32", param_dtype="float32")
    c.on_policy.prompts.path = paths["train_prompts"]
    c.on_policy.eval_prompts.path = paths["test_prompts"]
    c.on_policy.prompts.suffix = c.on_policy.eval_prompts.suffix = config.prompt_suffix
    c.on_policy.eval_prompts.limit = oc.eval_prompts
    c.on_policy.eval_every = max(oc.num_steps // 4, 1)
    c.on_policy.update(n=oc.n, max_new_tokens=config.generate.max_new_tokens,
                       temperature=1.0, top_p=1.0)
    train(c)
    return export


def _student_section(config, arm: str):
    """The student's section for an arm: filtered_small changes its sizes
    (`config.student_sizes.small`), answer_only its rows' length
    (`config.answer_only_seq_len`), every other arm trains the student as is."""
    section = copy.deepcopy(config.student)
    if arm == "filtered_small":
        section.update(dict(config.student_sizes.small))
    if arm == "answer_only":
        with section.unlocked():             # a config from the command line is locked
            section.seq_len = config.answer_only_seq_len
    return section


def _base_corpus(config, out: str) -> str:
    """The base's pre-training data: worked arithmetic from another distribution than
    the task's (single equations "a + b = c." over a wider range of numbers, in
    random order, no word problems and no chains), as rows with a fixed prompt."""
    path = os.path.join(out, "data", "base.jsonl")
    if _done(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    task, bc = _task(config), config.base
    rng = np.random.default_rng([config.seed, 7])
    # Every value a problem can reach: at most a doubling below double_below, then
    # max_steps additions of max_operand.
    top = 2 * (task.double_below - 1) + task.max_steps * task.max_operand
    rows = []
    for k in range(bc.examples):
        lines = []
        for _ in range(bc.equations_per_example):
            a, op = int(rng.integers(0, top + 1)), rng.choice(["+", "-", "*"])
            if op == "*":
                a = a % task.double_below
                lines.append(f"{a} * 2 = {2 * a}.")
            else:
                most = task.max_give if op == "-" and task.max_give > 0 else task.max_operand
                b = int(rng.integers(1, most + 1))
                if op == "-":
                    a = max(a, b)
                lines.append(f"{a} {op} {b} = {a + b if op == '+' else a - b}.")
        rows.append({"prompt": BASE_PROMPT, "response": "\n".join(lines),
                     "prompt_id": f"base-{k}", "sample_index": 0})
    _write_jsonl(path, rows)
    return path


def _generate(config, out, teacher, tokenizer, prompts_path) -> str:
    d = os.path.join(out, "traces")
    if _done(os.path.join(d, "summary.json")):
        return d
    g = generate_defaults()
    g.output_dir = d
    g.prompts.path = prompts_path
    g.prompts.format = "jsonl"
    g.prompts.limit = 0
    g.prompts.suffix = config.prompt_suffix
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
    results = sample_and_score(sampler, fmt, prompts, sp, suffix=config.prompt_suffix)
    summary = summarize(results, ks=(1, ec.k))
    write_results(os.path.dirname(path), results, summary)
    return summary


def run(config) -> dict[str, Any]:
    """Runs (or resumes) the pipeline; returns the results written to results.json,
    or with `config.seeds` (a study) the summary written to study.json."""
    if jax.process_count() > 1:
        raise ValueError("distill-pipeline is the single-host demo; on several hosts run the "
                         "stages (distill-generate, -filter, -train, -evaluate), which are "
                         "multi-host aware")
    config = apply_quick(config)
    if not storage.is_local(config.output_dir):
        # The demo's own bookkeeping (the student directories, the plots) is local;
        # each stage it calls takes bucket paths when run on its own.
        raise ValueError(f"config.output_dir: {config.output_dir} is a bucket path; the demo "
                         "pipeline writes to a local directory (the stages, distill-generate, "
                         "-filter, -train and -evaluate, take bucket paths)")
    _check_arms(config)
    jobs.resolve_workers(config.get("workers", -1), 1, jax.default_backend())
    _task(config)                       # a bad task section fails here, before any stage
    _misconception(config)
    out = os.path.abspath(config.output_dir)
    seeds = list(config.get("seeds") or ())
    if not seeds:
        return _run_seed(config, out)
    per_seed = {}
    for seed in seeds:
        c = copy.deepcopy(config)
        c.seed = seed
        print(f"pipeline: study seed {seed} ({len(per_seed) + 1} of {len(seeds)})", flush=True)
        # One compilation cache for every seed: the seeds run the same programs, so
        # the later seeds load what the first compiled (the same binaries, so the
        # same bits: demo/jobs.py).
        per_seed[seed] = _run_seed(c, os.path.join(out, f"seed-{seed}"),
                                   xla_cache=os.path.join(out, "xla_cache"))
    study = report.study_summary(per_seed)
    _publish(out, "study", study, report.format_study, report.plot_study)
    return study


def _publish(out: str, name: str, results: dict[str, Any], table, plot) -> None:
    """`name`.json, `name`.md (the table, also printed) and `name`.png under `out`."""
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, f"{name}.json"), results)
    text = table(results)
    write_text_atomic(os.path.join(out, f"{name}.md"), text + "\n")
    print(text)
    try:
        plot(results, os.path.join(out, f"{name}.png"))
    except ImportError:
        print(f"pipeline: matplotlib is not installed; skipping {name}.png")


def _check_arms(config) -> None:
    unknown = [a for a in config.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"config.arms: unknown arm(s) {unknown}; choose from {ARMS}")
    if "on_policy" in config.arms and "filtered" not in config.arms:
        raise ValueError("config.arms: the on_policy arm starts from the filtered arm's "
                         "student: keep 'filtered' in config.arms")
    if "filtered_base" in config.arms and config.base.train.num_steps <= 0:
        raise ValueError("config.arms: filtered_base starts from the base, but "
                         "config.base.train.num_steps is 0 (no base): set it or drop the arm")
    if "filtered_small" in config.arms and "small" not in config.get("student_sizes", {}):
        raise ValueError("config.arms: filtered_small needs config.student_sizes.small (the "
                         "model sizes that replace config.student's)")


def _run_seed(config, out: str, xla_cache: str | None = None) -> dict[str, Any]:
    """One seed of the pipeline, every stage under `out`; the worker processes'
    compilation cache in `xla_cache` (default `out`/xla_cache)."""
    start = time.monotonic()
    os.makedirs(out, exist_ok=True)
    times = stage_times.StageTimes(out)

    def stage(name, marker, fn, *args):
        """Runs a quick stage, which reads its output back when `marker` exists (the
        file its function checks for that): then its time is the one recorded when
        it was built."""
        if os.path.exists(os.path.join(out, marker)):
            print(f"pipeline: {name}: reusing its output ({marker} exists)", flush=True)
            times.reuse(name)
            return fn(*args)
        t = time.monotonic()
        print(f"pipeline: {name} ...", flush=True)
        result = fn(*args)
        times.built(name, time.monotonic() - t)
        return result

    tokenizer = stage("tokenizer", "tokenizer.model", _tokenizer, config, out)
    paths = stage("data", "data/test_prompts.jsonl", _prepare_data, config, out)
    arms = [a for a in ARMS if a in config.arms]
    stages = _stage_jobs(config, out, tokenizer, paths)
    work = _arm_jobs(config, out, arms, tokenizer, paths)
    workers = jobs.resolve_workers(config.get("workers", -1), len(work), jax.default_backend())
    print(f"pipeline: {', '.join(job.name for job in stages)} in this process; "
          f"{len(work)} students and evaluations "
          + (f"in {workers} worker processes, those that do not need the teacher beside "
             "it" if workers else "after them, in this process"), flush=True)
    # A training job whose directory holds a checkpoint resumes from it, sampling from
    # the shards it finished.
    traces_dir = os.path.join(out, "traces")
    resuming = {job.name for job in work if not job.done
                and _has_checkpoint(os.path.dirname(job.log))}
    if not stages[0].done and _has_checkpoint(os.path.join(out, "teacher")):
        resuming.add("teacher")
    if not stages[1].done and os.path.isdir(traces_dir) and any(
            n.startswith("shard-") for n in os.listdir(traces_dir)):
        resuming.add("generate")
    for job in stages + work:
        if job.done:
            print(f"pipeline: {job.name}: reusing its output", flush=True)
            times.reuse(job.name)
        elif job.name in resuming:
            print(f"pipeline: {job.name}: resuming an earlier attempt", flush=True)
    stages_end = [time.monotonic()] if all(job.done for job in stages) else []

    def finished(name, seconds):
        times.built(name, seconds, resumed=name in resuming)
        if name == stages[-1].name:
            stages_end.append(time.monotonic())

    def nothing_to_learn_from(name, curated):
        """After the filter: with no sample left, the arms that train on them go."""
        if name != "filter" or _filtered_samples(curated) > 0:
            return []
        return ["base", *(f"student:{arm}" for arm in _NEED_FILTERED)]
    done, _ = jobs.run_jobs(stages + work, workers,
                            compile_cache=xla_cache or os.path.join(out, "xla_cache"),
                            on_finish=finished, drop=nothing_to_learn_from)
    curated = done["filter"]
    unfiltered = _unfiltered(out, done["generate"])
    with open(os.path.join(curated, "report.json")) as f:
        filter_report = json.load(f)
    skipped = {}
    if filter_report["output"]["samples"] == 0:
        # Nothing survived the filters: the arms that train on it had no data.
        skipped = {arm: "no teacher sample passed the filters" for arm in arms
                   if arm in _NEED_FILTERED}
        arms = [a for a in arms if a not in skipped]
    # The phase after this process's stages: the wall clock from the filter's end to
    # the last job's, when this run did all of it (a resumed phase's would be only
    # the part it redid), kept with the jobs it covers. (The jobs that started beside
    # the stages did part of their work before it.)
    phase, names = "students and evaluations", [job.name for job in work]
    if not any(job.done for job in work) and stages_end:
        times.built(phase, time.monotonic() - stages_end[-1], resumed=bool(resuming),
                    parts=names)
    elif all(job.done for job in work):
        times.reuse(phase, parts=names)
    else:
        times.forget(phase)
    evals = {name: done[f"eval:{name}"] for name in ["teacher", *arms]}
    results = {
        "test_problems": config.data.test_problems, "samples_per_problem": config.evaluate.k,
        "seed": config.seed, "accuracy": {name: e["pass@1"] for name, e in evals.items()},
        "skipped_arms": skipped,
        "pass_at_k": {name: e["pass@k"] for name, e in evals.items()},
        "training_examples": {"answer_only": config.data.train_prompts,
                              "unfiltered": filter_report["input"]["samples"],
                              "filtered": filter_report["output"]["samples"]},
        "filter_stages": [{k: s[k] for k in ("name", "in", "out")}
                          for s in filter_report["stages"]],
        "teacher_pass_at_1_on_train_prompts": filter_report["teacher"]["pass_at_k"].get("1"),
        "curves": {arm: report.curve(os.path.join(out, "students", arm)) for arm in arms
                   if arm != "on_policy"},
        # Each stage's time in the run that built it, the stages this run read back
        # instead (a rerun, a resumed run) and the ones resumed from an unfinished
        # attempt (demo/stage_times.py); this run's own wall clock.
        **times.report(), "total_seconds": round(time.monotonic() - start, 1),
    }
    if "filtered_base" in arms:
        results["base_curve"] = report.curve(os.path.join(out, "base"))
    results.update(report.uncertainty(out, list(evals), config.seed))
    results["misread_in_training_data"] = {
        "unfiltered": report.misread_in_data(unfiltered),
        "filtered": report.misread_in_data(os.path.join(curated, "curated.jsonl"))}
    if "on_policy" in arms:
        workdir = os.path.join(out, "students", "on_policy")
        results["on_policy"] = {
            "steps": config.on_policy.num_steps, "kind": config.on_policy.kind,
            "samples_per_step": config.on_policy.batch_size,
            "held_out_reverse_kl": report.curve(workdir, "eval/reverse_kl"),
            "held_out_teacher_logprob": report.curve(workdir, "eval/teacher_logprob"),
            "train_reverse_kl": report.curve(workdir, "reverse_kl")}
    _publish(out, "results", results, report.format_results, report.plot_results)
    return results


def _has_checkpoint(workdir: str) -> bool:
    """A training run in `workdir` saved a checkpoint (orbax: a directory per step)."""
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def _stage_jobs(config, out, tokenizer, paths) -> list[jobs.Job]:
    """The stages that run in this process on every core (demo/jobs.py, `Job.here`):
    the teacher, its samples of the training prompts and the filters, one after
    another; each reads its output back when it is complete."""
    teacher_dir = os.path.join(out, "teacher")
    teacher = os.path.join(teacher_dir, "export")
    return [
        jobs.Job("teacher", _train_model,
                 (config, teacher_dir, paths["teacher_sft"], tokenizer, config.teacher),
                 here=True, done=_done(os.path.join(teacher_dir, "summary.json"))),
        jobs.Job("generate", _sample_for_students,
                 (config, out, teacher, tokenizer, paths["train_prompts"]), after=("teacher",),
                 here=True, done=_done(os.path.join(out, "traces", "summary.json"))),
        jobs.Job("filter", _filter, (config, out, os.path.join(out, "traces"),
                                     paths["test_prompts"]),
                 after=("generate",), here=True,
                 done=_done(os.path.join(out, "curated", "report.json"))),
    ]


def _sample_for_students(config, out, teacher, tokenizer, prompts_path) -> str:
    """The generate stage: the teacher's samples (`_generate`), and every one of them
    as the unfiltered arm's training data (`_unfiltered`)."""
    traces = _generate(config, out, teacher, tokenizer, prompts_path)
    _unfiltered(out, traces)
    return traces


def _filtered_samples(curated: str) -> int:
    """How many teacher samples passed the filters (`_filter`'s report)."""
    with open(os.path.join(curated, "report.json")) as f:
        return json.load(f)["output"]["samples"]


def _arm_jobs(config, out, arms, tokenizer, paths) -> list[jobs.Job]:
    """The students (one per arm, and filtered_base's base) and the evaluations of the
    teacher and of every student, as jobs (demo/jobs.py): each names the jobs it
    waits on (the stages of `_stage_jobs` among them: answer_only and the base need
    neither the teacher nor its samples, so they start beside the teacher) and
    writes its log in its own directory."""
    def trained(workdir):
        return _done(os.path.join(workdir, "summary.json"))

    def export(workdir):
        return os.path.join(workdir, "export")

    teacher = export(os.path.join(out, "teacher"))
    curated = os.path.join(out, "curated")
    data = {"answer_only": paths["answer_only"],
            "unfiltered": os.path.join(out, "data", "unfiltered.jsonl"),
            "kd_offline": os.path.join(curated, "curated.jsonl")}
    # What each arm's data comes from: the gold answers are there from the start.
    needs = {"answer_only": (), "unfiltered": ("generate",)}
    kd = {"kd_online": {"mode": "online", "alpha": config.kd.alpha,
                        "temperature": config.kd.temperature,
                        "teacher": {"checkpoint": teacher, "dtype": "float32",
                                    "param_dtype": "float32"}},
          "kd_offline": {"mode": "offline", "alpha": config.kd.alpha,
                         "temperature": config.kd.temperature, "topk": config.generate.return_top_k}}
    work = []
    for arm in arms:
        workdir = os.path.join(out, "students", arm)
        log = os.path.join(workdir, "log.txt")
        if arm == "on_policy":
            # The filtered student, trained further: sampling and the teacher in
            # every step cost about three SFT steps each.
            work.append(jobs.Job(
                f"student:{arm}", _on_policy,
                (config, workdir, export(os.path.join(out, "students", "filtered")), teacher,
                 tokenizer, paths),
                log, after=("student:filtered",), done=trained(workdir),
                cost=3 * _training_cost(config, config.student, config.on_policy.num_steps,
                                        config.on_policy.batch_size)))
            continue
        section = _student_section(config, arm)
        start, after = None, needs.get(arm, ("filter",))
        if arm == "filtered_base":
            base_dir = os.path.join(out, "base")
            base = _base_section(config, section)
            work.append(jobs.Job(
                "base", _train_model,
                (config, base_dir, _base_corpus(config, out), tokenizer, base),
                os.path.join(base_dir, "log.txt"), done=trained(base_dir),
                cost=_training_cost(config, base, base.num_steps, base.batch_size)))
            start, after = export(base_dir), (*after, "base")
        # Online KD runs the teacher's forward pass in every step as well.
        online = kd.get(arm, {}).get("mode") == "online"
        work.append(jobs.Job(
            f"student:{arm}", _train_model,
            (config, workdir, data.get(arm, os.path.join(curated, "tfds")), tokenizer, section,
             kd.get(arm), start),
            log, after=after, done=trained(workdir),
            cost=(1.3 if online else 1.0) * _training_cost(config, section, section.num_steps,
                                                           section.batch_size)))
    for name in ["teacher", *arms]:
        checkpoint = teacher if name == "teacher" else export(os.path.join(out, "students",
                                                                           name))
        directory = os.path.join(out, "eval", name)
        # Sampling the test split costs a small fraction of training a student: the
        # evaluations start when a worker has no student left to train.
        work.append(jobs.Job(
            f"eval:{name}", _evaluate,
            (config, name, checkpoint, tokenizer, paths["test_prompts"], out),
            os.path.join(directory, "log.txt"),
            after=("teacher",) if name == "teacher" else (f"student:{name}",),
            done=_done(os.path.join(directory, "summary.json")), cost=0.0))
    return work


def _training_cost(config, section, steps: int, rows: int) -> float:
    """A training run's relative cost, for the order the jobs start in: its tokens
    (rows of `_seq_len`) times the model's per-token work (width squared times depth)."""
    return float(steps * rows * _seq_len(config, section) * section.hidden_size ** 2
                 * section.num_layers)


def _base_section(config, student):
    """A student's base: its architecture and init, trained on `_base_corpus`."""
    section = copy.deepcopy(student)
    section.update(dict(config.base.train))
    return section


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
