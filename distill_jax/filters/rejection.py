"""The `distill-filter` stage: teacher traces -> curated dataset + report, streamed.

1. Read the traces (`input.path`: our shards, or other tools' formats, see
   data/traces.py) as a sequence of work units (files, JSONL byte ranges,
   Parquet row groups). A row that is not JSON, not an object, or lacks a
   required field is counted, listed with its `file:line` in
   `audit/malformed.jsonl`, and skipped.
2. Run the configured filters (`filters.order`) on each sample, in parallel
   over CPU cores; the first rejection decides. The correctness verifier runs
   on every sample (even rejected ones) for the teacher's pass@k. With the
   judge enabled, samples the rules call `wrong_answer`/`no_answer`/
   `gold_unparseable` (and that pass every other filter) go to an LLM judge, and
   those it calls EQUIVALENT are kept (filters/judge.py).
3. In input order: drop exact and near-duplicate responses (Jaccard similarity
   of word shingles >= `dedup.near_duplicate_threshold`, by MinHash/LSH; see
   filters/dedup.py) against every sample kept before it — in the whole dataset
   (`dedup.scope="dataset"`) or in its prompt only — then keep at most
   `max_per_prompt` per prompt.
4. Write, into `output_dir`: `curated.jsonl` (kept samples; their teacher top-k,
   if any, in binary sidecars under `topk/`), `tfds/` (the same as an
   array_record tensorflow-datasets dataset, see data/curated_tfds.py),
   `report.json` (counts in/out per filter, acceptance, pass@k, the judge, the
   agreement of the input's own correctness labels with our verdict),
   `per_prompt.jsonl` (one row per prompt) and `audit/<filter>-<reason>.jsonl`
   (every rejected sample).

Memory is bounded: two work units' records (by default <= 64 MB of JSONL each:
the one being decided and the next, in the workers) are in memory at a time,
never the dataset; what grows with the dataset is the dedup
index (~460 bytes per kept sample, dedup.py) and 12 bytes per prompt (kept
counts, so `max_per_prompt` holds even when a prompt's samples are not
adjacent). Samples of one prompt are expected to be adjacent (our shards and
every reader's rows are); a prompt whose samples come back later is still
capped correctly but gets a second row in `per_prompt.jsonl` and is counted in
the report's `split_prompts`.

Resumable at unit granularity: each unit's outputs go into a work directory
next to `output_dir` named after the fingerprint of the inputs and config, and
a unit counts as done when its commit marker is written (last). A killed run
resumes after the last committed unit (rebuilding the dedup index from the
committed units' keys), and its output is byte-identical to an uninterrupted
run's. When every unit is done the outputs are assembled in a staging
directory that replaces `output_dir` whole; a rerun with the same fingerprint
returns the existing report without work.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from typing import Any, Callable

import numpy as np
from absl import logging

from distill_jax.evaluation.metrics import pass_at_k
from distill_jax.fileio import write_json_atomic
from distill_jax.filters import decontaminate, dedup, text_quality, verify
from distill_jax.filters.sample import Sample, Verdict, assistant_prefix, make_sample, reject
from distill_jax.progress import Progress

REPORT = "report.json"
CURATED = "curated.jsonl"
PER_PROMPT = "per_prompt.jsonl"
TOPK_DIR = "topk"
MAX_MALFORMED_IN_REPORT = 100
FILTER_CLASSES = {
    "truncated": text_quality.Truncated, "think_format": text_quality.ThinkFormat,
    "length": text_quality.Length, "language": text_quality.Language,
    "repetition": text_quality.Repetition, "readability": text_quality.Readability,
}
KNOWN_FILTERS = (*FILTER_CLASSES, "decontaminate", "correctness")
CHUNK = 32          # samples per task sent to a worker process


# ---------------------------------------------------------------- filter chain


class FilterChain:
    """The configured filters in order, plus the verifier (for pass@k) and the
    dedup keys of every sample that may be kept."""

    def __init__(self, config: dict[str, Any]):
        fc = config["filters"]
        self.order = list(fc["order"])
        unknown = [n for n in self.order if n not in KNOWN_FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {unknown}; known: {list(KNOWN_FILTERS)}")
        cc = fc["correctness"]
        if cc["unverifiable"] not in ("drop", "keep"):
            raise ValueError(f"filters.correctness.unverifiable must be 'drop' or 'keep', got "
                             f"{cc['unverifiable']!r}")
        self.keep_unverifiable = cc["unverifiable"] == "keep"
        self.correctness = verify.Correctness(
            math_timeout_s=cc["math_timeout_s"], math_second_opinion=cc["math_second_opinion"],
            io_compare=cc["code_io_compare"], io_case_time_s=cc["code_io_case_time_s"],
            code_limits=verify.limits_from_config(cc))
        jc = config["judge"]
        self.judge_reasons = frozenset(jc["reasons"]) if jc["enabled"] else frozenset()
        dd = config["dedup"]
        if dd["scope"] not in ("dataset", "prompt"):
            raise ValueError(f"dedup.scope must be 'dataset' or 'prompt', got {dd['scope']!r}")
        self.dedup_scope = dd["scope"]
        self.hasher = dedup.MinHasher(dd["shingle_size"], dd["num_perm"], dd["bands"])
        dedup.SeenIndex(self.hasher, dd["near_duplicate_threshold"])   # checks the threshold
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
        unverifiable = correct_verdict.reason == "unverifiable"
        chain_verdict = Verdict(True, self.correctness.name) \
            if unverifiable and self.keep_unverifiable else correct_verdict
        verdict: Verdict | None = None
        judge_candidate = False
        for f in self.filters:
            if f is self.correctness:
                v = chain_verdict
            else:
                try:
                    v = f(s)
                except Exception as e:  # noqa: BLE001 -- as above, for the text filters
                    v = _raised(f.name, "filter_error", s, e)
            if v.accepted:
                continue
            if verdict is None:
                verdict = v
                # The judge may overturn this verdict: see whether the rest pass.
                judge_candidate = f is self.correctness and v.reason in self.judge_reasons
                if not judge_candidate:
                    break
            else:
                judge_candidate = False
                break
        out = {"accepted": verdict is None,
               "filter": verdict.filter if verdict else "", "reason": verdict.reason if verdict else "",
               "detail": verdict.detail if verdict else "", "correct": correct_verdict.accepted,
               "unverifiable": unverifiable, "final_answer": final_answer,
               "judge_candidate": judge_candidate}
        if verdict is None or judge_candidate:
            scope = s.prompt_id if self.dedup_scope == "prompt" else ""
            out["dedup"] = self.hasher.keys(s.response, scope)
        return out


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


class _Evaluator:
    """The filter chain over a unit's samples, in worker processes (started once
    per run, `spawn`: the caller may hold JAX/threads, which fork would copy into
    a bad state), or in this process for one worker or a unit of one chunk.
    `submit` returns at once with the work queued, so the next unit is evaluated
    while this process decides the current one."""

    def __init__(self, stage: dict[str, Any], num_workers: int):
        self.stage = stage
        self.workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
        self.pool = None
        self.local: FilterChain | None = None

    def submit(self, samples: list[Sample]) -> Callable[[], list[dict[str, Any]]]:
        if self.workers <= 1 or len(samples) <= CHUNK:
            self.local = self.local or FilterChain(self.stage)
            results = [self.local.evaluate(s) for s in samples]
            return lambda: results
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.stage,))
        futures = [self.pool.submit(_evaluate_chunk, [(s.record, s.where)
                                                      for s in samples[k:k + CHUNK]])
                   for k in range(0, len(samples), CHUNK)]
        return lambda: [r for f in futures for r in f.result()]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------- configuration


STAGE_KEYS = ("input", "filters", "decontamination", "dedup", "judge", "max_per_prompt",
              "pass_at_k")


def _stage_config(config) -> dict[str, Any]:
    """The settings that decide the output (the fingerprint's input). Every key of
    the defaults must be in the config: they are declared in filters/config.py alone."""
    from distill_jax.config_keys import require_keys
    from distill_jax.filters.config import default_config
    require_keys(config, default_config(), "distill-filter")
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    stage = {k: c[k] for k in STAGE_KEYS}
    stage["input"] = {k: v for k, v in stage["input"].items()}
    return stage


def open_input(stage: dict[str, Any]):
    from distill_jax.data.traces import open_traces
    ic = stage["input"]
    return open_traces(ic["path"], format=ic["format"], fields=dict(ic["fields"] or {}),
                       pattern=ic["pattern"], kind=ic["kind"], source=ic["source"],
                       max_unit_bytes=int(ic["unit_mb"] * (1 << 20)))


def _fingerprint(traces, stage: dict[str, Any]) -> str:
    """Of the config and the input files (path, size, modification time) and units:
    reading every byte of 20 GB of traces to hash it would cost minutes."""
    h = hashlib.sha256(json.dumps(stage, sort_keys=True, default=str).encode())
    for path in traces.files:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for unit in traces.units:
        h.update(unit.key.encode() + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------- the stage


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
    FilterChain(stage)                    # bad filter names / eval sets fail before any work
    traces = open_input(stage)            # missing files, unknown format: here too
    judge_section = stage["judge"]
    if judge_section["enabled"]:
        from distill_jax.filters import judge as judge_module
        judge_module.check_judge_config(config.judge)
        stage["judge_prompt_version"] = judge_module.PROMPT_VERSION
    fingerprint = _fingerprint(traces, stage)
    report_path = os.path.join(out_dir, REPORT)
    if os.path.exists(report_path) and not config.force:
        with open(report_path) as f:
            old = json.load(f)
        if old.get("fingerprint") == fingerprint:
            print(f"filter: {out_dir} is up to date ({old['output']['samples']} samples)")
            return old
        logging.info("filter: inputs or config changed since %s; rebuilding", report_path)

    work = _WorkDir(out_dir, fingerprint, force=config.force)
    selection = _Selection(stage)
    start = work.resume(selection, len(traces.units))
    if start:
        print(f"filter: resuming after {start} of {len(traces.units)} committed units in "
              f"{work.path}")
    judge = _LazyJudge(config, out_dir) if judge_section["enabled"] else None
    evaluate = _Evaluator(stage, config.num_workers)
    progress = Progress(len(traces.units) - start, "units", "filter")

    def read_and_submit(i: int):
        if i >= len(traces.units):
            return None
        samples, malformed = _read_unit(traces.units[i])
        return samples, malformed, evaluate.submit(samples)

    try:
        pending = read_and_submit(start)
        for i in range(start, len(traces.units)):
            # The next unit is read and queued while the workers still evaluate this
            # one, and evaluated while this process decides this one: two units in
            # memory at most.
            samples, malformed, results = pending
            pending = read_and_submit(i + 1)
            results = results()
            if judge is not None:
                judge.apply(samples, results)
            _select_unit(work, i, traces.units[i], samples, results, malformed, selection)
            progress.update(1, samples=len(samples))
    finally:
        evaluate.close()
        if judge is not None:
            judge.close()
    selection.close_prompt()
    report = selection.report(stage)
    report["fingerprint"] = fingerprint
    report["input"].update(files=[os.path.abspath(p) for p in traces.files],
                           units=len(traces.units), format=traces.format)
    work.assemble(report, len(traces.units), selection.final_rows)
    _print_summary(report, out_dir)
    return report


def _read_unit(unit) -> tuple[list[Sample], list[dict[str, str]]]:
    from distill_jax.data.traces import Malformed
    samples, malformed = [], []
    for where, record in unit.records():
        if isinstance(record, Malformed):
            malformed.append({"where": record.where, "error": record.error,
                              "line": (record.line or "")[:2000]})
            continue
        try:
            samples.append(make_sample(record, where))
        except (KeyError, TypeError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            malformed.append({"where": where, "error": str(msg),
                              "line": json.dumps(record, ensure_ascii=False)[:2000]})
    return samples, malformed


class _LazyJudge:
    """The judge model is loaded at the first unit that has candidates; its verdicts
    are cached (by judge, gold and answer) beside the output directory, so a resumed
    or repeated run asks nothing twice."""

    def __init__(self, config, out_dir: str):
        from distill_jax.filters import judge as judge_module
        self.module = judge_module
        self.section = config.judge
        self.cache_path = self.section.cache_path or judge_module.default_cache_path(out_dir)
        self.judge = None

    def apply(self, samples: list[Sample], results: list[dict[str, Any]]) -> None:
        items, todo = [], []
        for k, r in enumerate(results):
            if r["judge_candidate"]:
                item = self.module.item_for_sample(samples[k], r["final_answer"])
                if item is not None:             # code, choice and gold-less samples: no
                    items.append(item)
                    todo.append(k)
        if not items:
            return
        if self.judge is None:
            self.judge = self.module.judge_from_config(self.section, self.cache_path)
        for k, verdict in zip(todo, self.judge.judge(items)):
            r = results[k]
            r["judge"] = verdict.verdict
            r["judge_cached"] = verdict.cached
            if verdict.equivalent:           # the judge's word is the verdict: correct
                r.update(accepted=True, filter="", reason="", correct=True,
                         detail=f"judge recovered: {r['detail']}")
            else:
                r["detail"] = f"{r['detail']} (judge: {verdict.verdict})"

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()


# ---------------------------------------------------------------- selection


@dataclasses.dataclass
class _Prompt:
    """The counts of the prompt being read (its samples are adjacent)."""
    prompt_id: str
    source: str
    samples: int = 0
    passed: int = 0
    kept: int = 0
    correct: int = 0
    kept_before: int = 0          # kept in an earlier, separate run of its samples
    indices: list = dataclasses.field(default_factory=list)   # sample indices seen


class _Selection:
    """The sequential decisions (dedup against everything kept so far, the
    per-prompt cap) and the running totals of the report. Its state after each
    committed unit is what a resumed run restores."""

    def __init__(self, stage: dict[str, Any]):
        dd = stage["dedup"]
        self.hasher = dedup.MinHasher(dd["shingle_size"], dd["num_perm"], dd["bands"])
        self.index = dedup.SeenIndex(self.hasher, dd["near_duplicate_threshold"])
        self.closed = dedup._MultiMap()         # prompt key -> kept count when it closed
        self.max_per_prompt = stage["max_per_prompt"]
        self.order = list(stage["filters"]["order"])
        self.ks = list(stage["pass_at_k"])
        self.threshold = dd["near_duplicate_threshold"]
        self.open: _Prompt | None = None
        self.totals = _empty_totals(self.ks)
        self.final_rows: list[dict[str, Any]] = []   # rows closed after the last unit
        self._rows: list[dict[str, Any]] = []
        self._new_keys: list[dedup.DedupKeys] = []
        self._new_closed: list[tuple[int, int]] = []

    # -- one sample
    def decide(self, s: Sample, r: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        t = self.totals
        if self.open is None or self.open.prompt_id != s.prompt_id:
            self.close_prompt()
            self._open_prompt(s)
        p = self.open
        if s.sample_index in p.indices:     # two rows claim one (prompt, sample): ids clash
            t["duplicate_ids"] += 1
            counts = t["rejected"].setdefault("input", {})
            counts["duplicate_id"] = counts.get("duplicate_id", 0) + 1
            return False, dict(r, accepted=False, filter="input", reason="duplicate_id",
                               detail=f"sample {s.sample_index} of prompt {s.prompt_id!r} "
                                      "appeared before")
        p.indices.append(s.sample_index)
        p.samples += 1
        p.correct += bool(r["correct"])
        t["samples"] += 1
        t["unverifiable"] += bool(r["unverifiable"])
        for name, value in (s.record.get("labels") or {}).items():
            ours = "unverifiable" if r["unverifiable"] else (
                "correct" if r["correct"] else "incorrect")
            key = "none" if value is None else str(value).lower()
            t["agreement"].setdefault(name, {}).setdefault(key, {}).setdefault(ours, 0)
            t["agreement"][name][key][ours] += 1
        if "judge" in r:
            t["judge"]["judged"] += 1
            t["judge"]["cached"] += bool(r.get("judge_cached"))
            t["judge"]["verdicts"][r["judge"]] = t["judge"]["verdicts"].get(r["judge"], 0) + 1
            if r["accepted"]:
                t["judge"]["recovered"] += 1
        if not r["accepted"]:
            counts = t["rejected"].setdefault(r["filter"], {})
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
            return False, r
        p.passed += 1
        keys: dedup.DedupKeys = r["dedup"]
        hit = self.index.check(keys)
        if hit:
            reason, similarity = hit
            t["dedup"][reason] = t["dedup"].get(reason, 0) + 1
            detail = ("same response as a kept sample" if reason == "duplicate" else
                      f"estimated Jaccard {similarity:.2f} >= {self.threshold} with a kept sample")
            return False, dict(r, accepted=False, filter="dedup", reason=reason, detail=detail)
        if self.max_per_prompt and p.kept + p.kept_before >= self.max_per_prompt:
            t["over_limit"] += 1
            return False, dict(r, accepted=False, filter="max_per_prompt", reason="over_limit",
                               detail=f"already {self.max_per_prompt} kept")
        self.index.add(keys)
        self._new_keys.append(keys)
        p.kept += 1
        t["kept"] += 1
        return True, r

    def _open_prompt(self, s: Sample) -> None:
        before = self.closed.get(_prompt_key(s.prompt_id))
        self.open = _Prompt(s.prompt_id, str(s.record.get("source", "")),
                            kept_before=before[-1] if before else 0)
        if before:
            self.totals["split_prompts"] += 1

    def close_prompt(self) -> None:
        p = self.open
        if p is None:
            return
        t = self.totals
        rate = p.kept / p.samples
        row = {"prompt_id": p.prompt_id, "source": p.source, "samples": p.samples,
               "passed_filters": p.passed, "kept": p.kept,
               "acceptance_rate": round(rate, 6), "correct": p.correct}
        self._rows.append(row)
        t["prompts"] += 1
        t["rate_sum"] += rate
        t["prompts_with_kept"] += p.kept > 0
        t["histogram"][str(p.kept)] = t["histogram"].get(str(p.kept), 0) + 1
        t["correct"] += p.correct
        for k in self.ks:
            if p.samples >= k:
                t["pass_sum"][str(k)] += pass_at_k(p.samples, p.correct, k)
            else:
                t["pass_short"][str(k)] += 1
        key = _prompt_key(p.prompt_id)
        self.closed.add(key, p.kept + p.kept_before)
        self._new_closed.append((key, p.kept + p.kept_before))
        self.open = None

    # -- commit and resume
    def take_unit_state(self) -> tuple[list[dict], dict[str, np.ndarray], dict[str, Any]]:
        """What a unit's commit saves: its closed prompts' rows, the index entries it
        added, and the totals and open prompt after it."""
        rows, self._rows = self._rows, []
        arrays = dedup.pack_keys(self._new_keys, self.hasher.num_perm, self.hasher.bands)
        arrays["closed"] = np.asarray(self._new_closed, np.int64).reshape(-1, 2)
        self._new_keys, self._new_closed = [], []
        state = {"totals": self.totals,
                 "open": dataclasses.asdict(self.open) if self.open else None}
        return rows, arrays, json.loads(json.dumps(state))

    def restore_unit(self, arrays, state: dict[str, Any]) -> None:
        for keys in dedup.unpack_keys(arrays):
            self.index.add(keys)
        for key, kept in arrays["closed"]:
            self.closed.add(int(key), int(kept))
        self.totals = state["totals"]
        self.open = _Prompt(**state["open"]) if state["open"] else None

    def report(self, stage: dict[str, Any]) -> dict[str, Any]:
        self.final_rows, self._rows = self._rows, []
        t = self.totals
        stages, remaining = [], t["samples"]
        for name in self.order:
            rejected = t["rejected"].get(name, {})
            out = remaining - sum(rejected.values())
            stages.append({"name": name, "in": remaining, "out": out,
                           "rejected": dict(sorted(rejected.items()))})
            remaining = out
        out = remaining - sum(t["dedup"].values())
        stages.append({"name": "dedup", "in": remaining, "out": out,
                       "rejected": dict(sorted(t["dedup"].items()))})
        stages.append({"name": "max_per_prompt", "in": out, "out": out - t["over_limit"],
                       "rejected": {"over_limit": t["over_limit"]} if t["over_limit"] else {}})
        prompts = t["prompts"]
        report = {
            "input": {"lines": t["samples"] + t["malformed_lines"], "samples": t["samples"],
                      "prompts": prompts, "malformed_lines": t["malformed_lines"],
                      "malformed": t["malformed"]},
            "stages": stages,
            "output": {"samples": t["kept"], "prompts": t["prompts_with_kept"]},
            "acceptance": {
                "mean_rate_per_prompt": round(t["rate_sum"] / prompts, 6) if prompts else 0.0,
                "prompts_with_kept_samples": t["prompts_with_kept"],
                "kept_per_prompt_histogram": dict(sorted(t["histogram"].items(),
                                                         key=lambda kv: int(kv[0]))),
            },
            "teacher": {"correct_samples": t["correct"], "samples": t["samples"],
                        # pass@k only where every prompt has at least k samples
                        "pass_at_k": {k: round(v / prompts, 6) for k, v in t["pass_sum"].items()
                                      if prompts and not t["pass_short"][k]}},
            "unverifiable": {"samples": t["unverifiable"],
                             "policy": stage["filters"]["correctness"]["unverifiable"]},
            "agreement": _agreement_table(t["agreement"]),
            "judge": dict(t["judge"], enabled=bool(stage["judge"]["enabled"])),
            "dedup": {"scope": stage["dedup"]["scope"], "kept_in_index": self.index.count,
                      "index_bytes": self.index.nbytes},
            "split_prompts": t["split_prompts"],
            "duplicate_ids": t["duplicate_ids"],
        }
        return report


def _empty_totals(ks) -> dict[str, Any]:
    return {"samples": 0, "kept": 0, "prompts": 0, "prompts_with_kept": 0, "rate_sum": 0.0,
            "histogram": {}, "correct": 0, "unverifiable": 0, "over_limit": 0,
            "rejected": {}, "dedup": {}, "malformed_lines": 0, "malformed": [],
            "pass_sum": {str(k): 0.0 for k in ks}, "pass_short": {str(k): 0 for k in ks},
            "agreement": {}, "split_prompts": 0, "duplicate_ids": 0,
            "judge": {"judged": 0, "cached": 0, "recovered": 0, "verdicts": {}}}


def _agreement_table(counts: dict[str, dict[str, dict[str, int]]]) -> dict[str, Any]:
    """Per input label: counts of (label value, our verdict), and the agreement rate
    over the samples where both say correct/incorrect."""
    out = {}
    for name, by_value in sorted(counts.items()):
        agree = total = 0
        for value, ours in by_value.items():
            for verdict, n in ours.items():
                if value in ("true", "false") and verdict in ("correct", "incorrect"):
                    total += n
                    agree += n if (value == "true") == (verdict == "correct") else 0
        out[name] = {"counts": {v: dict(sorted(o.items())) for v, o in sorted(by_value.items())},
                     "agreement": round(agree / total, 6) if total else None,
                     "compared": total}
    return out


def _prompt_key(prompt_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(prompt_id.encode(), digest_size=8).digest(),
                          "little") & 0x7FFF_FFFF_FFFF_FFFF


def _select_unit(work, i: int, unit, samples: list[Sample], results: list[dict[str, Any]],
                 malformed: list[dict[str, str]], selection: _Selection) -> None:
    """Decides every sample of unit i in order and commits the unit's outputs."""
    from distill_jax.data import topk_store
    t = selection.totals
    t["malformed_lines"] += len(malformed)
    room = MAX_MALFORMED_IN_REPORT - len(t["malformed"])
    t["malformed"] += [{"where": m["where"], "error": m["error"]} for m in malformed[:max(0, room)]]
    if malformed:
        logging.warning("filter: %d malformed rows in %s, first at %s (%s)", len(malformed),
                        unit.key, malformed[0]["where"], malformed[0]["error"])
    kept_lines, audits = [], collections.defaultdict(list)
    topk = None
    reader = topk_store.TopKReader()
    base_dir = os.path.dirname(os.path.abspath(unit.path))
    for s, r in zip(samples, results):
        kept, r = selection.decide(s, r)
        if kept:
            record = _curated_record(s, r)
            arrays = topk_store.topk_arrays(s.record, base_dir, reader)
            if arrays is not None:
                if topk is None:
                    os.makedirs(os.path.join(work.path, TOPK_DIR), exist_ok=True)
                    topk = topk_store.TopKWriter(os.path.join(work.path, TOPK_DIR), f"{i:05d}",
                                                 k=arrays[0].shape[1])
                ref = topk.add(*arrays)
                record["top_k"] = dict(ref, file=f"{TOPK_DIR}/{i:05d}")
            kept_lines.append(json.dumps(record, ensure_ascii=False))
        else:
            audits[_audit_name(r["filter"], r["reason"])].append(json.dumps({
                "where": s.where, "prompt_id": s.prompt_id, "sample_index": s.sample_index,
                "filter": r["filter"], "reason": r["reason"], "detail": r["detail"],
                "final_answer": r["final_answer"], "judge": r.get("judge"),
                "labels": s.record.get("labels") or {}, "response": s.response},
                ensure_ascii=False))
    if malformed:
        audits["malformed.jsonl"] = [json.dumps(m, ensure_ascii=False) for m in malformed]
    if topk is not None:
        topk.commit()
    rows, arrays, state = selection.take_unit_state()
    work.commit_unit(i, unit.key, kept_lines, audits, rows, arrays, state)


def _curated_record(s: Sample, r: dict[str, Any]) -> dict[str, Any]:
    rec = s.record
    out = {"prompt_id": s.prompt_id, "sample_index": s.sample_index,
           "source": rec.get("source", ""), "kind": s.kind, "problem": s.problem,
           "prompt": rec.get("user_message") or s.problem, "response": s.response,
           "assistant_prefix": assistant_prefix(rec),
           "final_answer": r["final_answer"] or "", "teacher_id": rec.get("teacher_id", ""),
           "num_tokens": s.num_tokens, "token_ids": rec.get("token_ids") or []}
    if rec.get("system"):
        out["system"] = rec["system"]
    if rec.get("labels"):
        out["labels"] = rec["labels"]
    if "judge" in r:
        out["judge"] = r["judge"]
    return out


def _audit_name(filter_name: str, reason: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{filter_name}-{reason}") + ".jsonl"


# ---------------------------------------------------------------- files


class _WorkDir:
    """`.<output>.work-<fingerprint>/` next to the output: per unit i, its kept
    records, audit lines, per-prompt rows and dedup keys, then `units/<i>.json`
    (the commit marker, written last and atomically) with the totals after it."""

    def __init__(self, out_dir: str, fingerprint: str, force: bool):
        self.out_dir = out_dir
        self.parent = os.path.dirname(out_dir) or "."
        self.base = os.path.basename(out_dir)
        os.makedirs(self.parent, exist_ok=True)
        self.path = os.path.join(self.parent, f".{self.base}.work-{fingerprint[:16]}")
        for name in os.listdir(self.parent):      # leftovers of other configs / killed runs
            full = os.path.join(self.parent, name)
            stale_work = name.startswith(f".{self.base}.work-") and (full != self.path or force)
            if stale_work or name.startswith(f".{self.base}.staging-") \
                    or name.startswith(f".{self.base}.old-"):
                shutil.rmtree(full, ignore_errors=True)
        os.makedirs(os.path.join(self.path, "units"), exist_ok=True)

    def _unit(self, i: int, suffix: str) -> str:
        return os.path.join(self.path, "units", f"{i:05d}{suffix}")

    def resume(self, selection: _Selection, num_units: int) -> int:
        """Restores the committed prefix of units; returns the first unit to do."""
        i = 0
        while i < num_units and os.path.exists(self._unit(i, ".json")):
            with open(self._unit(i, ".json")) as f:
                state = json.load(f)
            with np.load(self._unit(i, ".keys.npz")) as arrays:
                selection.restore_unit(arrays, state)
            i += 1
        return i

    def commit_unit(self, i, key, kept_lines, audits, rows, arrays, state) -> None:
        _write_lines(self._unit(i, ".kept.jsonl"), kept_lines)
        _write_lines(self._unit(i, ".per_prompt.jsonl"),
                     [json.dumps(r, ensure_ascii=False) for r in rows])
        _write_json_lines_by_name(self._unit(i, ".audit"), audits)
        np.savez(self._unit(i, ".keys.npz"), **arrays)
        write_json_atomic(self._unit(i, ".json"), dict(state, unit=key))

    def assemble(self, report: dict[str, Any], num_units: int,
                 final_rows: list[dict[str, Any]]) -> None:
        """The output directory from the committed units, staged then swapped in."""
        from distill_jax.data.curated_tfds import build_curated_dataset
        staging = os.path.join(self.parent, f".{self.base}.staging-{os.getpid()}")
        os.makedirs(os.path.join(staging, "audit"))
        units = [self._unit(i, "") for i in range(num_units)]
        _concat([u + ".kept.jsonl" for u in units], os.path.join(staging, CURATED))
        per_prompt = os.path.join(staging, PER_PROMPT)
        _concat([u + ".per_prompt.jsonl" for u in units], per_prompt)
        with open(per_prompt, "a", encoding="utf-8") as f:
            for row in final_rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        names = sorted({n for u in units if os.path.isdir(u + ".audit")
                        for n in os.listdir(u + ".audit")})
        audit_files = {}
        for name in names:
            target = os.path.join(staging, "audit", name)
            _concat([os.path.join(u + ".audit", name) for u in units], target)
            with open(target, "rb") as f:
                audit_files[name] = sum(1 for _ in f)
        report["audit_files"] = audit_files
        report["per_prompt_file"] = PER_PROMPT
        if os.path.isdir(os.path.join(self.path, TOPK_DIR)):
            os.replace(os.path.join(self.path, TOPK_DIR), os.path.join(staging, TOPK_DIR))
        report["output"]["tfds"] = None          # tfds cannot hold an empty split
        if report["output"]["samples"]:
            build_curated_dataset(os.path.join(staging, CURATED), os.path.join(staging, "tfds"))
            report["output"]["tfds"] = {"name": "curated_traces", "split": "train",
                                        "data_dir": os.path.join(self.out_dir, "tfds")}
        write_json_atomic(os.path.join(staging, REPORT), report)
        old = os.path.join(self.parent, f".{self.base}.old-{os.getpid()}")
        if os.path.exists(self.out_dir):
            os.replace(self.out_dir, old)
        os.replace(staging, self.out_dir)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def _write_json_lines_by_name(directory: str, groups: dict[str, list[str]]) -> None:
    shutil.rmtree(directory, ignore_errors=True)     # a killed attempt's partial files
    os.makedirs(directory)
    for name, lines in groups.items():
        _write_lines(os.path.join(directory, name), lines)


def _concat(paths: list[str], target: str) -> None:
    with open(target, "wb") as out:
        for path in paths:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)


def _print_summary(report: dict[str, Any], out_dir: str) -> None:
    print(f"filter: {report['input']['samples']} samples of {report['input']['prompts']} "
          f"prompts ({report['input']['malformed_lines']} malformed rows) -> "
          f"{report['output']['samples']} kept for {report['output']['prompts']} prompts")
    print(f"{'stage':<16}{'in':>8}{'out':>8}  rejected")
    for st in report["stages"]:
        reasons = ", ".join(f"{k}={v}" for k, v in st["rejected"].items())
        print(f"{st['name']:<16}{st['in']:>8}{st['out']:>8}  {reasons}")
    t = report["teacher"]
    print(f"teacher: {t['correct_samples']}/{t['samples']} samples correct; pass@k "
          + ", ".join(f"@{k}={v:.3f}" for k, v in t["pass_at_k"].items()))
    j = report["judge"]
    if j["enabled"]:
        print(f"judge: {j['judged']} judged ({j['cached']} from the cache), {j['recovered']} "
              f"recovered; verdicts {j['verdicts']}")
    for name, a in report["agreement"].items():
        print(f"labels {name}: agreement {a['agreement']} over {a['compared']} samples")
    for m in report["input"]["malformed"][:10]:
        print(f"  malformed: {m['where']}: {m['error']}")
    print(f"filter: wrote {out_dir}")
