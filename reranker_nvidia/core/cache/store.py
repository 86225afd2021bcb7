"""The Redis or Valkey server replicas share (``RERANKER_CACHE_URL``), through the ``redis``
client's asyncio API.

The store is an optimisation, never a dependency: every operation is bounded by
``RERANKER_CACHE_TIMEOUT_MS``, and a failure is reported to the caller as ``None`` (read) or
dropped (write), counted in ``/metrics``, and logged once per outage. While the store is
down it is asked again at most once a second, so requests do not each pay the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.trust.redaction import redact_url

log = logging.getLogger("reranker_nvidia.store")

T = TypeVar("T")

# Every key this project writes starts with this: one store may serve other programs too.
NAMESPACE = b"reranker-nvidia:v1:"
# How long a store that failed is left alone before it is asked again.
RETRY_AFTER_FAILURE_S = 1.0
# Connections to the store per replica; a call that finds none free waits up to the timeout.
MAX_STORE_CONNECTIONS = 32
# Time an operation gets per key it reads or writes, on top of RERANKER_CACHE_TIMEOUT_MS.
_PER_KEY_S = 20e-6


class SharedStore:
    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        timeout_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = _describe(url)
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock = clock
        pool = redis.BlockingConnectionPool.from_url(
            url,
            password=password,
            max_connections=MAX_STORE_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.client = redis.Redis(connection_pool=pool)
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def available(self) -> bool:
        """False while the store is in an outage and not due to be asked again."""
        return self._down_since is None or self._clock() >= self._next_try

    async def run(
        self, operation: str, work: Callable[[], Awaitable[T]], *, keys: int = 1
    ) -> T | None:
        """``work()`` against the store, or None if the store is down, slow or refuses. An
        operation on many ``keys`` gets a little longer, so a 10,000-document request does not
        count as an outage."""
        if not self.available:
            return None
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(work(), self._timeout_s + keys * _PER_KEY_S)
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            self._failed(operation, error)
            return None
        self._metrics.store_seconds.labels(operation).observe(time.perf_counter() - started)
        if self._down_since is not None:
            log.warning(
                "shared store at %s is back after %.1f s",
                self.where,
                self._clock() - self._down_since,
            )
            self._down_since = None
        return result

    def _failed(self, operation: str, error: BaseException) -> None:
        self._metrics.store_errors.labels(operation).inc()
        now = self._clock()
        self._next_try = now + RETRY_AFTER_FAILURE_S
        if self._down_since is None:
            self._down_since = now
            kind = "timed out" if isinstance(error, asyncio.TimeoutError) else type(error).__name__
            log.warning(
                "shared store at %s failed (%s on %s): this replica serves from its own cache "
                "and budget until it answers again",
                self.where,
                kind,
                operation,
            )

    async def check(self) -> bool:
        """Whether the store answers a PING now (at start-up, for the summary)."""

        async def ping() -> bool:
            # The asyncio client's PING is awaitable; redis-py types it for both clients.
            return await cast(Awaitable[bool], self.client.ping())

        return await self.run("ping", ping) is not None

    async def aclose(self) -> None:
        # The pool is ours (built above), so the client does not close it on its own.
        await self.client.aclose(close_connection_pool=True)


def _describe(url: str) -> str:
    """The store's address for logs: scheme, host and port, never a password."""
    if url.startswith("unix://"):
        return "unix://" + urlsplit(url).path
    return redact_url(url)
