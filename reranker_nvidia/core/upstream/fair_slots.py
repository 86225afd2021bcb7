"""NIM call slots (``RERANKER_UPSTREAM_CONCURRENCY``) shared fairly: across keys first, then
across the flows of one key.

A flow is the calls of one request (one coalescing group: query, model, route, key). A
first-come queue lets a request of 10,000 documents (20 calls) ahead of a 4-document one; here a
freed slot goes to the waiting key that holds the fewest slots, and within it to the waiting
flow that holds the fewest; ties go round: a key or flow just served goes to the back. So a
small request waits for a few slots to free at most, however many calls larger requests have
queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Hashable


class _Slot:
    """A held slot: a class rather than a generator, as it is entered on every call."""

    __slots__ = ("_flow", "_key", "_slots")

    def __init__(self, slots: FairSlots, key: Hashable, flow: Hashable) -> None:
        self._slots, self._key, self._flow = slots, key, flow

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._key, self._flow)

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots._release(self._key, self._flow)


class FairSlots:
    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._held_by_key: dict[Hashable, int] = {}
        self._held_by_flow: dict[Hashable, int] = {}
        # key -> flow -> waiters, both in arrival order.
        self._waiting: OrderedDict[Hashable, OrderedDict[Hashable, deque[asyncio.Future[None]]]]
        self._waiting = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for flows in self._waiting.values() for q in flows.values())

    def slot(self, key: Hashable, flow: Hashable) -> _Slot:
        """``async with slots.slot(key, flow):`` holds a slot for the block."""
        return _Slot(self, key, flow)

    async def _acquire(self, key: Hashable, flow: Hashable) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._hold(key, flow)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, OrderedDict()).setdefault(flow, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over as this call was cancelled: pass it on.
                self._release(key, flow)
            else:
                self._forget(key, flow, waiter)
            raise

    def _hold(self, key: Hashable, flow: Hashable) -> None:
        self._held_by_key[key] = self._held_by_key.get(key, 0) + 1
        self._held_by_flow[flow] = self._held_by_flow.get(flow, 0) + 1

    def _release(self, key: Hashable, flow: Hashable) -> None:
        for held, name in ((self._held_by_key, key), (self._held_by_flow, flow)):
            count = held[name] - 1
            if count:
                held[name] = count
            else:
                del held[name]
        self._free += 1
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to the fairest waiters."""
        while self._free > 0 and self._waiting:
            key = min(self._waiting, key=lambda k: self._held_by_key.get(k, 0))
            flows = self._waiting[key]
            flow = min(flows, key=lambda f: self._held_by_flow.get(f, 0))
            queue = flows[flow]
            waiter = queue.popleft()
            if queue:
                flows.move_to_end(flow)
            else:
                del flows[flow]
            if flows:
                self._waiting.move_to_end(key)
            else:
                del self._waiting[key]
            if waiter.done():
                continue
            self._free -= 1
            self._hold(key, flow)
            waiter.set_result(None)

    def _forget(self, key: Hashable, flow: Hashable, waiter: asyncio.Future[None]) -> None:
        flows = self._waiting.get(key)
        queue = flows.get(flow) if flows is not None else None
        if queue is None or flows is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del flows[flow]
            if not flows:
                del self._waiting[key]
