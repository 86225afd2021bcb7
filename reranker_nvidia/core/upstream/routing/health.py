"""Polling self-hosted NIMs' readiness (``GET /v1/health/ready``) in the background.

A NIM that is loading its model, or restarting, answers not ready before any call fails: its
breaker is held open after ``fails_to_down`` failed probes in a row, and turns half-open at the
first passing probe, so real calls probe it at once. Hosted NIM has no such route and is never
polled; its breaker learns from calls alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from reranker_nvidia.core.upstream.routing.router import EndpointState
from reranker_nvidia.core.upstream.routing.table import READY_PATH

log = logging.getLogger("reranker_nvidia.upstream")

Probe = Callable[[EndpointState], Awaitable[bool]]
_ENDPOINT_SUFFIXES = ("/ranking", "/reranking")


def health_url(base_url: str, path: str = READY_PATH) -> str:
    """``path`` under the NIM's root: ``base_url`` without a ``/v1``, ``/v1/ranking`` or
    ``/reranking`` ending, in every form ``resolve_endpoint`` accepts (a query is kept)."""
    base, _, query = base_url.strip().split("#", 1)[0].partition("?")
    parts = urlsplit(base)
    root = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if root.endswith(suffix):
            root = root[: -len(suffix)]
            break
    segments = root.split("/")
    if "v1" in segments:
        root = "/".join(segments[: len(segments) - 1 - segments[::-1].index("v1")])
    query = f"?{query}" if query else ""
    return f"{parts.scheme}://{parts.netloc}{root}{path}{query}"


class HealthPoller:
    """Probes every self-hosted endpoint that has a health path, all at once, every
    ``interval_s``, in one background task (``start`` / ``aclose``).

    A probe that returns False, raises or takes longer than ``timeout_s`` is a failed one.
    ``sleep`` is injectable so that tests drive the rounds.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        probe: Probe,
        *,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        fails_to_down: int = 2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or fails_to_down < 1:
            raise ValueError("interval_s and timeout_s must be positive, fails_to_down >= 1")
        self.polled = tuple(
            endpoint
            for endpoint in endpoints
            if endpoint.spec.self_hosted and endpoint.spec.health_path is not None
        )
        self._probe = probe
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.fails_to_down = fails_to_down
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds completed, for tests and /meta

    def start(self) -> None:
        """Starts polling (in the running loop); nothing to do when no endpoint is polled."""
        if self._task is None and self.polled:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="endpoint-health")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> None:
        """One round: every polled endpoint probed, its breaker told."""
        outcomes = await asyncio.gather(
            *(self._check(endpoint) for endpoint in self.polled), return_exceptions=True
        )
        self.rounds += 1
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # a breaker listener's bug: not the probe's
                log.error("endpoint health polling failed", exc_info=outcome)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await self._sleep(self.interval_s)

    async def _check(self, endpoint: EndpointState) -> None:
        try:
            ready = await asyncio.wait_for(self._probe(endpoint), self.timeout_s)
        except Exception:
            ready = False
        if ready:
            endpoint.probe_failures = 0
            endpoint.ready = True
            endpoint.breaker.mark_ready()
            return
        endpoint.probe_failures += 1
        if endpoint.probe_failures >= self.fails_to_down:
            endpoint.ready = False
            endpoint.breaker.force_open()
