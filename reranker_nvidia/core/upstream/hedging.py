"""Hedged calls: when a call has not answered after a high percentile of its endpoint's recent
latency, the same call goes to a second endpoint, the first answer wins and the other is
cancelled. Ranking is a pure function of its input, so sending it twice is harmless; the hedge
budget keeps the extra load to a share of the calls.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reranker_nvidia.core.upstream.retry_budget import RatioBudget

T = TypeVar("T")


class LatencyTracker:
    """The latencies of one endpoint's last ``size`` successful calls, and their percentiles.

    A percentile is computed again only after ``size // 16`` new samples (16 for the default
    size), so asking on every call costs a comparison, not a sort.
    """

    __slots__ = ("_cache", "_count", "_next", "_q", "_samples", "_stale_after", "min_samples")

    def __init__(self, size: int = 256, *, min_samples: int = 20) -> None:
        if size < 1 or not 1 <= min_samples <= size:
            raise ValueError("size must be at least 1 and min_samples between 1 and size")
        self.min_samples = min_samples
        self._samples = [0.0] * size
        self._next = 0
        self._count = 0  # samples recorded, ever
        self._stale_after = max(1, size // 16)
        self._q = math.nan
        self._cache: tuple[int, float] = (-1, 0.0)  # (count when computed, value)

    def record(self, latency_s: float) -> None:
        self._samples[self._next] = latency_s
        self._next = (self._next + 1) % len(self._samples)
        self._count += 1

    @property
    def count(self) -> int:
        """Samples recorded since the tracker was made (for metrics)."""
        return self._count

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100, nearest rank) of the recent latencies, or None while
        fewer than ``min_samples`` were recorded."""
        count = self._count
        if count < self.min_samples:
            return None
        computed_at, value = self._cache
        if q == self._q and count - computed_at < self._stale_after:
            return value
        window = sorted(self._samples[:count] if count < len(self._samples) else self._samples)
        rank = max(1, math.ceil(q / 100 * len(window)))
        value = window[min(rank, len(window)) - 1]
        self._q = q
        self._cache = (count, value)
        return value


class HedgeBudget(RatioBudget):
    """Hedges across every request: at most 10 % of first calls, with no floor. A floor would
    let a quiet process hedge most of its calls, and a quiet endpoint has no tail to cut."""

    def __init__(
        self,
        ratio: float = 0.1,
        min_per_s: float = 0.0,
        window_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ratio=ratio, min_per_s=min_per_s, window_s=window_s, clock=clock)


@dataclass(frozen=True)
class Hedged(Generic[T]):
    """A hedged call's answer: ``winner`` 0 for the first call, 1 for the hedge;
    ``hedge_sent`` whether a hedge went out at all."""

    value: T
    winner: int
    hedge_sent: bool


# Losers are cancelled, not awaited (the winner's answer should not wait for their clean-up);
# this keeps them referenced until they end.
_losers: set[asyncio.Future[Any]] = set()


async def hedged(
    first: Callable[[], Awaitable[T]],
    second: Callable[[], Awaitable[T] | None] | None,
    delay_s: float | None,
) -> Hedged[T]:
    """``first()``, and ``second()`` as well when the first has not finished after ``delay_s``.

    ``second`` is called when the hedge is due, so it can pick its endpoint and spend the hedge
    budget then; it returns None to send no hedge, and must not raise. The first successful
    answer wins and the other call is cancelled. When one fails while the other still runs, the
    other's answer is awaited; when both fail, the first call's error is raised. Cancelling the
    caller cancels both. With no ``second`` or no ``delay_s``, ``first()`` is simply awaited.
    """
    if second is None or delay_s is None:
        return Hedged(await first(), 0, False)
    calls: list[asyncio.Future[T]] = [asyncio.ensure_future(first())]
    try:
        if not await _answered_within(calls[0], delay_s):
            hedge = second()
            if hedge is not None:
                calls.append(asyncio.ensure_future(hedge))
        pending = set(calls)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for index, call in enumerate(calls):
                if call in done and not call.cancelled() and call.exception() is None:
                    return Hedged(call.result(), index, len(calls) > 1)
        # Both failed (or the only call did): the first call's error.
        return Hedged(calls[0].result(), 0, len(calls) > 1)
    finally:
        for call in calls:
            if not call.done():
                call.cancel()
                _losers.add(call)
                call.add_done_callback(_forget_loser)


async def _answered_within(call: asyncio.Future[Any], delay_s: float) -> bool:
    """Whether ``call`` finished within ``delay_s``, waiting no longer. The loop's timers may
    fire early (uvloop rounds a delay to whole milliseconds and counts from the time its turn
    began), and a hedge sent early is sent for ordinary calls; so the time is checked on the
    clock and waited out in whole milliseconds, rounded up, until it is really up."""
    due = time.monotonic() + max(delay_s, 0.0)
    while not call.done():
        left = due - time.monotonic()
        if left <= 0:
            return False
        await asyncio.wait((call,), timeout=math.ceil(left * 1000) / 1000)
    return True


def _forget_loser(call: asyncio.Future[Any]) -> None:
    _losers.discard(call)
    if not call.cancelled():
        call.exception()  # retrieved, so a loser that failed is not logged as unhandled
