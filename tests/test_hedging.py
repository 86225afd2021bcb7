"""Hedged calls and the latency tracker: when the hedge goes, which answer wins, what happens
to the loser, failures on either side, the caller's cancellation; driven by events, not by
timing margins."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from reranker_nvidia.core.upstream import hedging
from reranker_nvidia.core.upstream.hedging import LatencyTracker, hedged

NEVER = 3600.0  # a delay no test waits for
SOON = 0.001  # a delay every test waits for: the first call never finishes by itself


class Call:
    """A call the test finishes: ``finish(value)`` or ``fail(error)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self._outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.raise_on_cancel: Exception | None = None

    async def __call__(self) -> str:
        self.started.set()
        try:
            return await self._outcome
        except asyncio.CancelledError:
            self.cancelled.set()
            if self.raise_on_cancel is not None:
                raise self.raise_on_cancel from None
            raise

    def finish(self, value: str) -> None:
        self._outcome.set_result(value)

    def fail(self, error: Exception) -> None:
        self._outcome.set_exception(error)


class Hedge:
    """The ``second`` argument: records whether the hedge was asked for."""

    def __init__(self, call: Call | None) -> None:
        self.call = call
        self.asked = asyncio.Event()

    def __call__(self) -> Awaitable[str] | None:
        self.asked.set()
        return self.call() if self.call is not None else None


@pytest.fixture(autouse=True)
async def no_leaks() -> Any:
    """Every test ends with no task but its own and no unhandled task error logged."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield
    for _ in range(100):
        if len(asyncio.all_tasks()) == 1:
            break
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not hedging._losers
    assert errors == []


def _start(
    first: Call, second: Callable[[], Awaitable[str] | None] | None, delay_s: float | None
) -> asyncio.Task[hedging.Hedged[str]]:
    return asyncio.ensure_future(hedged(first, second, delay_s))


async def test_without_a_hedge_the_first_call_is_simply_awaited() -> None:
    first = Call("first")
    task = _start(first, None, SOON)
    await first.started.wait()
    first.finish("a")
    assert await task == hedging.Hedged("a", 0, False)
    second = Hedge(Call("second"))
    task = _start(first := Call("first"), second, None)
    await first.started.wait()
    first.finish("b")
    assert (await task).value == "b"
    assert not second.asked.is_set()


async def test_a_first_call_that_answers_before_the_delay_sends_no_hedge() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, NEVER)
    await first.started.wait()
    first.finish("a")
    assert await task == hedging.Hedged("a", 0, False)
    assert not second.asked.is_set()


async def test_the_hedge_goes_after_the_delay_and_its_answer_wins() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    await second.call.started.wait()
    second.call.finish("b")
    assert await task == hedging.Hedged("b", 1, True)
    await first.cancelled.wait()


async def test_the_first_call_still_wins_when_it_answers_first() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    first.finish("a")
    assert await task == hedging.Hedged("a", 0, True)
    assert second.call is not None
    await second.call.cancelled.wait()


async def test_a_failure_waits_for_the_other_call() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    first.fail(ConnectionError("first"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    second.call.finish("b")
    assert await task == hedging.Hedged("b", 1, True)

    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    second.call.fail(ConnectionError("second"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    first.finish("a")
    assert await task == hedging.Hedged("a", 0, True)


@pytest.mark.parametrize("first_fails_first", [True, False])
async def test_when_both_fail_the_first_calls_error_is_raised(first_fails_first: bool) -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    failures = [(first, TimeoutError("first")), (second.call, ConnectionError("second"))]
    for call, error in failures if first_fails_first else failures[::-1]:
        call.fail(error)
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError, match="first"):
        await task


async def test_a_first_call_that_fails_before_the_delay_is_not_hedged() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, NEVER)
    await first.started.wait()
    first.fail(ConnectionError("refused"))
    with pytest.raises(ConnectionError):
        await task
    assert not second.asked.is_set()


async def test_a_hedge_declined_when_due_leaves_the_first_call_alone() -> None:
    first, second = Call("first"), Hedge(None)
    task = _start(first, second, SOON)
    await second.asked.wait()
    first.finish("a")
    assert await task == hedging.Hedged("a", 0, False)


async def test_cancelling_the_caller_cancels_both_calls() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    await second.call.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.cancelled.wait()
    await second.call.cancelled.wait()

    first = Call("first")  # cancelled while waiting for the delay
    task = _start(first, Hedge(Call("second")), NEVER)
    await first.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await first.cancelled.wait()


async def test_a_loser_that_fails_as_it_is_cancelled_is_not_reported_as_unhandled() -> None:
    first, second = Call("first"), Hedge(Call("second"))
    first.raise_on_cancel = RuntimeError("closing the connection failed")
    task = _start(first, second, SOON)
    await second.asked.wait()
    assert second.call is not None
    second.call.finish("b")
    assert (await task).winner == 1
    await first.cancelled.wait()
    await asyncio.sleep(0)
    gc.collect()  # an error never retrieved is reported when its task is collected
    # no_leaks checks that nothing was reported.


def test_the_latency_percentile_needs_its_samples_and_follows_recent_calls() -> None:
    tracker = LatencyTracker(size=100, min_samples=20)
    for latency in range(1, 20):
        tracker.record(latency / 1000)
    assert tracker.percentile(95) is None
    tracker.record(0.020)
    assert tracker.percentile(50) == 0.010
    assert tracker.percentile(95) == 0.019
    assert tracker.percentile(100) == 0.020
    assert tracker.percentile(0) == 0.001
    for _ in range(100):  # the ring holds the last 100 only
        tracker.record(0.5)
    assert tracker.percentile(50) == 0.5
    assert tracker.count == 120


def test_the_latency_percentile_is_recomputed_every_few_samples() -> None:
    tracker = LatencyTracker(size=256, min_samples=1)
    tracker.record(1.0)
    assert tracker.percentile(90) == 1.0
    for _ in range(15):
        tracker.record(9.0)
    assert tracker.percentile(90) == 1.0  # cached: 15 new samples of 256
    tracker.record(9.0)
    assert tracker.percentile(90) == 9.0
    assert tracker.percentile(1) == 1.0  # another percentile: computed at once


def test_bad_tracker_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LatencyTracker(size=0)
    with pytest.raises(ValueError):
        LatencyTracker(size=10, min_samples=11)


def test_on_uvloop_the_hedge_never_goes_before_its_delay() -> None:
    """uvloop counts timers in whole milliseconds from the start of its turn, so a 1.4 ms delay
    could fire after 1 ms or less and hedge ordinary calls; the hedge waits the delay out."""
    delay_s = 0.0014
    waited: list[float] = []

    async def first() -> str:
        await asyncio.sleep(0.005)
        return "first"

    async def one_call() -> None:
        started = time.monotonic()

        def second() -> Awaitable[str]:
            waited.append(time.monotonic() - started)
            return asyncio.sleep(0, "second")

        await hedged(first, second, delay_s)

    async def main() -> None:
        for _ in range(40):
            await one_call()

    uvloop.run(main())
    assert len(waited) == 40 and min(waited) >= delay_s, sorted(waited)[:5]
