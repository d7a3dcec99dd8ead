"""How long each of the demo pipeline's stages took to build, kept beside its output.

A rerun or a resumed run reads a finished stage back instead of building it again,
in a fraction of a second. Timing that read would report ~0 s for the stage and,
written into results.json, would replace the time the stage really took. So each
stage's time is written to `stage_seconds.json` (atomically, as the stage finishes)
in the run that builds it, and a run that reuses the stage reports that time and
names the stage as reused. A stage built before this file existed (or by a CLI run
by hand) has no recorded time: it is named as reused and its time is left out
rather than guessed. A stage that a run finished from its own checkpoint (a
student interrupted mid-training) is timed by that run: only the part it redid.
"""
from __future__ import annotations

import json
import os

from distill_jax.fileio import write_json_atomic

FILE = "stage_seconds.json"


class StageTimes:
    """The build times of one pipeline output directory's stages."""

    def __init__(self, out: str):
        self.path = os.path.join(out, FILE)
        self.seconds: dict[str, float] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                try:
                    self.seconds = {str(k): float(v) for k, v in json.load(f).items()}
                except (ValueError, AttributeError) as e:
                    raise ValueError(f"{self.path}: not a JSON object of stage -> seconds "
                                     f"({e}); delete it to rerun without the earlier "
                                     "stage times") from e
        self.reused: list[str] = []

    def built(self, name: str, seconds: float) -> None:
        """`name` was built in this run, in `seconds`: recorded now, so a run that
        stops later still keeps it."""
        self.seconds[name] = round(float(seconds), 1)
        write_json_atomic(self.path, self.seconds)

    def reuse(self, name: str) -> None:
        """`name`'s output was read back, not built: it keeps its recorded time."""
        if name not in self.reused:
            self.reused.append(name)

    def forget(self, name: str) -> None:
        """`name` has no single time (a phase a run only partly redid): drop any."""
        if self.seconds.pop(name, None) is not None:
            write_json_atomic(self.path, self.seconds)

    def report(self) -> dict[str, float]:
        """{stage: seconds it took to build}, for the stages with a recorded time."""
        return dict(self.seconds)
