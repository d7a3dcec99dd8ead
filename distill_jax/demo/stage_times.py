"""How long each of the demo pipeline's stages took to build, kept beside its output.

A rerun or a resumed run reads a finished stage back instead of building it again,
in a fraction of a second. Timing that read would report ~0 s for the stage and,
written into results.json, would replace the time the stage really took. So each
stage's time is written to `stage_seconds.json` (atomically, as the stage finishes)
in the run that builds it, and a run that reuses the stage reports that time and
names the stage as reused. A stage built before this file existed (or by a CLI run
by hand) has no recorded time: it is named as reused and its time is left out
rather than guessed. A stage that a run finished from its own earlier, unfinished
output (a student resumed from its checkpoint, generation from its finished
shards) is timed by that run, which redid only part of it: it is named as resumed,
in that run and in every run that reuses it after. A time that covers several
stages (the students' and evaluations' phase) is kept with their names and
dropped when a rerun has other ones (other arms).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from distill_jax.fileio import write_json_atomic

FILE = "stage_seconds.json"


class StageTimes:
    """The build times of one pipeline output directory's stages, and which of them
    this run built, reused or resumed."""

    def __init__(self, out: str):
        self.path = os.path.join(out, FILE)
        self.seconds: dict[str, float] = {}
        self.resumed: set[str] = set()
        self.parts: dict[str, list[str]] = {}
        if os.path.exists(self.path):
            self._load()
        self.reused: list[str] = []
        self._seen: list[str] = []

    def _load(self) -> None:
        with open(self.path) as f:
            try:
                saved = json.load(f)
                if isinstance(saved, dict) and "seconds" not in saved:
                    # The first version's file: {stage: seconds}, nothing resumed.
                    saved = {"seconds": saved, "resumed": [], "parts": {}}
                self.seconds = {str(k): float(v) for k, v in saved["seconds"].items()}
                self.resumed = {str(k) for k in saved["resumed"]}
                self.parts = {str(k): [str(p) for p in v] for k, v in saved["parts"].items()}
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ValueError(f"{self.path}: not this pipeline's record of stage times "
                                 f"({type(e).__name__}: {e}); delete it to rerun without "
                                 "the earlier stage times") from e

    def _save(self) -> None:
        write_json_atomic(self.path, {"seconds": self.seconds, "resumed": sorted(self.resumed),
                                      "parts": self.parts})

    def _see(self, name: str) -> None:
        if name not in self._seen:
            self._seen.append(name)

    def built(self, name: str, seconds: float, resumed: bool = False,
              parts: Sequence[str] = ()) -> None:
        """`name` was built in this run, in `seconds` (`resumed`: from its own earlier,
        unfinished output; `parts`: the stages this time covers). Recorded now, so a
        run that stops later still keeps it."""
        self._see(name)
        self.seconds[name] = round(float(seconds), 1)
        if resumed:
            self.resumed.add(name)
        else:
            self.resumed.discard(name)
        if parts:
            self.parts[name] = sorted(parts)
        else:
            self.parts.pop(name, None)
        self._save()

    def reuse(self, name: str, parts: Sequence[str] = ()) -> None:
        """`name`'s output was read back, not built: it keeps its recorded time, unless
        that time covered other `parts` than these."""
        self._see(name)
        if name not in self.reused:
            self.reused.append(name)
        if name in self.seconds and self.parts.get(name, []) != sorted(parts):
            self.forget(name)

    def forget(self, name: str) -> None:
        """`name` has no single time (a phase a run only partly redid): drop any."""
        self._see(name)
        if self.seconds.pop(name, None) is not None:
            self.resumed.discard(name)
            self.parts.pop(name, None)
            self._save()

    def report(self) -> dict[str, Any]:
        """results.json's keys: `stage_seconds` {stage: seconds it took to build} for
        this run's stages with a recorded time; `reused_stages`, the ones it read back;
        `resumed_stages`, the ones whose time covers only a resumed run's part."""
        return {"stage_seconds": {n: self.seconds[n] for n in self._seen if n in self.seconds},
                "reused_stages": list(self.reused),
                "resumed_stages": [n for n in self._seen if n in self.resumed]}
