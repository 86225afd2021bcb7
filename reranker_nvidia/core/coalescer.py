"""Coalescing: concurrent requests for the same query share upstream calls.

- Single flight: a (query, passage) pair already on its way upstream is not sent again; the
  second caller waits for the first call's answer.
- Batching: requests for the same endpoint, model, truncation, query and key that arrive
  close together (Weaviate sends chunks of 32 in parallel) go out as one call of up to
  ``max_passages`` passages, and each caller gets back exactly its own scores.

A batch goes out when it is full, when its window has passed, or as soon as no request in
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reranker_nvidia.core.upstream import UpstreamRanking
from reranker_nvidia.types import Usage

if TYPE_CHECKING:
    from reranker_nvidia.core.ranker import Target

Send = Callable[["Target", str, Sequence[str], float], Awaitable[UpstreamRanking]]
# A batch waiting for announced siblings never waits longer than this many windows.
_SIBLING_WAIT_WINDOWS = 4
Group = tuple[str | None, str, str, str | None, bool, str]


@dataclass(eq=False)
class _Batch:
    group: Group
    target: Target
    query: str
    deadline: float
    keys: list[bytes] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    waiters: int = 0
    expecting: bool = False
    """Every member so far said siblings are on their way."""
    dispatched: bool = False
    result: asyncio.Future[UpstreamRanking] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    opened_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class Coalescer:
    def __init__(
        self,
        send: Send,
        *,
        max_passages: int,
        window_s: float,
        on_scored: Callable[[Sequence[bytes], Sequence[float]], None],
    ) -> None:
        self._send = send
        self._max_passages = max_passages
        self._window_s = window_s
        self._on_scored = on_scored
        self._open: dict[Group, _Batch] = {}
        self._pending: dict[tuple[str | None, bytes], tuple[_Batch, int]] = {}
        self._active = 0
        self._parked = 0
        self.coalesced_passages = 0
        self.coalesced_requests = 0

    def enter(self) -> None:
        """A request has arrived that may yet ask for scores; batches wait for it a while."""
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        self._poke()

    async def score(
        self,
        target: Target,
        query: str,
        passages: Sequence[str],
        keys: Sequence[bytes],
        deadline: float,
        *,
        siblings_expected: bool = False,
    ) -> tuple[list[float], Usage]:
        """Logits for ``passages`` (one per key, in order), and this caller's share of usage."""
        places: list[tuple[_Batch, int]] = []
        own: dict[_Batch, int] = {}
        joined = False
        group: Group = (
            target.api_key,
            target.endpoint,
            target.model,
            target.truncate,
            target.guarded,
            query,
        )
        for passage, key in zip(passages, keys, strict=True):
            pending = self._pending.get((target.api_key, key))
            if pending is not None:
                places.append(pending)
                joined = True
                continue
            batch = self._open.get(group)
            if batch is None:
                batch = _Batch(group, target, query, deadline, expecting=siblings_expected)
                self._open[group] = batch
            elif batch not in own:
                joined = joined or bool(batch.passages)
                batch.expecting = batch.expecting and siblings_expected
            batch.deadline = max(batch.deadline, deadline)
            index = len(batch.passages)
            batch.keys.append(key)
            batch.passages.append(passage)
            self._pending[(target.api_key, key)] = (batch, index)
            own[batch] = own.get(batch, 0) + 1
            places.append((batch, index))
            if len(batch.passages) >= self._max_passages:
                self._dispatch(batch)
        batches = list(dict.fromkeys(batch for batch, _ in places))
        self.coalesced_passages += sum(1 for batch, _ in places if batch not in own)
        self.coalesced_requests += joined
        loop = asyncio.get_running_loop()
        for batch in batches:
            batch.waiters += 1
            if batch.dispatched or self._window_s <= 0:
                continue
            if batch.timer is None or (batch.expecting and batch in own):
                # Siblings trickling in keep the batch open a window past the latest one.
                if batch.timer is not None:
                    batch.timer.cancel()
                latest = batch.opened_at + _SIBLING_WAIT_WINDOWS * self._window_s
                when = min(loop.time() + self._window_s, latest)
                batch.timer = loop.call_at(when, self._dispatch, batch)
        self._parked += 1
        self._poke()
        try:
            await asyncio.gather(*(asyncio.shield(batch.result) for batch in batches))
        except BaseException:
            # Cancelled, or one of its calls failed: its other calls go on only for others.
            for batch in batches:
                batch.waiters -= 1
                if batch.waiters == 0 and not batch.result.done():
                    if batch.task is not None:
                        batch.task.cancel()
                    else:
                        self._abandon(batch)
            raise
        finally:
            self._parked -= 1
        answers = {batch: batch.result.result() for batch in batches}
        usage = Usage()
        for batch, count in own.items():
            share = count / len(batch.passages)
            spent = answers[batch].usage
            usage += Usage(round(spent.prompt_tokens * share), round(spent.total_tokens * share))
        return [answers[batch].logits[index] for batch, index in places], usage

    def _poke(self) -> None:
        """Send every open batch once no request in flight could still join one."""
        if self._open:
            asyncio.get_running_loop().call_soon(self._dispatch_if_quiet)

    def _dispatch_if_quiet(self) -> None:
        windowed = self._window_s > 0
        if windowed and self._active > self._parked:
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
        batch.task = asyncio.ensure_future(self._run(batch))

    def _abandon(self, batch: _Batch) -> None:
        """Drop a batch nobody waits for any more before it was sent."""
        self._close(batch)
        self._forget(batch)
        batch.result.cancel()

    def _forget(self, batch: _Batch) -> None:
        for key in batch.keys:
            if self._pending.get((batch.target.api_key, key), (None,))[0] is batch:
                del self._pending[(batch.target.api_key, key)]

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
            self._on_scored(batch.keys, answer.logits)
            batch.result.set_result(answer)
        finally:
            self._forget(batch)
            # Nobody may be left to read a failure; reading it here keeps asyncio quiet.
            if batch.result.done() and not batch.result.cancelled():
                batch.result.exception()
