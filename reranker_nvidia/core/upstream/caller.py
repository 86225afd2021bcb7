"""Calling NIM for one chunk: retried while the failure is retryable and the budget allows,
bounded in concurrency, and counted in the metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.targets import Target
from reranker_nvidia.core.upstream.budget import NimBudget
from reranker_nvidia.core.upstream.nim_client import NimClient, UpstreamRanking
from reranker_nvidia.core.upstream.retry import RetryPolicy
from reranker_nvidia.core.verified_keys import VerifiedKeys
from reranker_nvidia.errors import RerankError


class UpstreamCaller:
    def __init__(
        self,
        client: NimClient,
        *,
        retry: RetryPolicy,
        concurrency: int,
        attempt_timeout_s: float,
        metrics: Metrics,
        verified_keys: VerifiedKeys,
        budget: NimBudget,
    ) -> None:
        """``verified_keys`` learns from every answer which keys NIM accepts; ``budget``
        admits every attempt, and hears of every 429 that says when to come back."""
        self._budget = budget
        self._client = client
        self._retry = retry
        self._slots = asyncio.Semaphore(concurrency)
        self._attempt_timeout_s = attempt_timeout_s
        self._metrics = metrics
        self._verified_keys = verified_keys
        self.in_flight = 0

    async def call(
        self, target: Target, query: str, passages: Sequence[str], deadline: float
    ) -> UpstreamRanking:
        """Logits for ``passages``, retrying while the failure is retryable and a retry can
        still start before ``deadline`` (a ``time.monotonic()`` value)."""
        attempt = 0
        while True:
            try:
                await self._budget.admit(target.api_key, len(passages), deadline)
                async with self._slots:
                    return await self.attempt(target, query, passages, deadline)
            except RerankError as error:
                if error.upstream_status == 429 and error.retry_after_s:
                    await self._budget.pause(target.api_key, error.retry_after_s)
                if not self._retry.should_retry(error, attempt):
                    raise
                delay = self._retry.delay_s(error, attempt)
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def attempt(
        self, target: Target, query: str, passages: Sequence[str], deadline: float
    ) -> UpstreamRanking:
        """One call, counted in the metrics whatever its outcome."""
        metrics = self._metrics
        metrics.passages_sent.inc(len(passages))
        self.in_flight += 1
        started = time.perf_counter()
        try:
            answer = await self._client.rank(
                target.endpoint,
                model=target.model,
                query=query,
                passages=passages,
                truncate=target.truncate,
                api_key=target.api_key,
                timeout_s=min(self._attempt_timeout_s, deadline - time.monotonic()),
                guarded=target.guarded,
            )
        except RerankError as error:
            metrics.upstream_calls.labels(str(error.upstream_status or error.code.value)).inc()
            if error.upstream_status in (401, 403):
                self._verified_keys.rejected(target.api_key)
            raise
        finally:
            self.in_flight -= 1
            metrics.upstream_seconds.observe(time.perf_counter() - started)
        self._verified_keys.accepted(target.api_key)
        metrics.upstream_calls.labels("200").inc()
        metrics.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        metrics.tokens.labels("total").inc(answer.usage.total_tokens)
        return answer

    async def aclose(self) -> None:
        await self._client.aclose()
