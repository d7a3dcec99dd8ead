"""A one-line progress display with rates and ETA, for long stages."""
from __future__ import annotations

import sys
import time


class Progress:
    """`update(done_delta, **counters)` redraws: done/total, items/s, counter rates, ETA."""

    def __init__(self, total: int, unit: str, desc: str, stream=None, min_interval_s: float = 0.5):
        self.total, self.unit, self.desc = total, unit, desc
        self.stream = stream or sys.stderr
        self.done = 0
        self.counters: dict[str, float] = {}
        self.start = time.monotonic()
        self._last_draw = 0.0
        self.min_interval_s = min_interval_s

    def update(self, done: int = 0, **counters: float) -> None:
        self.done += done
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval_s or self.done >= self.total:
            self._last_draw = now
            self.stream.write("\r" + self.line() + ("\n" if self.done >= self.total else ""))
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "--:--" if remaining == float("inf") else _clock(remaining)
        parts = [f"{self.desc} {self.done}/{self.total} {self.unit}", f"{rate:.2f} {self.unit}/s"]
        parts += [f"{v / elapsed:,.0f} {k}/s" for k, v in self.counters.items()]
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        return " | ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
