"""Admission control: a bound on requests in flight, and draining for a graceful stop."""

from __future__ import annotations

import asyncio
import contextvars

from reranker_nvidia.errors import ErrorCode, RerankError

RETRY_AFTER_S = 1.0
# Set while a request holds its place, so that admitting it again (a surface that admits before
# converting its input, then the core) counts it once.
_admitted: contextvars.ContextVar[bool] = contextvars.ContextVar("admitted", default=False)


class _Admitted:
    """A held place: a class rather than a generator, as it is entered on every request."""

    __slots__ = ("_admission", "_token")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._token: contextvars.Token[bool] | None = None

    async def __aenter__(self) -> None:
        self._token = self._admission._enter()

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission._exit(self._token)


class Admission:
    """Admits up to ``limit`` requests at once; refuses the rest at once instead of queueing.

    Past the limit a request gets RESOURCE_EXHAUSTED (HTTP 503 with Retry-After); once
    draining, every new request gets UNAVAILABLE (HTTP 503) while admitted ones finish.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self) -> _Admitted:
        """``async with admission.admit():`` holds a place for the block, or raises."""
        return _Admitted(self)

    def _enter(self) -> contextvars.Token[bool] | None:
        if _admitted.get():
            return None
        if self._draining:
            raise RerankError(
                ErrorCode.UNAVAILABLE,
                "the server is shutting down; retry on another instance",
                retry_after_s=RETRY_AFTER_S,
            )
        if self._in_flight >= self._limit:
            raise RerankError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"too many requests in flight: at most {self._limit} (RERANKER_MAX_IN_FLIGHT)",
                retry_after_s=RETRY_AFTER_S,
            )
        self._in_flight += 1
        self._idle.clear()
        return _admitted.set(True)

    def _exit(self, token: contextvars.Token[bool] | None) -> None:
        if token is None:
            return
        _admitted.reset(token)
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def begin_draining(self) -> None:
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
