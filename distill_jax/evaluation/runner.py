"""The `distill-evaluate` stage: k samples per problem, verified, summarized.

The R1 protocol: sample k solutions per problem (temperature 0.6, top-p 0.95
by default), check each with the verifiers of the filtering stage (math:
`extract_answer` + `math_equal` against the gold answer; code: the final code
block against the tests in the sandbox), and report

  pass@1    the fraction of correct samples, averaged over problems;
  pass@k    the unbiased estimator 1 - C(n-c, k)/C(n, k), for each k <= n;
  cons@k    majority vote over the k extracted answers (math only; ties go to
            the answer that appeared first — see `metrics.majority_answer`).

Writes `per_problem.jsonl` (every sample's text, answer and verdict) and
`summary.json` into the output directory (atomically), and prints a table.

Several hosts: host i samples and scores problems i::hosts (the sampler's
programs run on all hosts together); process 0 gathers the results, in problem
order, and writes them — the same files a single host writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax

from distill_jax import distributed, sharding
from distill_jax.data.prompts import Prompt, load_prompts_from_config
from distill_jax.evaluation.metrics import majority_answer, pass_at_k
from distill_jax.fileio import atomic_open, write_json_atomic
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
        winner = majority_answer(answers, math_equal)
        cons = winner is not None and math_equal(str(prompt.reference["answer"]), winner)
    return ProblemResult(prompt.id, prompt.kind, len(texts), correct, answers, verdicts,
                         list(texts), list(finish_reasons), cons)


def summarize(results: Sequence[ProblemResult], ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
              ) -> dict[str, Any]:
    if not results:
        raise ValueError("no problems to summarize")
    n = min(r.samples for r in results)
    out: dict[str, Any] = {
        "problems": len(results), "samples_per_problem": n,
        "pass@1": sum(r.correct / r.samples for r in results) / len(results),
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
        results.append(dataclasses.replace(result, prompt=fmt.tokenizer.decode(ids)))
    return results


def write_results(out_dir: str, results: Sequence[ProblemResult], summary: dict[str, Any]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with atomic_open(os.path.join(out_dir, "per_problem.jsonl"), "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n")
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)


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
    """The CLI's entry point: a checkpoint, a problem set, k samples each."""
    from distill_jax import models
    from distill_jax.config_keys import require_keys
    from distill_jax.evaluation.config import default_config
    from distill_jax.sampling.sampler import Sampler
    from distill_jax.tokenizer import load_tokenizer
    require_keys(config, default_config(), "distill-evaluate")
    pc, sc = config.problems, config.sampling
    prompts = load_prompts_from_config(pc)
    if not prompts:
        raise ValueError(f"{pc.path}: no problems")
    tokenizer = load_tokenizer(config.tokenizer.path or config.model.checkpoint)
    mesh = sharding.make_mesh(dict(config.mesh)) if config.get("mesh") else None
    fmt = chat_format_from_config(tokenizer, config.tokenizer)
    cfg, params = models.model_from_section(config.model, tokenizer.vocab_size, mesh)
    sampler = Sampler(cfg, params, mesh=mesh, tokenizer=tokenizer, max_batch=config.max_batch,
                      pad_id=tokenizer.pad_id or 0)
    sp = SamplingParams(n=sc.k, temperature=sc.temperature, top_p=sc.top_p,
                        max_new_tokens=sc.max_new_tokens, seed=sc.seed,
                        stop_token_ids=fmt.stop_token_ids())
    # Every I/O case is judged (no early stop): the report shows how far a program got.
    verifier = Correctness(math_timeout_s=config.math_timeout_s, io_stop_on_first_failure=False)
    host, hosts = jax.process_index(), jax.process_count()
    mine = sample_and_score(sampler, fmt, prompts[host::hosts], sp, pc.get("suffix"), verifier)
    results = mine
    if hosts > 1:   # problem i was scored by host i % hosts, as its (i // hosts)-th result
        gathered = distributed.gather_json([dataclasses.asdict(r) for r in mine])
        results = [ProblemResult(**gathered[i % hosts][i // hosts]) for i in range(len(prompts))]
    summary = summarize(results)
    summary.update(model=config.model.checkpoint, problems_path=os.path.abspath(pc.path),
                   sampling={"k": sc.k, "temperature": sc.temperature, "top_p": sc.top_p,
                             "max_new_tokens": sc.max_new_tokens, "seed": sc.seed})
    if distributed.is_primary():
        write_results(config.output_dir, results, summary)
        print(format_table(summary, os.path.basename(pc.path)))
    return summary
