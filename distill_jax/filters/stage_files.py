"""The filter stage's files: a work directory of committed units, and the
assembly of the output directory from them.

`.<output>.work-<fingerprint>/` sits next to the output: per unit i, its kept
records, audit lines, per-prompt rows and dedup keys, then `units/<i>.json` (the
commit marker, written last and atomically) with the totals after it. A unit
without its marker is written again by a resumed run. When every unit is
committed, `assemble` concatenates them into a staging directory (streamed,
never in memory) that replaces the output directory whole.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from distill_jax.fileio import write_json_atomic

REPORT = "report.json"
CURATED = "curated.jsonl"
PER_PROMPT = "per_prompt.jsonl"
TOPK_DIR = "topk"


class WorkDir:
    """The work directory of one run (see the module docstring)."""

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

    def resume(self, selection, num_units: int) -> int:
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
        _link_tree(os.path.join(self.path, TOPK_DIR), os.path.join(staging, TOPK_DIR))
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


def _link_tree(source: str, target: str) -> None:
    """The top-k sidecars into the staging directory as hard links (no copy of what
    may be hundreds of GB), or copies across filesystems. Linked, not moved: a run
    killed before the swap still finds them in the work directory when it resumes."""
    if not os.path.isdir(source):
        return
    os.makedirs(target)
    for name in sorted(os.listdir(source)):
        try:
            os.link(os.path.join(source, name), os.path.join(target, name))
        except OSError:
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))


def _concat(paths: list[str], target: str) -> None:
    with open(target, "wb") as out:
        for path in paths:
            if os.path.exists(path):
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
