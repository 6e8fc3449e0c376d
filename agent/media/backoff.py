"""Restart policy for failing sources: exponential backoff, reset after a healthy run.

Pure: the caller passes monotonic time in, so the schedule is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    healthy_s: float
    failures: int = 0  # consecutive failures since the last healthy run
    _started: float | None = None

    def started(self, now: float) -> None:
        self._started = now

    def failed(self, now: float) -> float:
        """Record a failure at ``now``; returns how long to wait before the next attempt."""
        if self._started is not None and now - self._started >= self.healthy_s:
            self.failures = 0  # it ran fine for a while: this is a new incident, not a crash loop
        self._started = None
        self.failures += 1
        delay: float = self.initial_s * 2.0 ** (self.failures - 1)
        return min(self.max_s, delay)
