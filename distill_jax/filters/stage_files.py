"""The filter stage's files: a work directory of committed units, and the
assembly of the output directory from them. Every path goes through
`distill_jax.storage`, so the output (and the work directory beside it) may be a
bucket URL.

`.<output>.work-<fingerprint>/` sits next to the output: per unit i, its kept
records, audit lines, per-prompt rows and dedup keys, then `units/<i>.json` (the
commit marker, written last and whole) with the totals after it. A unit without
its marker is written again by a resumed run, on a bucket as on a disk: each
object of a unit is uploaded whole before its marker.

When every unit is committed, `assemble` concatenates them into a LOCAL staging
directory (streamed, never in memory; tfds/array_record write only POSIX files)
and publishes it as the output with `storage.publish_dir`. Locally the staging
directory sits beside the output and replaces it whole by a rename. For a bucket
output it is a temp directory (under $TMPDIR, or `staging_root`), uploaded file
by file with the commit marker last; the old output is withdrawn first (marker,
then objects), so between the two a reader finds no committed output, never a
mix of two runs.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from distill_jax import storage
from distill_jax.fileio import atomic_open, write_json_atomic

REPORT = "report.json"
CURATED = "curated.jsonl"
PER_PROMPT = "per_prompt.jsonl"
TOPK_DIR = "topk"


class WorkDir:
    """The work directory of one run (see the module docstring)."""

    def __init__(self, out_dir: str, fingerprint: str, force: bool,
                 staging_root: str | None = None):
        self.out_dir = out_dir
        self.parent = storage.dirname(out_dir) or "."
        self.base = storage.basename(out_dir)
        self.staging_root = staging_root
        self.path = storage.join(self.parent, f".{self.base}.work-{fingerprint[:16]}")
        self._remove_leftovers(force)
        storage.makedirs(storage.join(self.path, "units"))

    def _remove_leftovers(self, force: bool) -> None:
        """Work directories of other configs, and what killed runs left beside the output."""
        if not storage.isdir(self.parent):
            return
        for name in storage.listdir(self.parent):
            full = storage.join(self.parent, name)
            stale_work = name.startswith(f".{self.base}.work-") and (full != self.path or force)
            if stale_work or name.startswith(f".{self.base}.staging-") \
                    or name.startswith(f".{self.base}.old-"):
                storage.rmtree(full)

    def _unit(self, i: int, suffix: str) -> str:
        return storage.join(self.path, "units", f"{i:05d}{suffix}")

    def resume(self, selection, num_units: int) -> int:
        """Restores the committed prefix of units; returns the first unit to do."""
        i = 0
        while i < num_units and storage.exists(self._unit(i, ".json")):
            state = json.loads(storage.read_text(self._unit(i, ".json")))
            with storage.open(self._unit(i, ".keys.npz"), "rb") as f, np.load(f) as arrays:
                selection.restore_unit(arrays, state)
            i += 1
        return i

    def commit_unit(self, i, key, kept_lines, audits, rows, arrays, state) -> None:
        _write_lines(self._unit(i, ".kept.jsonl"), kept_lines)
        _write_lines(self._unit(i, ".per_prompt.jsonl"),
                     [json.dumps(r, ensure_ascii=False) for r in rows])
        _write_json_lines_by_name(self._unit(i, ".audit"), audits)
        with _unit_file(self._unit(i, ".keys.npz"), "wb") as f:
            np.savez(f, **arrays)
        write_json_atomic(self._unit(i, ".json"), dict(state, unit=key))

    def assemble(self, report: dict[str, Any], num_units: int,
                 final_rows: list[dict[str, Any]]) -> None:
        """The output directory from the committed units, staged then published."""
        staging = self._new_staging()
        try:
            self._fill(staging, report, num_units, final_rows)
            self._publish(staging)
        finally:
            if not storage.is_local(self.out_dir):    # a temp dir nobody else cleans
                shutil.rmtree(staging, ignore_errors=True)
        storage.rmtree(self.path)

    def _new_staging(self) -> str:
        if storage.is_local(self.out_dir):
            # Beside the output: on its filesystem, so the swap is one rename.
            staging = os.path.join(self.parent, f".{self.base}.staging-{os.getpid()}")
        else:
            staging = tempfile.mkdtemp(prefix=f"{self.base}.staging-", dir=self.staging_root)
        os.makedirs(os.path.join(staging, "audit"))
        return staging

    def _fill(self, staging: str, report: dict[str, Any], num_units: int,
              final_rows: list[dict[str, Any]]) -> None:
        from distill_jax.data.curated_tfds import build_curated_dataset
        # One listing of the units instead of a lookup per unit and file (a request
        # each on a bucket).
        present = set(storage.walk_files(storage.join(self.path, "units")))
        names = [f"{i:05d}" for i in range(num_units)]

        def unit_files(suffix: str) -> list[str]:
            return [self._unit(i, suffix) for i, n in enumerate(names) if n + suffix in present]

        _concat(unit_files(".kept.jsonl"), os.path.join(staging, CURATED))
        per_prompt = os.path.join(staging, PER_PROMPT)
        _concat(unit_files(".per_prompt.jsonl"), per_prompt)
        with open(per_prompt, "a", encoding="utf-8") as f:
            for row in final_rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        audit_names = sorted({rel.partition("/")[2] for rel in present
                              if rel.partition("/")[0].endswith(".audit")})
        audit_files = {}
        for name in audit_names:
            target = os.path.join(staging, "audit", name)
            _concat(unit_files(f".audit/{name}"), target)
            with open(target, "rb") as f:
                audit_files[name] = sum(1 for _ in f)
        report["audit_files"] = audit_files
        report["per_prompt_file"] = PER_PROMPT
        _link_tree(storage.join(self.path, TOPK_DIR), os.path.join(staging, TOPK_DIR))
        report["output"]["tfds"] = None          # tfds cannot hold an empty split
        if report["output"]["samples"]:
            build_curated_dataset(os.path.join(staging, CURATED), os.path.join(staging, "tfds"))
            report["output"]["tfds"] = {"name": "curated_traces", "split": "train",
                                        "data_dir": storage.join(self.out_dir, "tfds")}
        write_json_atomic(os.path.join(staging, REPORT), report)

    def _publish(self, staging: str) -> None:
        if not storage.is_local(self.out_dir):
            storage.withdraw_dir(self.out_dir)
            storage.publish_dir(staging, self.out_dir)
            return
        old = os.path.join(self.parent, f".{self.base}.old-{os.getpid()}")
        if os.path.exists(self.out_dir):
            os.replace(self.out_dir, old)
        storage.publish_dir(staging, self.out_dir)
        shutil.rmtree(old, ignore_errors=True)


def _unit_file(path: str, mode: str, **kwargs):
    """A unit's file for writing. The unit's marker, written after its files, is what
    commits them, so locally a plain write (no fsync per file); on a bucket a spooled
    whole object (np.savez seeks, which an upload stream cannot)."""
    if storage.is_local(path):
        return open(path, mode, **kwargs)
    return atomic_open(path, mode, **kwargs)


def _write_lines(path: str, lines: list[str]) -> None:
    with _unit_file(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def _write_json_lines_by_name(directory: str, groups: dict[str, list[str]]) -> None:
    storage.rmtree(directory)                 # a killed attempt's partial files
    storage.makedirs(directory)
    for name, lines in groups.items():
        _write_lines(storage.join(directory, name), lines)


def _link_tree(source: str, target: str) -> None:
    """The top-k sidecars into the staging directory: locally as hard links (no copy
    of what may be hundreds of GB), or copies across filesystems; from a bucket,
    downloaded (tfds reads them from the staging directory). Linked or copied, not
    moved: a run killed before the publish still finds them in the work directory."""
    if not storage.isdir(source):
        return
    os.makedirs(target)
    for name in storage.listdir(source):
        src, dst = storage.join(source, name), os.path.join(target, name)
        if storage.is_local(source):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        else:
            _concat([src], dst)


def _concat(paths: list[str], target: str) -> None:
    """`paths` (local or bucket objects) one after another into the local `target`."""
    with open(target, "wb") as out:
        for path in paths:
            with storage.open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
