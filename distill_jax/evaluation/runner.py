"""The `distill-evaluate` stage: several benchmarks, k samples per problem, verified,
summarized the way the R1 paper reports them.

The R1 protocol (defaults in evaluation/config.py): sample k solutions per problem
(temperature 0.6, top-p 0.95, up to 32,768 new tokens; k per benchmark as the
paper's supplement gives it), check each with the verifiers of the filtering stage
(math: `extract_answer` + `math_equal` against the gold answer; multiple choice:
the letter chosen; code: the final code block against the tests, in the sandbox),
and report

  pass@1    the fraction of correct samples, averaged over problems, with its
            standard error across problems;
  pass@k    the unbiased estimator 1 - C(n-c, k)/C(n, k), for each k <= n;
  cons@k    majority vote over the k extracted answers (math and multiple choice;
            ties go to the answer that appeared first -- `metrics.majority_answer`).

One process evaluates every configured benchmark with one model load. Output
directory: `settings.json` (a rerun with other settings is refused),
`<benchmark>/per_problem.jsonl` (every sample's text, answer, verdict and token
count) and `<benchmark>/summary.json`, and for the run `summary.json`,
`summary.md` (the R1 paper's columns) and `pass_at_k.png`; all written
atomically. Problems are sampled in chunks appended to `<benchmark>/partial.jsonl`
as they finish: a killed run resumes where it stopped. A sample's tokens do not
depend on the chunk, batch, slot count, host count or mesh (the sampler seeds
each row from its prompt id), so neither do the numbers.

Buckets: `output_dir`, the checkpoint, the tokenizer and the benchmark files may be
`storage` URLs (`gs://...`); an unknown scheme fails before anything is read. Every
output is one object written whole; a bucket has no append, so there `partial.jsonl`
is rewritten whole after each chunk (with every problem finished so far) instead of
appended to.

Several hosts: host i samples and scores problems i::hosts of each chunk (the
sampler's programs run on all hosts together); process 0 gathers the results, in
problem order, and writes them -- the same files a single host writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax

from distill_jax import distributed, sharding, storage
from distill_jax.data.prompts import Prompt, load_prompts_from_config
from distill_jax.evaluation.metrics import majority_answer, pass_at_1_with_stderr, pass_at_k
from distill_jax.fileio import atomic_open, write_json_atomic
from distill_jax.progress import Progress
from distill_jax.filters.math_answer import math_equal
from distill_jax.filters.sample import make_sample
from distill_jax.filters.verify import Correctness
from distill_jax.chat import ChatFormat
from distill_jax.sampling.generate import chat_format_from_config, prompt_key, render_prompts
from distill_jax.sampling.params import SamplingParams


@dataclasses.dataclass
class ProblemResult:
    prompt_id: str
    kind: str
    samples: int
    correct: int
    answers: list[str | None]
    verdicts: list[str]
    texts: list[str]
    finish_reasons: list[str]
    cons_correct: bool | None
    prompt: str = ""        # what the model was given, as rendered (the same as generation)
    new_tokens: list[int] = dataclasses.field(default_factory=list)   # generated, per sample


def score_problem(prompt: Prompt, texts: Sequence[str], finish_reasons: Sequence[str],
                  assistant_prefix: str = "<think>\n",
                  verifier: Correctness | None = None) -> ProblemResult:
    """Verifies each generated text of one problem (pure: no model involved)."""
    verifier = verifier or Correctness()
    answers, verdicts, correct = [], [], 0
    for j, (text, finish) in enumerate(zip(texts, finish_reasons)):
        sample = make_sample({"prompt_id": prompt.id, "sample_index": j, "text": text,
                              "finish_reason": finish, "kind": prompt.kind,
                              "problem": prompt.problem, "reference": prompt.reference,
                              "assistant_prefix": assistant_prefix}, f"{prompt.id}#{j}")
        verdict, answer = verifier.verify(sample)
        answers.append(answer)
        verdicts.append("correct" if verdict.accepted else verdict.reason)
        correct += verdict.accepted
    cons = None
    if prompt.kind != "code" and prompt.reference.get("answer") not in (None, ""):
        # A vote over letters is a vote over letters; over answers, under math_equal.
        equal = (lambda a, b: a == b) if prompt.kind == "choice" else math_equal
        winner = majority_answer(answers, equal)
        cons = winner is not None and equal(str(prompt.reference["answer"]), winner)
    return ProblemResult(prompt.id, prompt.kind, len(texts), correct, answers, verdicts,
                         list(texts), list(finish_reasons), cons)


def summarize(results: Sequence[ProblemResult], ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
              ) -> dict[str, Any]:
    if not results:
        raise ValueError("no problems to summarize")
    n = min(r.samples for r in results)
    pass1, stderr = pass_at_1_with_stderr([r.correct for r in results],
                                          [r.samples for r in results])
    out: dict[str, Any] = {
        "problems": len(results), "samples_per_problem": n,
        "pass@1": pass1, "pass@1_stderr": stderr,
        "pass@k": {str(k): sum(pass_at_k(r.samples, r.correct, k) for r in results)
                   / len(results) for k in ks if k <= n},
    }
    voted = [r.cons_correct for r in results if r.cons_correct is not None]
    out[f"cons@{n}"] = sum(voted) / len(voted) if voted else None
    out["truncated_samples"] = sum(f == "length" for r in results for f in r.finish_reasons)
    return out


def sample_and_score(sampler, fmt: ChatFormat, prompts: Sequence[Prompt],
                     params: SamplingParams, suffix: str | None = None,
                     verifier: Correctness | None = None) -> list[ProblemResult]:
    """Generates `params.n` samples per prompt with `sampler` and scores them; prompts
    are rendered exactly as generation renders them (`fmt`)."""
    prompt_ids = render_prompts(list(prompts), fmt, suffix)
    outs = sampler.generate(prompt_ids, params, prompt_keys=[prompt_key(p.id) for p in prompts])
    results = []
    for p, ids, samples in zip(prompts, prompt_ids, outs):
        result = score_problem(p, [s.text for s in samples], [s.finish_reason for s in samples],
                               fmt.opener, verifier)
        results.append(dataclasses.replace(result, prompt=fmt.tokenizer.decode(ids),
                                           new_tokens=[len(s.token_ids) for s in samples]))
    return results


def write_results(out_dir: str, results: Sequence[ProblemResult], summary: dict[str, Any]) -> None:
    _write_jsonl(storage.join(out_dir, "per_problem.jsonl"), results)
    write_json_atomic(storage.join(out_dir, "summary.json"), summary)


def _write_jsonl(path: str, results: Sequence[ProblemResult]) -> None:
    storage.makedirs(storage.dirname(path))
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n")


def format_table(summary: dict[str, Any], title: str = "") -> str:
    keys = ["pass@1"] + [f"pass@{k}" for k in summary["pass@k"] if k != "1"]
    cons_key = next((k for k in summary if k.startswith("cons@")), None)
    header = f"{'set':<24}{'problems':>9}{'k':>4}" + "".join(f"{k:>10}" for k in keys)
    values = [summary["pass@1"]] + [v for k, v in summary["pass@k"].items() if k != "1"]
    row = f"{title:<24}{summary['problems']:>9}{summary['samples_per_problem']:>4}" + "".join(
        f"{v:>10.3f}" for v in values)
    if cons_key:
        header += f"{cons_key:>10}"
        row += f"{summary[cons_key]:>10.3f}" if summary[cons_key] is not None else f"{'-':>10}"
    return header + "\n" + row


def evaluate(config) -> dict[str, Any]:
    """The CLI's entry point: a checkpoint, several benchmarks, k samples per problem.

    Every benchmark's problems are read (and refused, naming the line) before the
    model loads; the settings are recorded in `settings.json` and a rerun into the same
    directory with other settings is refused; each benchmark is sampled in resumable
    chunks of problems (`<name>/partial.jsonl`), so a killed run redoes at most one
    chunk; then per benchmark `per_problem.jsonl` and `summary.json`, and for the run
    `summary.json`, `summary.md` (the R1 paper's columns) and `pass_at_k.png`.
    """
    from distill_jax import models
    from distill_jax.sampling.sampler import Sampler
    from distill_jax.tokenizer import load_tokenizer
    benchmarks = _benchmarks(config)
    _check_paths(config, benchmarks)
    problems = {name: load_prompts_from_config(b) for name, b in benchmarks.items()}
    for name, prompts in problems.items():
        if not prompts:
            raise ValueError(f"benchmarks.{name}: no problems in {benchmarks[name].path}")
    settings = _settings(config, benchmarks)
    tokenizer = load_tokenizer(config.tokenizer.path or config.model.checkpoint)
    mesh = sharding.make_mesh(dict(config.mesh)) if config.get("mesh") else None
    fmt = chat_format_from_config(tokenizer, config.tokenizer)
    _check_prompt_lengths(benchmarks, problems, fmt, config,
                          models.config_from_section(config.model, tokenizer.vocab_size))
    if distributed.is_primary():
        _record_settings(config.output_dir, settings)
    cfg, params = models.model_from_section(config.model, tokenizer.vocab_size, mesh)
    sampler = Sampler(cfg, params, mesh=mesh, tokenizer=tokenizer, num_slots=config.num_slots,
                      pad_id=tokenizer.pad_id or 0)
    total = sum(len(p) for p in problems.values())
    progress = Progress(total, "problems", "evaluate", enabled=distributed.is_primary(),
                        skip_first=True)
    summaries = {}
    for name, b in benchmarks.items():
        # Every I/O case is judged (no early stop): the report shows how far a program got.
        verifier = Correctness(math_timeout_s=config.math_timeout_s,
                               io_stop_on_first_failure=False)
        params_b = SamplingParams(
            n=b.k, temperature=config.sampling.temperature, top_p=config.sampling.top_p,
            max_new_tokens=b.max_new_tokens or config.sampling.max_new_tokens,
            seed=config.sampling.seed, stop_token_ids=fmt.stop_token_ids())
        # A chunk fills every slot once (its problems are split over the hosts).
        chunk = config.resume_chunk or max(1, config.num_slots // b.k)
        results = _run_benchmark(storage.join(config.output_dir, name), problems[name], chunk,
                                 lambda ps: sample_and_score(sampler, fmt, ps, params_b,
                                                             b.suffix, verifier), progress)
        summaries[name] = dict(summarize(results), k=b.k, path=storage.absolute(b.path))
        if distributed.is_primary():
            write_results(storage.join(config.output_dir, name), results, summaries[name])
            partial = storage.join(config.output_dir, name, "partial.jsonl")
            if storage.exists(partial):
                storage.remove(partial)      # per_problem.jsonl holds them all now
            print(format_table(summaries[name], name))
    report = {"benchmarks": summaries, "settings": settings}
    if distributed.is_primary():
        write_json_atomic(storage.join(config.output_dir, "summary.json"), report)
        storage.write_text_atomic(storage.join(config.output_dir, "summary.md"),
                                  r1_table(summaries, str(config.model.checkpoint)))
        plot_pass_at_k(summaries, storage.join(config.output_dir, "pass_at_k.png"))
        print(r1_table(summaries, str(config.model.checkpoint)))
    return report


def _benchmarks(config) -> dict[str, Any]:
    """The configured benchmarks with a path, each checked against `benchmark()`'s keys."""
    from distill_jax.config_keys import require_keys
    from distill_jax.evaluation.config import benchmark, default_config
    defaults = default_config()
    defaults.benchmarks = {}             # the names are the user's: each checked below
    require_keys(config, defaults, "distill-evaluate")
    out = {}
    for name, b in config.benchmarks.items():
        require_keys(b, benchmark("", "jsonl", 1), f"distill-evaluate benchmarks.{name}")
        if not b.path:
            print(f"evaluate: benchmarks.{name} has no path; left out")
            continue
        if b.k < 1:
            raise ValueError(f"benchmarks.{name}.k must be >= 1, got {b.k}")
        out[name] = b
    if not out:
        raise ValueError("distill-evaluate: no benchmark has a path (config.benchmarks)")
    return out


def _check_paths(config, benchmarks) -> None:
    """An unknown URL scheme (or one without its backend) fails before anything is read."""
    storage.check_path(config.output_dir, "config.output_dir")
    storage.check_path(config.model.checkpoint, "config.model.checkpoint")
    storage.check_path(config.tokenizer.path, "config.tokenizer.path")
    for name, b in benchmarks.items():
        storage.check_path(b.path, f"config.benchmarks.{name}.path")


def _check_prompt_lengths(benchmarks, problems, fmt, config, cfg) -> None:
    """Refuses, before the weights load, a problem whose prompt and new tokens do not
    fit the model's positions (naming the benchmark, the problem and the numbers)."""
    for name, b in benchmarks.items():
        new = b.max_new_tokens or config.sampling.max_new_tokens
        rendered = render_prompts(problems[name], fmt, b.suffix)
        longest = max(range(len(rendered)), key=lambda i: len(rendered[i]))
        if len(rendered[longest]) + new > cfg.max_position_embeddings:
            raise ValueError(
                f"benchmarks.{name}: problem {problems[name][longest].id!r} has "
                f"{len(rendered[longest])} prompt tokens; with max_new_tokens={new} that is "
                f"more than the model's {cfg.max_position_embeddings} positions (lower "
                f"max_new_tokens for this benchmark, or use a longer-context model)")


def _settings(config, benchmarks) -> dict[str, Any]:
    """What the numbers depend on (not the topology: a sample does not depend on it)."""
    model = config.model.to_dict()
    if model.get("checkpoint") and storage.is_local(model["checkpoint"]) \
            and os.path.exists(model["checkpoint"]):
        model["checkpoint"] = os.path.abspath(model["checkpoint"])
    return {"model": model, "math_timeout_s": config.math_timeout_s,
            "tokenizer": {k: config.tokenizer[k] for k in config.tokenizer},
            "sampling": {k: config.sampling[k] for k in config.sampling},
            "benchmarks": {name: {k: (storage.absolute(b[k]) if k == "path" else b[k])
                                  for k in b} for name, b in benchmarks.items()}}


def _record_settings(out_dir: str, settings: dict[str, Any]) -> None:
    """Writes settings.json, or refuses a directory written with other settings. A new
    benchmark may join a directory; a benchmark already there must keep its settings."""
    path = storage.join(out_dir, "settings.json")
    settings = json.loads(json.dumps(settings))
    if storage.exists(path):
        before = json.loads(storage.read_text(path))
        shared = set(before.get("benchmarks", {})) & set(settings["benchmarks"])
        changed = _differences(
            dict(before, benchmarks={k: before["benchmarks"][k] for k in shared}),
            dict(settings, benchmarks={k: settings["benchmarks"][k] for k in shared}))
        if changed:
            raise ValueError(f"{out_dir} holds results of other settings ({'; '.join(changed)});"
                             " use another output_dir, or delete it to start over")
        settings["benchmarks"] = {**before.get("benchmarks", {}), **settings["benchmarks"]}
    storage.makedirs(out_dir)
    write_json_atomic(path, settings)


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _run_benchmark(out_dir: str, prompts: Sequence[Prompt], chunk: int, score,
                   progress: Progress) -> list[ProblemResult]:
    """The results of every problem, in order: those already in `partial.jsonl` (a
    killed run's finished chunks), then the rest, chunk by chunk, each appended there
    once scored. Problem i of a chunk is scored by host i % hosts."""
    done = _finished(out_dir, prompts) if distributed.is_primary() else []
    done = [ProblemResult(**r) for r in distributed.gather_json(
        [dataclasses.asdict(r) for r in done])[0]]
    progress.update(len(done))
    results = list(done)
    host, hosts = jax.process_index(), jax.process_count()
    for start in range(len(done), len(prompts), chunk):
        part = list(prompts[start:start + chunk])
        mine = score(part[host::hosts])
        if hosts > 1:   # problem i was scored by host i % hosts, as its (i // hosts)-th result
            gathered = distributed.gather_json([dataclasses.asdict(r) for r in mine])
            mine = [ProblemResult(**gathered[i % hosts][i // hosts]) for i in range(len(part))]
        results += mine
        if distributed.is_primary():
            _record_finished(out_dir, mine, results)
        progress.update(len(part), tokens=sum(sum(r.new_tokens) for r in mine))
    return results


def _finished(out_dir: str, prompts: Sequence[Prompt]) -> list[ProblemResult]:
    """The leading problems an earlier run finished: all of them once the benchmark was
    written (`per_problem.jsonl`), else the chunks a killed run appended to
    `partial.jsonl` (a torn last line is dropped)."""
    path = storage.join(out_dir, "per_problem.jsonl")
    if not storage.exists(path):
        path = storage.join(out_dir, "partial.jsonl")
    if not storage.exists(path):
        return []
    out, good_bytes = [], 0
    with storage.open(path, "rb") as f:
        for line, prompt in zip(f, prompts):
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n"):
                break                         # torn: the writer died inside this line
            if row.get("prompt_id") != prompt.id:
                raise ValueError(f"{path} does not match the problems of this run "
                                 f"(found {row.get('prompt_id')!r}, expected {prompt.id!r})")
            out.append(ProblemResult(**row))
            good_bytes += len(line)
    # The next chunk appends after the last good line (a bucket's object is never torn).
    if path.endswith("partial.jsonl") and storage.is_local(path) \
            and os.path.getsize(path) > good_bytes:
        os.truncate(path, good_bytes)
    return out


def _record_finished(out_dir: str, new: Sequence[ProblemResult],
                     finished: Sequence[ProblemResult]) -> None:
    """Makes `finished` (ending with `new`) what a killed run resumes from: locally
    `new` is appended, on a bucket the whole object is rewritten."""
    if storage.is_local(out_dir):
        _append_finished(out_dir, new)
    else:
        _write_jsonl(storage.join(out_dir, "partial.jsonl"), finished)


def _append_finished(out_dir: str, results: Sequence[ProblemResult]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "partial.jsonl"), "a", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def r1_table(summaries: dict[str, dict[str, Any]], model: str) -> str:
    """Markdown: one row per model in the R1 paper's layout (a benchmark's pass@1, and
    its cons@k where votes exist), then one row per benchmark with the details."""
    head, row = ["model"], [model]
    for name, s in summaries.items():
        head.append(f"{name} pass@1")
        row.append(f"{100 * s['pass@1']:.1f}")
        cons = s.get(f"cons@{s['samples_per_problem']}")
        if cons is not None:
            head.append(f"{name} cons@{s['samples_per_problem']}")
            row.append(f"{100 * cons:.1f}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |",
             "", "| benchmark | problems | k | pass@1 (%) | ± s.e. | cons@k (%) | truncated samples |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        cons = s.get(f"cons@{s['samples_per_problem']}")
        lines.append(f"| {name} | {s['problems']} | {s['samples_per_problem']} | "
                     f"{100 * s['pass@1']:.1f} | {100 * s['pass@1_stderr']:.1f} | "
                     f"{'-' if cons is None else f'{100 * cons:.1f}'} | {s['truncated_samples']} |")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(summaries: dict[str, dict[str, Any]], path: str) -> None:
    """pass@k against k, one curve per benchmark (log-2 k axis)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, s in summaries.items():
        ks = sorted(int(k) for k in s["pass@k"])
        ax.plot(ks, [100 * s["pass@k"][str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
