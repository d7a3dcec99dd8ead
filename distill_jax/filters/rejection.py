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
run's. When every unit is done the outputs are assembled in a local staging
directory that replaces `output_dir` whole (stage_files.py); a rerun with the
same fingerprint returns the existing report without work.

Buckets: `input.path`, `output_dir`, the evaluation sets and the judge cache may
be URLs (`gs://...`, see distill_jax/storage.py). The work directory then lives
in the bucket beside the output, so a run killed on one machine resumes on
another; the output is uploaded with a commit marker, and only a committed
output counts as done.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import re
from typing import Any, Callable

from absl import logging

from distill_jax import storage
from distill_jax.filters import decontaminate, dedup, text_quality, verify
from distill_jax.filters.selection import Selection
from distill_jax.filters.stage_files import REPORT, TOPK_DIR, WorkDir
from distill_jax.filters.sample import Sample, Verdict, assistant_prefix, make_sample, reject
from distill_jax.progress import Progress

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
    """Of the config and the input files (path, size, modification time or object
    version) and units: reading every byte of 20 GB of traces to hash it would cost
    minutes."""
    h = hashlib.sha256(json.dumps(stage, sort_keys=True, default=str).encode())
    for path in traces.files:
        h.update(_file_stamp(path).encode())
    for unit in traces.units:
        h.update(unit.key.encode() + b"\0")
    return h.hexdigest()


def _file_stamp(path: str) -> str:
    if storage.is_local(path):
        st = os.stat(path)
        return f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0"
    return f"{path}\0{json.dumps(storage.object_stamp(path), sort_keys=True)}\0"


def _check_paths(config, stage: dict[str, Any]) -> None:
    """Every path the stage will touch has a filesystem backend (a gs:// path without
    gcsfs fails here, naming the path and the package), before any work."""
    storage.check_path(config.output_dir, "output_dir")
    for entry in str(stage["input"]["path"]).split(","):
        storage.check_path(entry.strip(), "input.path")
    if "decontaminate" in stage["filters"]["order"]:
        dc = stage["decontamination"]
        for path, _, _ in decontaminate.eval_set_files(dc["eval_sets"], dc["data_dir"]):
            storage.check_path(path, "decontamination.eval_sets")
    if stage["judge"]["enabled"]:
        storage.check_path(config.judge.cache_path, "judge.cache_path")


def _committed_report(out_dir: str) -> dict[str, Any] | None:
    """The report of a finished output; None while there is none or, on a bucket, while
    its upload is not committed (its report may be there, its other files not)."""
    path = storage.join(out_dir, REPORT)
    if not (storage.is_committed(out_dir) and storage.exists(path)):
        return None
    return json.loads(storage.read_text(path))


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
        report = _committed_report(storage.absolute(config.output_dir)) or {}
    return report


def _filter_traces(config) -> dict[str, Any]:
    stage = _stage_config(config)
    out_dir = storage.absolute(config.output_dir)
    _check_paths(config, stage)
    FilterChain(stage)                    # bad filter names / eval sets fail before any work
    traces = open_input(stage)            # missing files, unknown format: here too
    judge_section = stage["judge"]
    if judge_section["enabled"]:
        from distill_jax.filters import judge as judge_module
        judge_module.check_judge_config(config.judge)
        stage["judge_prompt_version"] = judge_module.PROMPT_VERSION
    fingerprint = _fingerprint(traces, stage)
    old = None if config.force else _committed_report(out_dir)
    if old is not None:
        if old.get("fingerprint") == fingerprint:
            print(f"filter: {out_dir} is up to date ({old['output']['samples']} samples)")
            return old
        logging.info("filter: inputs or config changed since %s; rebuilding",
                     storage.join(out_dir, REPORT))

    work = WorkDir(out_dir, fingerprint, force=config.force)
    selection = Selection(stage)
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
    report["input"].update(files=[storage.absolute(p) for p in traces.files],
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


def _select_unit(work, i: int, unit, samples: list[Sample], results: list[dict[str, Any]],
                 malformed: list[dict[str, str]], selection: Selection) -> None:
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
    base_dir = storage.dirname(storage.absolute(unit.path))
    for s, r in zip(samples, results):
        kept, r = selection.decide(s, r)
        if kept:
            record = _curated_record(s, r)
            arrays = topk_store.topk_arrays(s.record, base_dir, reader)
            if arrays is not None:
                if topk is None:
                    storage.makedirs(storage.join(work.path, TOPK_DIR))
                    topk = topk_store.TopKWriter(storage.join(work.path, TOPK_DIR), f"{i:05d}",
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
