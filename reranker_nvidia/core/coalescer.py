"""Coalescing: concurrent requests for the same query share upstream calls.

- Single flight: a (query, passage) pair already on its way upstream is not sent again; the
  second caller waits for the first call's answer.
- Batching: requests for the same route (endpoints), model, truncation, query and key that arrive
  close together (Weaviate sends chunks of 32 in parallel) go out as one call of up to
  ``max_passages`` passages, and each caller gets back exactly its own scores.

A batch goes out when it is full (``max_passages``, or ``max_image_bytes`` of images), when its
window has passed, or as soon as no request in
flight could still join it (every one is already waiting on a batch), after one turn of the
event loop so that requests that arrived together can join. A lone request thus waits one
loop turn, never the window. A request may say that siblings are on their way (a Weaviate
chunk of exactly 32 documents is one of several); its batch then waits for a member that
says none follow (the last, shorter chunk), or until no sibling has joined for a window
(four windows at most). Only requests that would
send the same key share a call, and a failing call fails exactly the callers that shared
it. A shared call is cancelled only when every caller waiting for it has gone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from reranker_nvidia.core.cache.score_cache import PairKey
from reranker_nvidia.core.documents.passages import ImagePassage, Passage
from reranker_nvidia.core.targets.target import Target
from reranker_nvidia.core.upstream.answers import UpstreamRanking
from reranker_nvidia.types import Usage

Send = Callable[[Target, str, Sequence[Passage], float], Awaitable[UpstreamRanking]]
# A batch waiting for announced siblings never waits longer than this many windows.
SIBLING_WAIT_WINDOWS = 4
# Requests share a call only when all of these are the same: the caller's key, the route,
# model, truncation, and query.
Group = tuple[str | None, str, str, str | None, str]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The clock and timers batches run on: the event loop, or a test's own."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...

    def call_soon(self, callback: Callable[[], None]) -> object: ...


@dataclass(eq=False)
class _Batch:
    group: Group
    target: Target
    query: str
    deadline: float
    opened_at: float
    result: asyncio.Future[UpstreamRanking]
    keys: list[PairKey] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    image_bytes: int = 0
    positions: dict[PairKey, int] | None = None
    """Where each key is in ``keys``: made when a later request first joins by a key."""
    waiters: int = 0
    expecting: bool = False
    """Every member so far said siblings are on their way."""
    dispatched: bool = False
    forgotten: bool = False
    """Its pairs are no longer on their way in it: no request may join it."""
    task: asyncio.Task[None] | None = None
    timer: Timer | None = None

    def add(self, keys: Sequence[PairKey], passages: Sequence[Passage]) -> int:
        """Append a run; where it starts."""
        start = len(self.keys)
        self.keys += keys
        self.passages += passages
        if self.positions is not None:
            for index, key in enumerate(keys, start):
                self.positions.setdefault(key, index)
        return start

    def position(self, key: PairKey) -> int:
        if self.positions is None:
            self.positions = {}
            for index, known in enumerate(self.keys):
                self.positions.setdefault(known, index)
        return self.positions[key]


@dataclass(frozen=True)
class _Ask:
    """One request's call for scores."""

    target: Target
    query: str
    passages: Sequence[Passage]
    keys: Sequence[PairKey]
    deadline: float
    siblings_expected: bool
    images: bool
    """Some passage carries an image (batches then also close at the image bytes bound)."""


@dataclass
class _Placement:
    """Where one request's passages went, in order: runs of (batch, first index, count)."""

    runs: list[tuple[_Batch, int, int]] = field(default_factory=list)
    own: dict[_Batch, int] = field(default_factory=dict)
    """Batches this request opened or added passages to, and how many it added."""
    joined: bool = False
    """It shares at least one call with another request."""

    @property
    def batches(self) -> list[_Batch]:
        return list(dict.fromkeys(batch for batch, _, _ in self.runs))


class _PossibleJoiner:
    """A class rather than a generator: entered on every request."""

    __slots__ = ("_coalescer",)

    def __init__(self, coalescer: Coalescer) -> None:
        self._coalescer = coalescer

    def __enter__(self) -> None:
        self._coalescer._arrived()

    def __exit__(self, *exc_info: object) -> None:
        self._coalescer._left()


class Coalescer:
    def __init__(
        self,
        send: Send,
        *,
        max_passages: int,
        window_s: float,
        max_image_bytes: int = 32 * 1024 * 1024,
        scheduler: Scheduler | None = None,
    ) -> None:
        """``send`` makes one upstream call; ``scheduler`` defaults to the running loop."""
        self._send = send
        self._max_passages = max_passages
        self._max_image_bytes = max_image_bytes
        self._window_s = window_s
        self._given_scheduler = scheduler
        self._open: dict[Group, _Batch] = {}
        # The pairs on their way, by the caller's key: pair key -> the batch carrying it.
        self._pending: dict[str | None, dict[PairKey, _Batch]] = {}
        self._in_progress = 0
        self._waiting = 0
        self.coalesced_passages = 0
        self.coalesced_requests = 0

    def _scheduler(self, loop: asyncio.AbstractEventLoop | None = None) -> Scheduler:
        """The given scheduler, else the running loop (asked for once per request: each
        asking costs a system call on Python 3.11)."""
        return self._given_scheduler or loop or asyncio.get_running_loop()

    def possible_joiner(self) -> _PossibleJoiner:
        """Surfaces wrap each request in this once its input is in: until it asks for scores
        or leaves, open batches may wait for it (never longer than the window)."""
        return _PossibleJoiner(self)

    def _arrived(self) -> None:
        self._in_progress += 1

    def _left(self) -> None:
        self._in_progress -= 1
        if self._open:
            self._dispatch_when_quiet(self._scheduler())

    async def score(
        self,
        target: Target,
        query: str,
        passages: Sequence[Passage],
        keys: Sequence[PairKey],
        deadline: float,
        *,
        siblings_expected: bool = False,
        images: bool = False,
    ) -> tuple[list[float], list[bytes], Usage]:
        """Logits for ``passages`` (one per key, in order), the tag of the endpoint that
        answered each, and this caller's share of usage. ``images``: some passage carries an
        image."""
        ask = _Ask(target, query, passages, keys, deadline, siblings_expected, images)
        loop = asyncio.get_running_loop()
        scheduler = self._scheduler(loop)
        placement = self._place(ask, loop, scheduler)
        batches = placement.batches
        own = placement.own
        self.coalesced_passages += sum(
            count for batch, _, count in placement.runs if batch not in own
        )
        self.coalesced_requests += placement.joined
        for batch in batches:
            batch.waiters += 1
            self._arm_timer(batch, scheduler, added_to=batch in own)
        answers = await self._wait(batches, scheduler)
        logits: list[float] = []
        tags: list[bytes] = []
        for batch, start, count in placement.runs:
            answer = answers[batch]
            logits += answer.logits[start : start + count]
            tags += [answer.tag] * count
        return logits, tags, usage_share(own, answers)

    def _place(
        self, ask: _Ask, loop: asyncio.AbstractEventLoop, scheduler: Scheduler
    ) -> _Placement:
        """Each passage joins the call already carrying it, else the open batch of its group
        (a new one when there is none or the last one is full). Passages go in runs, so a
        request no other shares costs a few list operations per batch, not work per
        passage."""
        placement = _Placement()
        target = ask.target
        group: Group = (
            target.request_key,
            target.route.id,
            target.model,
            target.truncate,
            ask.query,
        )
        keys, passages = ask.keys, ask.passages
        pending = self._pending.get(target.request_key)
        count, at = len(keys), 0
        while at < count:
            if pending:
                carrying = pending.get(keys[at])
                if carrying is not None:
                    placement.runs.append((carrying, carrying.position(keys[at]), 1))
                    placement.joined = True
                    at += 1
                    continue
            batch = self._open.get(group)
            if batch is None:
                batch = self._open_batch(group, ask, loop.create_future(), scheduler)
            elif batch not in placement.own:
                placement.joined = placement.joined or bool(batch.passages)
                batch.expecting = batch.expecting and ask.siblings_expected
            batch.deadline = max(batch.deadline, ask.deadline)
            end = min(count, at + self._max_passages - len(batch.passages))
            if pending and not pending.keys().isdisjoint(keys[at + 1 : end]):
                # The run stops at the next pair already on its way.
                end = next((k for k in range(at + 1, end) if keys[k] in pending), end)
            if ask.images:
                end = self._image_run_end(batch, passages, at, end)
            run = keys[at:end]
            carried = dict.fromkeys(run, batch)
            if len(carried) != len(run):
                # A pair twice in one request goes once: the run stops at the repeat, which
                # then joins the run carrying it.
                end = at + _first_repeat(run)
                run = keys[at:end]
                carried = dict.fromkeys(run, batch)
            start = batch.add(run, passages[at:end])
            if pending is None:
                pending = self._pending[target.request_key] = {}
            pending.update(carried)
            placement.own[batch] = placement.own.get(batch, 0) + len(run)
            placement.runs.append((batch, start, len(run)))
            if (
                len(batch.passages) >= self._max_passages
                or batch.image_bytes >= self._max_image_bytes
            ):
                self._dispatch(batch)
            at = end
        return placement

    def _image_run_end(self, batch: _Batch, passages: Sequence[Passage], at: int, end: int) -> int:
        """Where a run of image passages fills ``batch`` up to the image bytes bound (at
        least one passage always goes in); ``batch.image_bytes`` counts what goes in."""
        for index in range(at, end):
            passage = passages[index]
            if passage.__class__ is ImagePassage:
                if index > at and batch.image_bytes >= self._max_image_bytes:
                    return index
                batch.image_bytes += len(passage.image.data)
        return end

    def _open_batch(
        self,
        group: Group,
        ask: _Ask,
        result: asyncio.Future[UpstreamRanking],
        scheduler: Scheduler,
    ) -> _Batch:
        batch = _Batch(
            group,
            ask.target,
            ask.query,
            ask.deadline,
            opened_at=scheduler.time(),
            result=result,
            expecting=ask.siblings_expected,
        )
        self._open[group] = batch
        return batch

    def _arm_timer(self, batch: _Batch, scheduler: Scheduler, *, added_to: bool) -> None:
        """A batch goes out a window after it opened; one whose members announce siblings
        goes a window after the latest of them arrived, four windows after opening at most."""
        if batch.dispatched or self._window_s <= 0:
            return
        if batch.timer is not None and not (batch.expecting and added_to):
            return
        if batch.timer is not None:
            batch.timer.cancel()
        latest = batch.opened_at + SIBLING_WAIT_WINDOWS * self._window_s
        when = min(scheduler.time() + self._window_s, latest)
        batch.timer = scheduler.call_at(when, lambda: self._dispatch(batch))

    async def _wait(
        self, batches: Sequence[_Batch], scheduler: Scheduler
    ) -> dict[_Batch, UpstreamRanking]:
        self._waiting += 1
        self._dispatch_when_quiet(scheduler)
        try:
            # Shielded: one caller gone does not cancel a call others wait for.
            if len(batches) == 1:
                await asyncio.shield(batches[0].result)
            else:
                await asyncio.gather(*(asyncio.shield(batch.result) for batch in batches))
        except BaseException:
            # Cancelled, or one of its calls failed: its other calls go on only for others.
            for batch in batches:
                self._release(batch)
            raise
        finally:
            self._waiting -= 1
        return {batch: batch.result.result() for batch in batches}

    def _release(self, batch: _Batch) -> None:
        """One waiter fewer; a batch nobody waits for is cancelled, or dropped if unsent."""
        batch.waiters -= 1
        if batch.waiters == 0 and not batch.result.done():
            if batch.task is not None:
                # Forgotten now, not when the task sees its cancellation: a request arriving
                # meanwhile sends its pairs afresh instead of joining a call on its way out.
                self._forget(batch)
                batch.task.cancel()
            else:
                self._abandon(batch)

    def _dispatch_when_quiet(self, scheduler: Scheduler) -> None:
        """After this turn of the loop, send every open batch if no request in progress
        could still join one (each is waiting on a batch already)."""
        if self._open:
            scheduler.call_soon(self._dispatch_if_quiet)

    def _dispatch_if_quiet(self) -> None:
        windowed = self._window_s > 0
        if windowed and self._in_progress > self._waiting:
            return
        for batch in list(self._open.values()):
            if not (windowed and batch.expecting):
                self._dispatch(batch)

    def _close(self, batch: _Batch) -> None:
        """No one may join ``batch`` any more, and its timer is off."""
        batch.dispatched = True
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.group) is batch:
            del self._open[batch.group]

    def _dispatch(self, batch: _Batch) -> None:
        if batch.dispatched:
            return
        self._close(batch)
        batch.task = batch.result.get_loop().create_task(self._run(batch))

    def _abandon(self, batch: _Batch) -> None:
        """Drop a batch nobody waits for any more before it was sent."""
        self._close(batch)
        self._forget(batch)
        batch.result.cancel()

    def _forget(self, batch: _Batch) -> None:
        if batch.forgotten:
            return
        batch.forgotten = True
        request_key = batch.target.request_key
        pending = self._pending.get(request_key)
        if pending is None:
            return
        # Each key of a batch is on its way in that batch alone (a pair already on its way
        # joins the batch carrying it), so all of them go, in one pass in C.
        deque(map(pending.pop, batch.keys, repeat(None)), maxlen=0)
        if not pending:
            del self._pending[request_key]

    async def _run(self, batch: _Batch) -> None:
        try:
            answer = await self._send(batch.target, batch.query, batch.passages, batch.deadline)
        except BaseException as error:
            if not batch.result.done():
                if isinstance(error, asyncio.CancelledError):
                    batch.result.cancel()
                else:
                    batch.result.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            batch.result.set_result(answer)
        finally:
            self._forget(batch)
            # Nobody may be left to read a failure; reading it here keeps asyncio quiet.
            if batch.result.done() and not batch.result.cancelled():
                batch.result.exception()


def _first_repeat(keys: Sequence[PairKey]) -> int:
    seen: set[PairKey] = set()
    for index, key in enumerate(keys):
        if key in seen:
            return index
        seen.add(key)
    return len(keys)


def usage_share(own: Mapping[_Batch, int], answers: Mapping[_Batch, UpstreamRanking]) -> Usage:
    """A caller's usage: of each call it added passages to, the share its passages were."""
    usage = Usage()
    for batch, count in own.items():
        share = count / len(batch.passages)
        spent = answers[batch].usage
        usage += Usage(round(spent.prompt_tokens * share), round(spent.total_tokens * share))
    return usage
