"""The filter stage's sequential decisions and running totals.

Samples arrive in input order with the filter chain's verdicts; `Selection`
drops exact and near-duplicate responses against everything kept before
(filters/dedup.py), applies the per-prompt cap, counts what the report needs
(per filter and reason, per prompt, pass@k sums, the judge, the agreement of
the input's own labels with our verdict) and hands back, per committed unit,
what a resumed run must restore: the index entries it added and the totals
after it. Nothing here holds a record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from distill_jax.evaluation.metrics import pass_at_k
from distill_jax.filters import dedup
from distill_jax.filters.sample import Sample


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


class Selection:
    """The sequential decisions (dedup against everything kept so far, the
    per-prompt cap) and the running totals of the report. Its state after each
    committed unit is what a resumed run restores."""

    def __init__(self, stage: dict[str, Any]):
        dd = stage["dedup"]
        self.hasher = dedup.MinHasher(dd["shingle_size"], dd["num_perm"], dd["bands"])
        self.index = dedup.SeenIndex(self.hasher, dd["near_duplicate_threshold"])
        self.closed = dedup.MultiMap()         # prompt key -> kept count when it closed
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
