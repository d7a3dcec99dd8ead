"""The `distill-filter` stage: teacher trace shards -> curated dataset + report.

1. Read every `*.jsonl` shard of `input_dir` (sorted). A line that is not JSON,
   not an object, or lacks a required field is counted, listed with its
   `file:line` in the report and in `audit/malformed.jsonl`, and skipped.
2. Run the configured filters (`filters.order`) on each sample, in parallel
   over CPU cores; the first rejection decides. The correctness verifier also
   runs on every sample (even rejected ones) for the teacher's pass@k.
3. Per prompt, in sample order: drop exact and near-duplicate responses
   (Jaccard similarity of word 5-gram shingles >= `dedup.near_duplicate_threshold`
   against samples already kept), then keep at most `max_per_prompt`.
4. Write, into `output_dir`: `curated.jsonl` (kept samples), `tfds/` (the same
   as an array_record tensorflow-datasets dataset, see data/curated_tfds.py),
   `report.json` (counts in/out per filter, acceptance per prompt, pass@k, the
   malformed lines) and `audit/<filter>-<reason>.jsonl` (every rejected sample).

Everything is written to a staging directory that replaces `output_dir` only
when complete. The report records a fingerprint of the inputs and config; a
rerun with the same fingerprint returns the existing report without work.
"""
from __future__ import annotations

import collections
import concurrent.futures
import glob
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from typing import Any, Iterable

from absl import logging

from distill_jax.evaluation.metrics import pass_at_k
from distill_jax.fileio import write_json_atomic
from distill_jax.filters import decontaminate, text_quality, verify
from distill_jax.filters.sample import Sample, Verdict, assistant_prefix, make_sample, reject
from distill_jax.progress import Progress

REPORT = "report.json"
CURATED = "curated.jsonl"
FILTER_CLASSES = {
    "truncated": text_quality.Truncated, "think_format": text_quality.ThinkFormat,
    "length": text_quality.Length, "language": text_quality.Language,
    "repetition": text_quality.Repetition, "readability": text_quality.Readability,
}
KNOWN_FILTERS = (*FILTER_CLASSES, "decontaminate", "correctness")


# ---------------------------------------------------------------- filter chain


class FilterChain:
    """The configured filters in order, plus the verifier (for pass@k)."""

    def __init__(self, config: dict[str, Any]):
        fc = config["filters"]
        self.order = list(fc["order"])
        unknown = [n for n in self.order if n not in KNOWN_FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {unknown}; known: {list(KNOWN_FILTERS)}")
        self.correctness = verify.Correctness(
            math_timeout_s=fc["correctness"]["math_timeout_s"],
            math_second_opinion=fc["correctness"]["math_second_opinion"],
            io_compare=fc["correctness"]["code_io_compare"],
            io_case_time_s=fc["correctness"]["code_io_case_time_s"],
            code_limits=verify.limits_from_config(fc["correctness"]))
        self.filters = []
        for name in self.order:
            params = dict(fc.get(name, {}))      # a filter without parameters has no section
            if name == "correctness":
                self.filters.append(self.correctness)
            elif name == "decontaminate":
                dc = config["decontamination"]
                index = decontaminate.load_eval_index(dc["eval_sets"], dc["data_dir"],
                                                      dc["ngram_size"])
                self.filters.append(decontaminate.Decontaminate(
                    index, dc["fields"], dc["min_overlap_fraction"]))
            else:
                self.filters.append(FILTER_CLASSES[name](**params))

    def evaluate(self, s: Sample) -> dict[str, Any]:
        """One sample through the chain. A filter that raises rejects this sample
        only (reason `verifier_error` for the correctness verifier, `filter_error`
        for the others, with `file:line` and the exception in the audit): one odd
        record must never abort a run over hundreds of thousands."""
        try:
            correct_verdict, final_answer = self.correctness.verify(s)
        except Exception as e:  # noqa: BLE001 -- any verifier bug is this record's verdict
            correct_verdict, final_answer = _raised(self.correctness.name, "verifier_error",
                                                    s, e), None
        verdict: Verdict | None = None
        for f in self.filters:
            if f is self.correctness:
                v = correct_verdict
            else:
                try:
                    v = f(s)
                except Exception as e:  # noqa: BLE001 -- as above, for the text filters
                    v = _raised(f.name, "filter_error", s, e)
            if not v.accepted:
                verdict = v
                break
        return {"accepted": verdict is None,
                "filter": verdict.filter if verdict else "", "reason": verdict.reason if verdict else "",
                "detail": verdict.detail if verdict else "", "correct": correct_verdict.accepted,
                "final_answer": final_answer}


def _raised(filter_name: str, reason: str, s: Sample, error: Exception) -> Verdict:
    logging.warning("filter: %s raised on %s: %s: %s", filter_name, s.where,
                    type(error).__name__, error)
    return reject(filter_name, reason, f"{s.where}: {type(error).__name__}: {error}"[:2000])


_WORKER_CHAIN: FilterChain | None = None


def _init_worker(config: dict[str, Any]) -> None:
    global _WORKER_CHAIN
    _WORKER_CHAIN = FilterChain(config)


def _evaluate_chunk(chunk: list[tuple[dict, str]]) -> list[dict[str, Any]]:
    return [_WORKER_CHAIN.evaluate(make_sample(record, where)) for record, where in chunk]


# ---------------------------------------------------------------- reading


def shard_paths(input_dir: str, pattern: str = "*.jsonl") -> list[str]:
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"trace directory {input_dir} does not exist")
    paths = sorted(glob.glob(os.path.join(input_dir, pattern)))
    if not paths:
        raise FileNotFoundError(f"no {pattern} shards in {input_dir}")
    return paths


def read_samples(paths: Iterable[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """All well-formed samples, and one entry per malformed line (never dropped silently)."""
    samples, malformed = [], []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
                    samples.append(make_sample(record, where))
                except json.JSONDecodeError as e:
                    malformed.append({"where": where, "error": f"malformed JSON: {e.msg}",
                                      "line": line[:2000]})
                except (KeyError, TypeError, ValueError) as e:
                    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                    malformed.append({"where": where, "error": str(msg), "line": line[:2000]})
    return samples, malformed


# ---------------------------------------------------------------- dedup


def _shingles(text: str, size: int) -> set[tuple[str, ...]]:
    w = text.split()
    if len(w) < size:
        return {tuple(w)}
    return {tuple(w[k:k + size]) for k in range(len(w) - size + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ---------------------------------------------------------------- the stage


def _fingerprint(paths: list[str], config: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in paths:
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


STAGE_KEYS = ("filters", "decontamination", "dedup", "max_per_prompt", "pass_at_k",
              "input_pattern")


def _stage_config(config) -> dict[str, Any]:
    """The settings that decide the output (the fingerprint's input). Every key of
    the defaults must be in the config: they are declared in filters/config.py alone."""
    from distill_jax.config_keys import require_keys
    from distill_jax.filters.config import default_config
    require_keys(config, default_config(), "distill-filter")
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: c[k] for k in STAGE_KEYS}


def filter_traces(config) -> dict[str, Any]:
    """Runs the stage; returns the report (also written to output_dir/report.json).

    In a multi-host launch the stage (host CPU work, no accelerator) runs on
    process 0 while the other hosts wait for it; they return the report it wrote
    when the output directory is shared, else an empty dict.
    """
    import jax   # here, not at the top: the filter's worker processes never need it
    if jax.process_count() == 1:
        return _filter_traces(config)
    from distill_jax import distributed
    report = _filter_traces(config) if distributed.is_primary() else None
    distributed.barrier("filter:done")
    if report is None:
        path = os.path.join(os.path.abspath(config.output_dir), REPORT)
        report = json.load(open(path)) if os.path.exists(path) else {}
    return report


def _filter_traces(config) -> dict[str, Any]:
    stage = _stage_config(config)
    out_dir = os.path.abspath(config.output_dir)
    paths = shard_paths(config.input_dir, stage["input_pattern"])
    FilterChain(stage)                      # bad filter names / eval sets fail before any work
    fingerprint = _fingerprint(paths, stage)
    report_path = os.path.join(out_dir, REPORT)
    if os.path.exists(report_path) and not config.force:
        with open(report_path) as f:
            old = json.load(f)
        if old.get("fingerprint") == fingerprint:
            print(f"filter: {out_dir} is up to date ({old['output']['samples']} samples)")
            return old
        logging.info("filter: inputs or config changed since %s; rebuilding", report_path)

    samples, malformed = read_samples(paths)
    if malformed:
        logging.warning("filter: %d malformed lines, first at %s (%s)", len(malformed),
                        malformed[0]["where"], malformed[0]["error"])
    results = _evaluate_all(samples, stage, config.num_workers)
    report, kept, rejected = _select(samples, results, stage, malformed)
    report["fingerprint"] = fingerprint
    report["input"]["files"] = [os.path.abspath(p) for p in paths]
    _write_outputs(out_dir, report, kept, rejected, malformed)
    _print_summary(report, out_dir)
    return report


def _evaluate_all(samples: list[Sample], stage: dict[str, Any], num_workers: int):
    workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, max(1, len(samples) // 16))
    progress = Progress(len(samples), "samples", "filter")
    chunks = [[(s.record, s.where) for s in samples[k:k + 32]]
              for k in range(0, len(samples), 32)]
    results: list[dict[str, Any]] = []
    if workers <= 1:
        _init_worker(stage)
        for chunk in chunks:
            results += _evaluate_chunk(chunk)
            progress.update(len(chunk))
        return results
    # spawn: the caller may hold JAX/threads, which fork would copy into a bad state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(stage,)) as pool:
        for chunk, out in zip(chunks, pool.map(_evaluate_chunk, chunks)):
            results += out
            progress.update(len(chunk))
    return results


def _select(samples, results, stage, malformed):
    """Dedup + per-prompt cap over the filter results; builds the report."""
    order = list(stage["filters"]["order"])
    counts = {n: collections.Counter() for n in order}
    by_prompt: dict[str, list[int]] = collections.OrderedDict()
    for k, s in enumerate(samples):
        by_prompt.setdefault(s.prompt_id, []).append(k)
    dd = stage["dedup"]
    shingle_size, threshold = dd["shingle_size"], dd["near_duplicate_threshold"]
    max_per_prompt = stage["max_per_prompt"]
    kept, rejected = [], []
    dedup_counts, cap_count = collections.Counter(), 0
    per_prompt = []
    for pid, idxs in by_prompt.items():
        idxs.sort(key=lambda k: samples[k].sample_index)
        seen_exact: set[str] = set()
        kept_shingles: list[set] = []
        n_kept = n_passed = 0
        for k in idxs:
            s, r = samples[k], results[k]
            if not r["accepted"]:
                counts[r["filter"]][r["reason"]] += 1
                rejected.append((s, r))
                continue
            n_passed += 1
            norm = " ".join(s.response.split())
            sh = _shingles(norm, shingle_size)
            if norm in seen_exact or any(_jaccard(sh, other) >= threshold
                                         for other in kept_shingles):
                reason = "duplicate" if norm in seen_exact else "near_duplicate"
                dedup_counts[reason] += 1
                detail = ("same response as a kept sample" if reason == "duplicate"
                          else f"Jaccard >= {threshold} with a kept sample")
                rejected.append((s, dict(r, accepted=False, filter="dedup", reason=reason,
                                         detail=detail)))
            elif max_per_prompt and n_kept >= max_per_prompt:
                cap_count += 1
                rejected.append((s, dict(r, accepted=False, filter="max_per_prompt",
                                         reason="over_limit",
                                         detail=f"already {max_per_prompt} kept")))
            else:
                seen_exact.add(norm)
                kept_shingles.append(sh)
                kept.append((s, r))
                n_kept += 1
        correct = sum(results[k]["correct"] for k in idxs)
        per_prompt.append({"prompt_id": pid, "source": samples[idxs[0]].record.get("source", ""),
                           "samples": len(idxs), "passed_filters": n_passed, "kept": n_kept,
                           "acceptance_rate": round(n_kept / len(idxs), 6), "correct": correct})

    stages, remaining = [], len(samples)
    for name in order:
        out = remaining - sum(counts[name].values())
        stages.append({"name": name, "in": remaining, "out": out,
                       "rejected": dict(sorted(counts[name].items()))})
        remaining = out
    out = remaining - sum(dedup_counts.values())
    stages.append({"name": "dedup", "in": remaining, "out": out,
                   "rejected": dict(sorted(dedup_counts.items()))})
    stages.append({"name": "max_per_prompt", "in": out, "out": out - cap_count,
                   "rejected": {"over_limit": cap_count} if cap_count else {}})

    rates = [p["acceptance_rate"] for p in per_prompt]
    report = {
        "input": {"lines": len(samples) + len(malformed), "samples": len(samples),
                  "prompts": len(by_prompt), "malformed_lines": len(malformed),
                  "malformed": [{"where": m["where"], "error": m["error"]} for m in malformed]},
        "stages": stages,
        "output": {"samples": len(kept), "prompts": len({s.prompt_id for s, _ in kept})},
        "acceptance": {
            "mean_rate_per_prompt": round(sum(rates) / len(rates), 6) if rates else 0.0,
            "prompts_with_kept_samples": sum(1 for p in per_prompt if p["kept"]),
            "kept_per_prompt_histogram": dict(sorted(collections.Counter(
                str(p["kept"]) for p in per_prompt).items(), key=lambda kv: int(kv[0]))),
        },
        "teacher": _teacher_metrics(per_prompt, stage["pass_at_k"]),
        "per_prompt": per_prompt,
    }
    return report, kept, rejected


def _teacher_metrics(per_prompt, ks) -> dict[str, Any]:
    """pass@k of the teacher from the verifier's verdict on every sample."""
    out: dict[str, Any] = {"correct_samples": sum(p["correct"] for p in per_prompt),
                           "samples": sum(p["samples"] for p in per_prompt)}
    pass_k = {}
    for k in ks:
        usable = [p for p in per_prompt if p["samples"] >= k]
        if usable and len(usable) == len(per_prompt):
            pass_k[str(k)] = round(sum(pass_at_k(p["samples"], p["correct"], k)
                                       for p in usable) / len(usable), 6)
    out["pass_at_k"] = pass_k
    return out


def _curated_record(s: Sample, r: dict[str, Any]) -> dict[str, Any]:
    rec = s.record
    out = {"prompt_id": s.prompt_id, "sample_index": s.sample_index,
           "source": rec.get("source", ""), "kind": s.kind, "problem": s.problem,
           "prompt": rec.get("user_message") or s.problem, "response": s.response,
           "assistant_prefix": assistant_prefix(rec),
           "final_answer": r["final_answer"] or "", "teacher_id": rec.get("teacher_id", ""),
           "num_tokens": s.num_tokens, "token_ids": rec.get("token_ids") or []}
    if rec.get("top_k_ids"):
        out["top_k_ids"] = rec["top_k_ids"]
        out["top_k_logprobs"] = rec["top_k_logprobs"]
    return out


def _audit_name(filter_name: str, reason: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{filter_name}-{reason}") + ".jsonl"


def _write_outputs(out_dir, report, kept, rejected, malformed) -> None:
    from distill_jax.data.curated_tfds import build_curated_dataset
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(out_dir)
    for name in os.listdir(parent):          # leftovers of killed runs
        if name.startswith(f".{base}.staging-") or name.startswith(f".{base}.old-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    staging = os.path.join(parent, f".{base}.staging-{os.getpid()}")
    os.makedirs(os.path.join(staging, "audit"))
    curated_path = os.path.join(staging, CURATED)
    with open(curated_path, "w", encoding="utf-8") as f:
        for s, r in kept:
            f.write(json.dumps(_curated_record(s, r), ensure_ascii=False) + "\n")
    audits: dict[str, list[str]] = collections.defaultdict(list)
    for s, r in rejected:
        audits[_audit_name(r["filter"], r["reason"])].append(json.dumps({
            "where": s.where, "prompt_id": s.prompt_id, "sample_index": s.sample_index,
            "filter": r["filter"], "reason": r["reason"], "detail": r["detail"],
            "final_answer": r["final_answer"], "response": s.response}, ensure_ascii=False))
    if malformed:
        audits["malformed.jsonl"] = [json.dumps(m, ensure_ascii=False) for m in malformed]
    for name, lines in audits.items():
        with open(os.path.join(staging, "audit", name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    report["audit_files"] = {name: len(lines) for name, lines in sorted(audits.items())}
    report["output"]["tfds"] = None          # tfds cannot hold an empty split
    if kept:
        build_curated_dataset(curated_path, os.path.join(staging, "tfds"))
        report["output"]["tfds"] = {"name": "curated_traces", "split": "train",
                                    "data_dir": os.path.join(out_dir, "tfds")}
    write_json_atomic(os.path.join(staging, REPORT), report)
    old = os.path.join(parent, f".{base}.old-{os.getpid()}")
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _print_summary(report: dict[str, Any], out_dir: str) -> None:
    print(f"filter: {report['input']['samples']} samples of {report['input']['prompts']} "
          f"prompts ({report['input']['malformed_lines']} malformed lines) -> "
          f"{report['output']['samples']} kept for {report['output']['prompts']} prompts")
    print(f"{'stage':<16}{'in':>8}{'out':>8}  rejected")
    for st in report["stages"]:
        reasons = ", ".join(f"{k}={v}" for k, v in st["rejected"].items())
        print(f"{st['name']:<16}{st['in']:>8}{st['out']:>8}  {reasons}")
    t = report["teacher"]
    print(f"teacher: {t['correct_samples']}/{t['samples']} samples correct; pass@k "
          + ", ".join(f"@{k}={v:.3f}" for k, v in t["pass_at_k"].items()))
    for m in report["input"]["malformed"][:10]:
        print(f"  malformed: {m['where']}: {m['error']}")
    print(f"filter: wrote {out_dir}")
