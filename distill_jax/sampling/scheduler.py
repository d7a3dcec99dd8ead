"""The engine's host side: which sample goes into which slot, and when.

  continuous  a free slot takes the next waiting sample at once; the decode call
              stops early when slots free up while samples wait, so the slots
              stay full and the long tail of lengths costs only its own tokens
  static      the slots are filled together and refilled only when all of them
              have finished: a group decodes until its longest sample ends (the
              sampler before continuous batching, kept for comparison and tests)

Samples are admitted in the order the driver lists them: arrival order, or
longest cap first (`ORDERS`). The scheduler never touches arrays; it hands the
driver (`sampler.py`) slot assignments and takes finished slots back.
"""
from __future__ import annotations

import bisect
import collections
from typing import Any, Iterable, Sequence

POLICIES = ("continuous", "static")
# Admission orders: "arrival" (prompt order, then sample index) or "longest_first"
# (by max_new_tokens, longest first; ties in arrival order). A sample's bits never
# depend on the order (see engine.py), only the time the run takes: a long sample
# admitted last runs alone at the end while the other slots idle, so starting the
# longest caps first keeps the slots full (longest-processing-time-first, the
# classic makespan heuristic). With one cap for every request the two agree.
ORDERS = ("arrival", "longest_first")


class SlotScheduler:
    def __init__(self, slots: Sequence[int], policy: str, work: Iterable[Any]):
        if policy not in POLICIES:
            raise ValueError(f"scheduler {policy!r}; choose from {POLICIES}")
        self.policy = policy
        self.free = sorted(slots)
        self.waiting = collections.deque(work)
        self.running: dict[int, Any] = {}

    def admit(self) -> list[tuple[int, Any]]:
        """(slot, sample) pairs to start now (lowest free slots first)."""
        if self.policy == "static" and self.running:
            return []
        count = min(len(self.free), len(self.waiting))
        pairs = [(self.free[i], self.waiting.popleft()) for i in range(count)]
        del self.free[:count]
        self.running.update(pairs)
        return pairs

    def release(self, slot: int) -> Any:
        """The sample that ran in `slot`, which is free again."""
        sample = self.running.pop(slot)
        bisect.insort(self.free, slot)
        return sample

    @property
    def wants_refill(self) -> bool:
        """Whether a decode call should stop early for freed slots: work waits and
        the policy refills slots one by one."""
        return self.policy == "continuous" and bool(self.waiting)

    @property
    def busy(self) -> bool:
        return bool(self.running)
