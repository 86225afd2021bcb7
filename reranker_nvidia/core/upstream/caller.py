"""Calling NIM for one chunk: on the endpoint the router picks, hedged when that endpoint is
slow, retried on another endpoint while the failure is retryable and the retry budget allows,
given a fair share of the call slots, and counted in the metrics.

Trust, budgets and pauses are per (endpoint, key): the endpoint that answered 2xx vouches for
the key it was sent, at itself only; a 429 pauses that endpoint for that key, for at most
``RERANKER_MAX_RETRY_AFTER_S``. Each call's outcome is the endpoint's breaker's to learn from:
a connection error, a timeout, a 5xx, a 429 or an answer that fails its checks counts against
the endpoint; a 4xx about the request does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from reranker_nvidia.core.documents.passages import Passage
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.targets.target import Endpoint, Target
from reranker_nvidia.core.trust.digests import Digests
from reranker_nvidia.core.trust.verified_keys import VerifiedKeys
from reranker_nvidia.core.upstream.answers import UpstreamRanking
from reranker_nvidia.core.upstream.budget import NimBudget
from reranker_nvidia.core.upstream.fair_slots import FairSlots
from reranker_nvidia.core.upstream.hedging import HedgeBudget, hedged
from reranker_nvidia.core.upstream.nim_client import NimClient
from reranker_nvidia.core.upstream.retry import RetryPolicy
from reranker_nvidia.core.upstream.retry_budget import RetryBudget
from reranker_nvidia.core.upstream.routing.router import Attempt, EndpointState
from reranker_nvidia.errors import ErrorCode, RerankError

CALLER_CHOSEN = "caller-chosen"


@dataclass(frozen=True)
class Hedging:
    """``RERANKER_HEDGE_PERCENTILE``: a call not answered after this percentile of its
    endpoint's recent latency is sent to a second endpoint of the same tier, within
    ``budget``."""

    percentile: float
    budget: HedgeBudget


class UpstreamCaller:
    def __init__(
        self,
        client: NimClient,
        *,
        retry: RetryPolicy,
        retry_budget: RetryBudget,
        concurrency: int,
        attempt_timeout_s: float,
        max_retry_after_s: float,
        metrics: Metrics,
        verified_keys: VerifiedKeys,
        budget: NimBudget,
        digests: Digests,
        hedging: Hedging | None = None,
    ) -> None:
        """``verified_keys`` learns from every answer which keys each endpoint accepts;
        ``budget`` admits every attempt, and hears of every 429 that says when to come back."""
        self._budget = budget
        self._client = client
        self._retry = retry
        self.retry_budget = retry_budget
        self.hedging = hedging
        self._slots = FairSlots(concurrency)
        self._attempt_timeout_s = attempt_timeout_s
        self._max_retry_after_s = max_retry_after_s
        self._metrics = metrics
        # Metric children used on every call, looked up once.
        self._answered = metrics.upstream_calls.labels("200")
        self._prompt_tokens = metrics.tokens.labels("prompt")
        self._total_tokens = metrics.tokens.labels("total")
        self._endpoint_seconds: dict[str, Any] = {}
        self._verified_keys = verified_keys
        self._digests = digests
        self.in_flight = 0

    async def call(
        self, target: Target, query: str, passages: Sequence[Passage], deadline: float
    ) -> UpstreamRanking:
        """Logits for ``passages``, retrying while the failure is retryable, the retry budget
        allows and a retry can still start before ``deadline`` (a ``time.monotonic()``
        value). A retry goes to an endpoint this call has not tried when one is up (the next
        tier's included), at once; to one already tried after a backoff."""
        router = target.route.router
        flow = (target.route.id, target.model, target.truncate, query, target.request_key)
        self.retry_budget.record_first_call()
        if self.hedging is not None and router is not None:
            self.hedging.budget.record_first_call()
        tried: list[EndpointState] = []
        failed: RerankError | None = None
        tries = 0
        while True:
            attempt = None
            if router is not None:
                attempt = router.pick(target.model, avoid=tried, retry=tries > 0, fail_open=True)
            if failed is not None and (attempt is None or attempt.endpoint in tried):
                # No other endpoint is up: back off before the same one again.
                delay = self._retry.delay_s(failed, tries - 1)
                if time.monotonic() + delay >= deadline:
                    if attempt is not None:
                        attempt.release()
                    raise failed
                await asyncio.sleep(delay)
            if attempt is None:
                endpoint = target.route.endpoints[0]
            else:
                endpoint = target.route.by_state[attempt.endpoint]
            try:
                return await self._hedged(
                    target, endpoint, attempt, query, passages, deadline, flow
                )
            except RerankError as error:
                if not self._retry.should_retry(error, tries):
                    raise
                if not self.retry_budget.try_spend():
                    error.message += " (not retried: the retry budget is spent)"
                    raise
                failed = error
                if attempt is not None:
                    tried.append(attempt.endpoint)
                tries += 1

    async def _hedged(
        self,
        target: Target,
        endpoint: Endpoint,
        attempt: Attempt | None,
        query: str,
        passages: Sequence[Passage],
        deadline: float,
        flow: object,
    ) -> UpstreamRanking:
        """The call on ``endpoint``, hedged on another endpoint of its tier when hedging is
        on and the call outlasts the endpoint's latency percentile."""
        first = self._on(target, endpoint, attempt, query, passages, deadline, flow)
        hedging = self.hedging
        router = target.route.router
        if hedging is None or router is None or attempt is None:
            return await first
        first_state = attempt.endpoint
        delay_s = first_state.latency.percentile(hedging.percentile)
        if delay_s is None:
            return await first

        hedges: list[EndpointState] = []

        def second() -> Awaitable[UpstreamRanking] | None:
            assert router is not None
            hedge = router.pick_hedge(target.model, first_state, hedging.budget)
            if hedge is None:
                return None
            hedges.append(hedge.endpoint)
            other = target.route.by_state[hedge.endpoint]
            return self._on(target, other, hedge, query, passages, deadline, flow)

        outcome = await hedged(lambda: first, second, delay_s)
        if outcome.winner == 1:
            hedges[0].hedges_won += 1
        return outcome.value

    async def _on(
        self,
        target: Target,
        endpoint: Endpoint,
        attempt: Attempt | None,
        query: str,
        passages: Sequence[Passage],
        deadline: float,
        flow: object,
    ) -> UpstreamRanking:
        """One call on one endpoint; its outcome told to the endpoint's breaker."""
        key = target.key_for(endpoint)
        key_id = target.key_id_for(endpoint)
        budget = self._budget
        budget_id = self._digests.mac(b"budget", endpoint.tag, key_id) if budget.limited else b""
        started = time.perf_counter()
        # A call the caller's own deadline cuts short says nothing about the endpoint: a
        # caller must not be able to open a breaker every other caller shares.
        cut_by_caller = deadline - time.monotonic() < self._attempt_timeout_s
        try:
            await budget.admit(budget_id, len(passages), deadline)
            async with self._slots.slot(key_id, flow):
                answer = await self._attempt(
                    endpoint, key, key_id, target, query, passages, deadline
                )
        except RerankError as error:
            if error.retry_after_s is not None:
                error.retry_after_s = min(error.retry_after_s, self._max_retry_after_s)
                if error.upstream_status == 429 and error.retry_after_s > 0:
                    await self._budget.pause(budget_id, error.retry_after_s)
            if attempt is not None:
                if error.rate_limited or (
                    cut_by_caller and error.code is ErrorCode.DEADLINE_EXCEEDED
                ):
                    attempt.release()
                elif _says_the_endpoint_is_unwell(error):
                    attempt.record_failure()
                else:
                    attempt.record_success()
            raise
        except BaseException:
            if attempt is not None:
                attempt.release()
            raise
        if attempt is not None:
            attempt.record_success(time.perf_counter() - started)
        return answer

    async def _attempt(
        self,
        endpoint: Endpoint,
        key: str | None,
        key_id: bytes,
        target: Target,
        query: str,
        passages: Sequence[Passage],
        deadline: float,
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
            seconds = time.perf_counter() - started
            metrics.upstream_seconds.observe(seconds)
            name = endpoint.name if endpoint.state is not None else CALLER_CHOSEN
            timer = self._endpoint_seconds.get(name)
            if timer is None:
                timer = self._endpoint_seconds[name] = metrics.endpoint_seconds.labels(name)
            timer.observe(seconds)
        # Only an answer that passed every check reaches this line.
        self._verified_keys.accepted(endpoint.tag, key_id)
        self._answered.inc()
        self._prompt_tokens.inc(answer.usage.prompt_tokens)
        self._total_tokens.inc(answer.usage.total_tokens)
        return UpstreamRanking(answer.logits, answer.usage, endpoint.tag)

    async def aclose(self) -> None:
        await self._client.aclose()


def _says_the_endpoint_is_unwell(error: RerankError) -> bool:
    """Whether a failed call counts against its endpoint: it could not be reached or did not
    answer in time, answered 5xx or 429, or answered something that failed its checks."""
    status = error.upstream_status
    if status is not None:
        return status >= 500 or status == 429
    return error.code in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED)
