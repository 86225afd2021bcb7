"""The coalescer on its own, on a clock the test moves: placement, windows, siblings, a lone
request, failures and usage, with no wall-clock margins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from reranker_nvidia.core.coalescer import SIBLING_WAIT_WINDOWS, Coalescer
from reranker_nvidia.core.documents.passages import Passage
from reranker_nvidia.core.targets.target import Endpoint, Route, Target
from reranker_nvidia.core.upstream.answers import UpstreamRanking
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.types import Usage

WINDOW = 1.0
ENDPOINT = Endpoint("http://nim/v1/ranking", "nim", b"tag", None, guarded=False)
TARGET = Target("m", None, Route("route", (ENDPOINT,)), "key-a")


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeScheduler:
    """Time stands still until the test moves it; ``call_soon`` runs on the real loop."""

    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def call_soon(self, callback: Callable[[], None]) -> object:
        return asyncio.get_running_loop().call_soon(callback)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.timers, key=lambda timer: timer.when):
            if timer.when <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        await settle()


@dataclass
class Upstream:
    """Records each call and answers with logit = passage length, unless told to fail; with
    ``release``, only once it is set."""

    calls: list[list[str]] = field(default_factory=list)
    failure: RerankError | None = None
    release: asyncio.Event | None = None

    async def send(
        self, target: Target, query: str, passages: Sequence[Passage], deadline: float
    ) -> UpstreamRanking:
        texts = [str(passage) for passage in passages]
        self.calls.append(texts)
        if self.release is not None:
            await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return UpstreamRanking([float(len(p)) for p in texts], Usage(10, 10))


async def settle() -> None:
    """Let every ready callback and task run."""
    for _ in range(10):
        await asyncio.sleep(0)


def make(upstream: Upstream, scheduler: FakeScheduler, max_passages: int = 512) -> Coalescer:
    return Coalescer(upstream.send, max_passages=max_passages, window_s=WINDOW, scheduler=scheduler)


def score(
    coalescer: Coalescer,
    passages: list[str],
    *,
    query: str = "q",
    target: Target = TARGET,
    siblings_expected: bool = False,
) -> asyncio.Task[tuple[list[float], list[bytes], Usage]]:
    keys = [f"{query}|{p}".encode() for p in passages]
    return asyncio.ensure_future(
        coalescer.score(target, query, passages, keys, 1e9, siblings_expected=siblings_expected)
    )


async def test_a_lone_request_goes_out_at_once() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner():
        task = score(coalescer, ["a", "bb"])
        await settle()
    assert upstream.calls == [["a", "bb"]], "no other request could join: no waiting"
    assert (await task)[0] == [1.0, 2.0]


async def test_a_batch_waits_for_a_request_in_progress_then_the_window() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner(), coalescer.possible_joiner():
        first = score(coalescer, ["a"])
        await settle()
        assert upstream.calls == [], "another request in progress may still join"
        await scheduler.advance(WINDOW * 0.5)
        assert upstream.calls == []
        await scheduler.advance(WINDOW * 0.5)
        assert upstream.calls == [["a"]], "the window passed"
    assert (await first)[0] == [1.0]


async def test_requests_for_the_same_query_share_one_call_and_get_their_own_scores() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner(), coalescer.possible_joiner():
        first = score(coalescer, ["a", "bbb"])
        second = score(coalescer, ["cc"])
        await settle()
    assert upstream.calls == [["a", "bbb", "cc"]]
    logits_first, _, usage_first = await first
    logits_second, _, usage_second = await second
    assert (logits_first, logits_second) == ([1.0, 3.0], [2.0])
    assert (usage_first.total_tokens, usage_second.total_tokens) == (7, 3), "shared by share"
    assert coalescer.coalesced_requests == 1


async def test_different_queries_or_keys_never_share() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    other_key = Target(TARGET.model, None, TARGET.route, "key-b")
    with coalescer.possible_joiner(), coalescer.possible_joiner(), coalescer.possible_joiner():
        tasks = [
            score(coalescer, ["a"]),
            score(coalescer, ["a"], query="other"),
            score(coalescer, ["a"], target=other_key),
        ]
        await settle()
    await asyncio.gather(*tasks)
    assert len(upstream.calls) == 3


async def test_a_pair_already_on_its_way_is_not_sent_again() -> None:
    release = asyncio.Event()
    upstream, scheduler = Upstream(release=release), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner():
        first = score(coalescer, ["a", "bb"])
        await settle()
    with coalescer.possible_joiner():
        second = score(coalescer, ["bb", "ccc"])
        await settle()
    release.set()
    assert (await first)[0] == [1.0, 2.0]
    assert (await second)[0] == [2.0, 3.0]
    assert upstream.calls == [["a", "bb"], ["ccc"]]


async def test_a_full_batch_goes_out_without_waiting() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler, max_passages=2)
    with coalescer.possible_joiner(), coalescer.possible_joiner():
        task = score(coalescer, ["a", "b", "c"])
        await settle()
        assert upstream.calls == [["a", "b"]], "full at two; the third waits for company"
        await scheduler.advance(WINDOW)
    assert upstream.calls == [["a", "b"], ["c"]]
    await task


async def test_announced_siblings_keep_the_batch_open_a_window_past_the_latest() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    tasks = []
    for chunk in (["a"], ["b"]):
        with coalescer.possible_joiner():
            tasks.append(score(coalescer, chunk, siblings_expected=True))
            await settle()
        assert upstream.calls == [], "siblings were announced"
        await scheduler.advance(WINDOW * 0.9)
    assert upstream.calls == [], "each sibling moved the window on"
    await scheduler.advance(WINDOW * 0.2)
    assert upstream.calls == [["a", "b"]]
    await asyncio.gather(*tasks)


async def test_the_last_shorter_sibling_lets_the_batch_go() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner():
        first = score(coalescer, ["a"], siblings_expected=True)
        await settle()
    with coalescer.possible_joiner():
        last = score(coalescer, ["b"], siblings_expected=False)
        await settle()
    assert upstream.calls == [["a", "b"]]
    await asyncio.gather(first, last)


async def test_siblings_never_hold_a_batch_past_four_windows() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    tasks = []
    for index in range(10):
        with coalescer.possible_joiner():
            tasks.append(score(coalescer, [f"p{index}"], siblings_expected=True))
            await settle()
        await scheduler.advance(WINDOW * 0.5)
        if upstream.calls:
            break
    assert scheduler.now == SIBLING_WAIT_WINDOWS * WINDOW, "siblings kept coming every half window"
    assert len(upstream.calls) == 1 and len(upstream.calls[0]) == len(tasks)
    await asyncio.gather(*tasks)


async def test_a_failing_call_fails_exactly_its_callers() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    upstream.failure = RerankError(ErrorCode.UNAVAILABLE, "boom")
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner(), coalescer.possible_joiner():
        first = score(coalescer, ["a"])
        second = score(coalescer, ["b"])
        await settle()
    for task in (first, second):
        with pytest.raises(RerankError, match="boom"):
            await task
    upstream.failure = None
    with coalescer.possible_joiner():
        assert (await score(coalescer, ["a"]))[0] == [1.0], "nothing of the failure is kept"


async def test_a_batch_everyone_left_before_it_went_is_dropped() -> None:
    upstream, scheduler = Upstream(), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner(), coalescer.possible_joiner():
        task = score(coalescer, ["a"])
        await settle()
        task.cancel()
        await settle()
        await scheduler.advance(WINDOW)
    assert upstream.calls == []


async def test_a_request_arriving_as_a_call_is_cancelled_sends_its_pairs_afresh() -> None:
    """The last caller of a call in flight leaves; a request for the same pairs that arrives
    before the call has seen its cancellation gets its scores, not the cancellation."""
    release = asyncio.Event()
    upstream, scheduler = Upstream(release=release), FakeScheduler()
    coalescer = make(upstream, scheduler)
    with coalescer.possible_joiner():
        leaving = score(coalescer, ["a", "bb"])
        await settle()
    assert upstream.calls == [["a", "bb"]]
    with coalescer.possible_joiner():
        # The loop runs the leaving caller's cancellation (which cancels the call), then
        # places the arriving request, then the call sees its cancellation.
        leaving.cancel()
        arriving = score(coalescer, ["bb", "a"])
        await settle()
    release.set()
    assert (await arriving)[0] == [2.0, 1.0]
    assert upstream.calls == [["a", "bb"], ["bb", "a"]]
    with pytest.raises(asyncio.CancelledError):
        await leaving
