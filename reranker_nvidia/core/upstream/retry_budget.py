"""Extra calls (retries, hedges) as a share of first calls over a sliding window, so that a
saturated NIM is not hammered by them: past the share, a failure is returned, not retried.

Counts live in one-second buckets in a ring (the window's length in seconds, rounded up), so
recording and asking cost a few additions whatever the traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RatioBudget:
    """At most ``ratio * first calls + min_per_s * window_s`` extra calls in any window."""

    def __init__(
        self,
        *,
        ratio: float,
        min_per_s: float,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ratio >= 0 or not min_per_s >= 0 or not window_s >= 1:
            raise ValueError("ratio and min_per_s must be at least 0, window_s at least 1")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._floor = min_per_s * window_s
        self._clock = clock
        size = math.ceil(window_s)
        self._size = size
        self._seconds = [-1] * size  # which second each bucket counts; -1: none yet
        self._firsts = [0] * size
        self._extras = [0] * size
        self.allowed = 0
        self.refused = 0

    def record_first_call(self) -> None:
        """A first call (not a retry, not a hedge) went out."""
        self._firsts[self._bucket(int(self._clock()))] += 1

    def try_spend(self) -> bool:
        """Whether one extra call may go now; if so it is counted."""
        second = int(self._clock())
        bucket = self._bucket(second)
        oldest = second - self._size
        firsts = extras = 0
        seconds = self._seconds
        for i in range(self._size):
            if seconds[i] > oldest:
                firsts += self._firsts[i]
                extras += self._extras[i]
        if extras < self.ratio * firsts + self._floor:
            self._extras[bucket] += 1
            self.allowed += 1
            return True
        self.refused += 1
        return False

    def _bucket(self, second: int) -> int:
        index = second % self._size
        if self._seconds[index] != second:
            self._seconds[index] = second
            self._firsts[index] = 0
            self._extras[index] = 0
        return index


class RetryBudget(RatioBudget):
    """Retries across every request: at most 20 % of first calls, plus 3 a second so that a
    quiet process can still retry a transient failure (Finagle's rule, with its window)."""

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_s: float = 3.0,
        window_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ratio=ratio, min_per_s=min_per_s, window_s=window_s, clock=clock)
