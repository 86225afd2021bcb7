"""Calling NIM for one chunk: retried while the failure is retryable and the budget allows,
given a fair share of the call slots, and counted in the metrics.

Trust, budgets and pauses are per (endpoint, key): the endpoint that answered 2xx vouches for
the key it was sent, at itself only; a 429 pauses that endpoint for that key, for at most
``RERANKER_MAX_RETRY_AFTER_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from reranker_nvidia.core.digests import Digests
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.targets import Endpoint, Target
from reranker_nvidia.core.upstream.answers import UpstreamRanking
from reranker_nvidia.core.upstream.budget import NimBudget
from reranker_nvidia.core.upstream.fair_slots import FairSlots
from reranker_nvidia.core.upstream.nim_client import NimClient
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
        max_retry_after_s: float,
        metrics: Metrics,
        verified_keys: VerifiedKeys,
        budget: NimBudget,
        digests: Digests,
    ) -> None:
        """``verified_keys`` learns from every answer which keys each endpoint accepts;
        ``budget`` admits every attempt, and hears of every 429 that says when to come back."""
        self._budget = budget
        self._client = client
        self._retry = retry
        self._slots = FairSlots(concurrency)
        self._attempt_timeout_s = attempt_timeout_s
        self._max_retry_after_s = max_retry_after_s
        self._metrics = metrics
        self._verified_keys = verified_keys
        self._digests = digests
        self.in_flight = 0

    async def call(
        self, target: Target, query: str, passages: Sequence[str], deadline: float
    ) -> UpstreamRanking:
        """Logits for ``passages``, retrying while the failure is retryable and a retry can
        still start before ``deadline`` (a ``time.monotonic()`` value)."""
        endpoint = target.endpoints[0]
        key = target.key_for(endpoint)
        key_id = self._digests.key(key)
        budget_id = self._digests.mac(b"budget", endpoint.tag, key_id)
        flow = (target.route, target.model, target.truncate, query, target.request_key)
        attempt = 0
        while True:
            try:
                await self._budget.admit(budget_id, len(passages), deadline)
                async with self._slots.slot(key_id, flow):
                    answer = await self.attempt(
                        endpoint, key, target, query, passages, deadline, key_id
                    )
                return answer
            except RerankError as error:
                if error.retry_after_s is not None:
                    error.retry_after_s = min(error.retry_after_s, self._max_retry_after_s)
                    if error.upstream_status == 429 and error.retry_after_s > 0:
                        await self._budget.pause(budget_id, error.retry_after_s)
                if not self._retry.should_retry(error, attempt):
                    raise
                delay = self._retry.delay_s(error, attempt)
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def attempt(
        self,
        endpoint: Endpoint,
        key: str | None,
        target: Target,
        query: str,
        passages: Sequence[str],
        deadline: float,
        key_id: bytes,
    ) -> UpstreamRanking:
        """One call, counted in the metrics whatever its outcome."""
        metrics = self._metrics
        metrics.passages_sent.inc(len(passages))
        self.in_flight += 1
        started = time.perf_counter()
        try:
            answer = await self._client.rank(
                endpoint.url,
                model=target.model,
                query=query,
                passages=passages,
                truncate=target.truncate,
                api_key=key,
                timeout_s=min(self._attempt_timeout_s, deadline - time.monotonic()),
                guarded=endpoint.guarded,
            )
        except RerankError as error:
            metrics.upstream_calls.labels(str(error.upstream_status or error.code.value)).inc()
            if error.upstream_status in (401, 403):
                self._verified_keys.rejected(endpoint.tag, key_id)
            raise
        finally:
            self.in_flight -= 1
            metrics.upstream_seconds.observe(time.perf_counter() - started)
        # Only an answer that passed every check reaches this line.
        self._verified_keys.accepted(endpoint.tag, key_id)
        metrics.upstream_calls.labels("200").inc()
        metrics.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        metrics.tokens.labels("total").inc(answer.usage.total_tokens)
        return UpstreamRanking(answer.logits, answer.usage, endpoint.tag)

    async def aclose(self) -> None:
        await self._client.aclose()
