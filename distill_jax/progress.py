"""A one-line progress display with rates and ETA, for long stages."""
from __future__ import annotations

import sys
import threading
import time

# The stream a bar last left mid-line (it redraws with "\r" and ends its line only
# when done), so that `end_open_line` can finish it before another line is printed:
# the demo's scheduler prints from one thread while a stage's bar draws in another.
_open_stream = None
_open_lock = threading.Lock()


def end_open_line() -> None:
    """Ends the line a progress bar left open, if any; call before printing a line
    of your own to a terminal the bar shares. (The bar redraws on the next line.)"""
    global _open_stream
    with _open_lock:
        stream, _open_stream = _open_stream, None
    if stream is None:
        return
    try:
        stream.write("\n")
        stream.flush()
    except (ValueError, OSError):     # closed since the bar drew: no line to end
        pass


class Progress:
    """`update(done_delta, status=..., **counters)` redraws: done/total, items/s,
    counter rates (e.g. tokens/s), the latest status values (e.g. loss), ETA.

    `skip_first=True` measures rates from the end of the first item on, so a
    first step that includes compilation does not distort the rate and ETA.
    `enabled=False` counts without drawing (the non-primary hosts of a multi-host run).
    """

    def __init__(self, total: int, unit: str, desc: str, stream=None, min_interval_s: float = 0.5,
                 skip_first: bool = False, enabled: bool = True):
        self.total, self.unit, self.desc = total, unit, desc
        self.stream = stream or sys.stderr
        self.done = 0
        self.counters: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.start = time.monotonic()
        self._last_draw = 0.0
        self.min_interval_s = min_interval_s
        self._skip_first = skip_first
        self._rate_done = 0          # items counted towards rates
        self.enabled = enabled

    def update(self, done: int = 0, status: dict | None = None, **counters: float) -> None:
        self.done += done
        if status:
            self.status.update({k: f"{v:.4g}" if isinstance(v, float) else str(v)
                                for k, v in status.items()})
        if self._skip_first:
            self._skip_first = False
            self.start = time.monotonic()
        else:
            self._rate_done += done
            for name, value in counters.items():
                self.counters[name] = self.counters.get(name, 0) + value
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= self.min_interval_s
                             or self.done >= self.total):
            self._last_draw = now
            finished = self.done >= self.total
            global _open_stream
            with _open_lock:
                self.stream.write("\r" + self.line() + ("\n" if finished else ""))
                self.stream.flush()
                _open_stream = None if finished else self.stream

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self._rate_done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "--:--" if remaining == float("inf") else _clock(remaining)
        parts = [f"{self.desc} {self.done}/{self.total} {self.unit}", f"{rate:.2f} {self.unit}/s"]
        parts += [f"{v / elapsed:,.0f} {k}/s" for k, v in self.counters.items()]
        parts += [f"{k} {v}" for k, v in self.status.items()]
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        return " | ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
