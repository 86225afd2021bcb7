"""NIM's rate limit as a budget per (endpoint, key): at most ``RERANKER_UPSTREAM_RPM`` calls
and ``RERANKER_UPSTREAM_TPM`` passages in any 60-second window, counted across every replica
that shares the store (one atomic script per call), or in this process when there is none.

A call over budget waits for room if the wait fits its request's deadline, and is refused
with a Retry-After otherwise. A 429 from an endpoint that says Retry-After pauses that
(endpoint, key), for every replica, for that long (capped by the caller at
``RERANKER_MAX_RETRY_AFTER_S``): an endpoint can pause itself only, never another. Each
(endpoint, key) is named by an opaque keyed digest the caller computes, so the names in the
store reveal nothing and cannot be targeted. While the store is down each replica keeps its
own count: the budget then holds per replica, not across them.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from reranker_nvidia.core.cache.store import NAMESPACE, SharedStore
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.errors import ErrorCode, RerankError

WINDOW_S = 60.0
_CALLS = NAMESPACE + b"budget:"
_PAUSE = NAMESPACE + b"pause:"

# KEYS: the key's window (a sorted set of "id:passages" by time in ms) and its pause flag.
# ARGV: window ms, calls per window (0: no limit), passages per window (0: no limit),
# this call's passages, this call's id. Returns {0, 0} (admitted, and recorded), {ms to
# wait for room, 0}, {ms to wait, 1} while NIM's 429 pauses the key, or {-1, 0} (the call
# alone is over the passage budget). Time is the store's own, so replicas whose clocks
# differ agree.
_ADMIT_SCRIPT = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {pause, 1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local max_calls = tonumber(ARGV[2])
local max_passages = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
if max_passages > 0 and cost > max_passages then return {-1, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local calls = #entries / 2
local wait = 0
if max_calls > 0 and calls >= max_calls then
  wait = tonumber(entries[(calls - max_calls) * 2 + 2]) + window - now
end
if max_passages > 0 then
  local used = 0
  for i = 1, #entries, 2 do
    used = used + tonumber(string.match(entries[i], ':(%d+)$'))
  end
  local excess = used + cost - max_passages
  if excess > 0 then
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if freed >= excess then
        wait = math.max(wait, tonumber(entries[i + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then return {wait, 0} end
redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. cost)
redis.call('PEXPIRE', KEYS[1], window)
return {0, 0}
"""


@dataclass(frozen=True)
class Room:
    """The budget's answer for one call: go now (``wait_s`` 0) or wait ``wait_s``; ``paused``
    when the wait is NIM's own (a 429 with Retry-After), not the configured budget's."""

    wait_s: float
    paused: bool = False


@dataclass
class _Window:
    """One key's calls in the last window, oldest first: (time, passages)."""

    calls: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    paused_until: float = 0.0


class LocalBudget:
    """The same rule for one process, on its own clock."""

    def __init__(
        self,
        max_calls: int | None,
        max_passages: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._max_calls = max_calls
        self._max_passages = max_passages
        self._clock = clock
        self._max_keys = max_keys
        self._windows: collections.OrderedDict[bytes, _Window] = collections.OrderedDict()

    def admit(self, key_id: bytes, passages: int) -> Room | None:
        """Whether the call may go now (it is then counted) or how long to wait; None when
        the call alone is over the passage budget."""
        if self._max_passages is not None and passages > self._max_passages:
            return None
        now = self._clock()
        window = self._window(key_id)
        if window.paused_until > now:
            return Room(window.paused_until - now, paused=True)
        calls = window.calls
        while calls and calls[0][0] <= now - WINDOW_S:
            calls.popleft()
        wait = 0.0
        if self._max_calls is not None and len(calls) >= self._max_calls:
            wait = calls[len(calls) - self._max_calls][0] + WINDOW_S - now
        if self._max_passages is not None:
            excess = sum(count for _, count in calls) + passages - self._max_passages
            freed = 0
            for at, count in calls:
                if excess <= 0:
                    break
                freed += count
                if freed >= excess:
                    wait = max(wait, at + WINDOW_S - now)
                    break
        if wait > 0:
            return Room(wait)
        calls.append((now, passages))
        return Room(0.0)

    def pause(self, key_id: bytes, seconds: float) -> None:
        window = self._window(key_id)
        window.paused_until = max(window.paused_until, self._clock() + seconds)

    def _window(self, key_id: bytes) -> _Window:
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = _Window()
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        self._windows.move_to_end(key_id)
        return window


class NimBudget:
    """The budget every upstream call asks first; shared through ``store`` when there is
    one, this process's ``LocalBudget`` otherwise (and while the store is down)."""

    def __init__(
        self,
        max_calls: int | None,
        max_passages: int | None,
        *,
        metrics: Metrics,
        store: SharedStore | None = None,
        max_pause_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_pause_s``: the longest wait a pause read from the store may ask for
        (``RERANKER_MAX_RETRY_AFTER_S``): the store is untrusted, and whoever can write to it
        must not hold calls back for longer than NIM itself could."""
        self._max_calls = max_calls
        self._max_pause_s = max_pause_s
        self._max_passages = max_passages
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._local = LocalBudget(max_calls, max_passages, clock=clock)
        self._script = store.client.register_script(_ADMIT_SCRIPT) if store else None

    @property
    def limited(self) -> bool:
        return self._max_calls is not None or self._max_passages is not None

    async def admit(self, key_id: bytes, passages: int, deadline: float) -> None:
        """Returns once a call for ``key_id`` (an (endpoint, key) digest) may go; raises
        RESOURCE_EXHAUSTED (with Retry-After) if there is no room before ``deadline`` (a
        ``time.monotonic()`` value)."""
        if not self.limited:
            return
        waited = False
        while True:
            room = await self._ask(key_id, passages)
            if room is None:
                raise RerankError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"a call of {passages} passages is over the passage budget of "
                    f"{self._max_passages} a minute (RERANKER_UPSTREAM_TPM)",
                    rate_limited=True,
                )
            wait = room.wait_s
            if wait <= 0:
                return
            if self._clock() + wait >= deadline:
                self._metrics.budget_refusals.inc()
                why = (
                    "NIM answered 429 for this key at this endpoint and asked every replica to wait"
                    if room.paused
                    else "over the NIM budget for this key (RERANKER_UPSTREAM_RPM / "
                    "RERANKER_UPSTREAM_TPM)"
                )
                raise RerankError(
                    ErrorCode.RESOURCE_EXHAUSTED,
                    f"{why}; room again in {wait:.1f} s",
                    retry_after_s=wait,
                    rate_limited=True,
                )
            if not waited:
                self._metrics.budget_waits.inc()
                waited = True
            await asyncio.sleep(wait)

    async def _ask(self, key_id: bytes, passages: int) -> Room | None:
        if self._store is not None and self._script is not None:
            script = self._script
            keys = [_CALLS + key_id, _PAUSE + key_id]
            args: list[int | str] = [
                int(WINDOW_S * 1000),
                self._max_calls or 0,
                self._max_passages or 0,
                passages,
                uuid.uuid4().hex,
            ]
            answer = await self._store.run("budget", lambda: script(keys=keys, args=args))
            if (
                isinstance(answer, list)
                and len(answer) == 2
                and all(isinstance(part, int) for part in answer)
            ):
                millis, paused = answer
                if millis < 0:
                    return None
                # No true answer waits longer than NIM's capped pause or the window.
                longest = self._max_pause_s if paused else WINDOW_S
                return Room(min(millis / 1000, longest), paused=bool(paused))
        return self._local.admit(key_id, passages)

    async def pause(self, key_id: bytes, seconds: float) -> None:
        """An endpoint said 429, Retry-After ``seconds``, for ``key_id`` (an (endpoint, key)
        digest): no call for it for that long (when a budget is set; without one, retries
        honour Retry-After on their own)."""
        if not self.limited:
            return
        self._local.pause(key_id, seconds)
        store = self._store
        if store is not None:
            millis = max(1, int(seconds * 1000))
            await store.run("pause", lambda: store.client.set(_PAUSE + key_id, b"1", px=millis))
