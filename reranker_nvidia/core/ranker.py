"""The core: rank documents for a query through NIM.

Every surface (gRPC, each HTTP contract) calls ``Ranker``; none of them resolves keys or
URLs, validates limits, chunks, or talks to NIM itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from reranker_nvidia.core.admission import Admission
from reranker_nvidia.core.coalescer import Coalescer
from reranker_nvidia.core.endpoints import (
    endpoint_identity,
    is_hosted,
    normalise_model,
    resolve_endpoint,
)
from reranker_nvidia.core.keys import usable_key
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.redaction import redact_url, scrub
from reranker_nvidia.core.request_context import request_secrets
from reranker_nvidia.core.retry import RetryPolicy
from reranker_nvidia.core.score_cache import ScoreCache, digest, scope_digest
from reranker_nvidia.core.ssrf import Resolver, check_url_text, parse_base_url, system_resolver
from reranker_nvidia.core.upstream import NimClient, UpstreamRanking
from reranker_nvidia.core.verified_keys import VerifiedKeys
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.nim_schema import TRUNCATE_VALUES
from reranker_nvidia.settings import Settings
from reranker_nvidia.types import Usage

NO_KEY_MESSAGE = (
    "no api key found neither in request header: X-Nvidia-Api-Key "
    "(gRPC metadata: x-nvidia-api-key) nor in environment variable under NVIDIA_APIKEY"
)


@dataclass(frozen=True)
class RankOptions:
    """Per-request choices; ``None`` means "use the next layer down" (collection, then server)."""

    model: str | None = None
    base_url: str | None = None
    truncate: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def over(self, fallback: RankOptions) -> RankOptions:
        """These options, with any unset or blank field taken from ``fallback``."""
        return RankOptions(
            model=_given(self.model) or fallback.model,
            base_url=_given(self.base_url) or fallback.base_url,
            truncate=_given(self.truncate) or fallback.truncate,
            api_key=_given(self.api_key) or fallback.api_key,
        )


@dataclass(frozen=True)
class Target:
    """Where and how one request is sent: fully resolved, nothing left to default."""

    endpoint: str
    model: str
    truncate: str | None
    api_key: str | None = field(repr=False)
    guarded: bool = False
    """A base URL the caller chose: its connections pass the SSRF address check."""


@dataclass(frozen=True)
class Ranking:
    """Scores for the documents of one request, in the documents' input order."""

    scores: list[float]
    model: str
    usage: Usage = field(default_factory=Usage)
    top_n: int | None = None

    def order(self) -> list[int]:
        """Document indices best first, at most ``top_n``; ties keep input order."""
        best_first = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])
        return best_first if self.top_n is None else best_first[: self.top_n]


class Ranker:
    def __init__(
        self, settings: Settings, client: NimClient, *, retry: RetryPolicy | None = None
    ) -> None:
        self.settings = settings
        self.admission = Admission(settings.max_in_flight)
        self.upstream_in_flight = 0
        self._client = client
        self._server_key = settings.server_key()
        self._secrets = tuple(
            secret.get_secret_value()
            for secret in (settings.api_key, settings.auth_token)
            if secret is not None
        )
        self._defaults = RankOptions(
            model=settings.model, base_url=settings.base_url, truncate=settings.truncate
        )
        self._trusted_base_urls = (settings.base_url, *settings.allowed_base_urls)
        self.verified_keys = VerifiedKeys(ttl_s=settings.cache_ttl_s)
        self._retry = retry or RetryPolicy(
            settings.max_retries, settings.retry_base_delay_s, settings.retry_max_delay_s
        )
        self._upstream_slots = asyncio.Semaphore(settings.upstream_concurrency)
        self.cache = ScoreCache(
            max_entries=settings.cache_size,
            max_bytes=settings.cache_max_bytes,
            ttl_s=settings.cache_ttl_s,
        )
        self.coalescer = Coalescer(
            self._call,
            max_passages=settings.max_passages_per_call,
            window_s=settings.coalesce_window_ms / 1000,
            on_scored=self.cache.put_many,
        )
        self.metrics = Metrics()
        self.metrics.read_at_scrape(self._readings)

    def _readings(self) -> dict[str, float]:
        return {
            "reranker_cache_hits": self.cache.hits,
            "reranker_cache_misses": self.cache.misses,
            "reranker_coalesced_requests": self.coalescer.coalesced_requests,
            "reranker_coalesced_passages": self.coalescer.coalesced_passages,
            "reranker_requests_in_flight": self.admission.in_flight,
            "reranker_cache_entries": len(self.cache),
            "reranker_cache_bytes": self.cache.size_bytes,
        }

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Surfaces wrap each request in this from the moment it arrives, so that batches
        waiting for company know a request may still join them."""
        self.coalescer.enter()
        try:
            yield
        finally:
            self.coalescer.leave()

    @classmethod
    def from_settings(cls, settings: Settings, *, resolver: Resolver = system_resolver) -> Ranker:
        secrets = [
            secret.get_secret_value()
            for secret in (settings.api_key, settings.auth_token)
            if secret is not None
        ]
        client = NimClient(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_concurrency,
            max_answer_bytes=settings.max_upstream_bytes,
            resolver=resolver,
            secrets=secrets,
        )
        return cls(settings, client)

    async def aclose(self) -> None:
        await self._client.aclose()

    def resolve(self, options: RankOptions) -> Target:
        """Apply precedence (request, then server) and check what the request chose.

        The server's key only ever goes to the endpoint a trusted base URL (the configured one
        or an allow-listed one) resolves to for the request's model, reached by a URL with no
        query, fragment or user-info; any other base URL must come with the request's own key
        and passes the SSRF checks.
        """
        chosen = _cleaned(options)
        request_key = chosen.api_key
        if request_key is not None:
            check_key_text(request_key)
        chosen = chosen.over(self._defaults)
        base_url = chosen.base_url or self.settings.base_url
        parse_base_url(base_url)
        truncate = chosen.truncate.upper() if chosen.truncate else None
        if truncate is not None and truncate not in TRUNCATE_VALUES:
            raise invalid_argument(f"truncate must be NONE or END, got {chosen.truncate!r}")
        model = normalise_model(chosen.model or self.settings.model)
        endpoint = resolve_endpoint(base_url, model)
        trusted = self._is_trusted(base_url, endpoint, model)
        if not trusted:
            check_url_text(base_url)
        if request_key is None and self._server_key is None and is_hosted(base_url):
            raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
        if request_key is None and not trusted:
            raise RerankError(
                ErrorCode.PERMISSION_DENIED,
                f"base URL {redact_url(base_url)} is neither RERANKER_BASE_URL nor in "
                "RERANKER_ALLOWED_BASE_URLS, so the server's key is not sent there: send the "
                "request's own key (X-Nvidia-Api-Key, Authorization: Bearer, or gRPC "
                "metadata x-nvidia-api-key)",
            )
        api_key = request_key if request_key is not None else self._server_key
        return Target(endpoint, model, truncate, api_key, guarded=not trusted)

    def _is_trusted(self, base_url: str, endpoint: str, model: str) -> bool:
        parts = parse_base_url(base_url)
        if parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc:
            return False
        identity = endpoint_identity(endpoint)
        return any(
            endpoint_identity(resolve_endpoint(trusted, model)) == identity
            for trusted in self._trusted_base_urls
        )

    async def rank(
        self,
        query: str,
        documents: Sequence[str],
        options: RankOptions = RankOptions(),
        *,
        top_n: int | None = None,
        budget_s: float | None = None,
        siblings_expected: bool = False,
    ) -> Ranking:
        """One score per document, in input order; chunks above the per-call passage limit.

        ``top_n`` limits ``Ranking.order()``; every document is still scored. The request
        takes at most ``RERANKER_REQUEST_TIMEOUT_S``, or ``budget_s`` if the caller has less.
        ``siblings_expected``: more requests for the same query are on their way, so the
        upstream call may wait the coalescing window for them.
        """
        self.check_request(query, documents)
        check_top_n(top_n)
        target = self.resolve(options)
        budget = self.settings.request_timeout_s
        if budget_s is not None:
            budget = min(budget, max(budget_s, 0.0))
        secrets = request_secrets.set((target.api_key,))
        try:
            async with self.admission.admit():
                return await asyncio.wait_for(
                    self._rank(
                        target,
                        query,
                        documents,
                        top_n,
                        time.monotonic() + budget,
                        siblings_expected,
                    ),
                    budget,
                )
        except asyncio.TimeoutError:
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the request did not finish within its budget of {budget:.3g} s",
            ) from None
        except RerankError as error:
            # Whatever an upstream echoed, no secret this request knows leaves in it.
            error.message = scrub(error.message, (*self._secrets, target.api_key))
            raise
        finally:
            request_secrets.reset(secrets)

    def check_request(self, query: str, documents: Sequence[str]) -> None:
        if not query.strip():
            raise invalid_argument("query must not be empty")
        check_count(
            "documents", len(documents), self.settings.max_documents, "RERANKER_MAX_DOCUMENTS"
        )
        text_bytes = _utf8_length(query)
        _check_unicode("query", query)
        for index, document in enumerate(documents):
            _check_unicode(f"documents[{index}]", document)
            text_bytes += _utf8_length(document)
        limit = self.settings.max_text_bytes
        if text_bytes > limit:
            raise invalid_argument(
                f"query and documents: {text_bytes} bytes of text, at most {limit} allowed "
                "per request (RERANKER_MAX_TEXT_BYTES)"
            )

    async def _rank(
        self,
        target: Target,
        query: str,
        documents: Sequence[str],
        top_n: int | None,
        deadline: float,
        siblings_expected: bool = False,
    ) -> Ranking:
        """Cached scores first; only the misses go upstream, through the coalescer, which
        splits them into calls of at most ``max_passages_per_call`` sent concurrently."""
        if not documents:
            return Ranking([], target.model, top_n=top_n)
        scope = self.settings.cache_scope
        owner = self.verified_keys.digest(target.api_key) if scope == "key" else b""
        prefix = scope_digest(target.endpoint, target.model, target.truncate, owner)
        prefix += digest(query)
        keys = [prefix + digest(document) for document in documents]
        found: list[float | None] = [None] * len(keys)
        if self.cache.enabled:
            if scope != "verified" or target.api_key in self.verified_keys:
                found = self.cache.get_many(keys)
            else:
                self.cache.pass_over(len(keys))
        missing = [index for index, score in enumerate(found) if score is None]
        usage = Usage()
        if missing:
            logits, usage = await self.coalescer.score(
                target,
                query,
                [documents[index] for index in missing],
                [keys[index] for index in missing],
                deadline,
                siblings_expected=siblings_expected,
            )
            for index, logit in zip(missing, logits, strict=True):
                found[index] = logit
        # Every None was a miss, and every miss has its logit now.
        return Ranking(cast(list[float], found), target.model, usage, top_n)

    async def _call(
        self, target: Target, query: str, passages: Sequence[str], deadline: float
    ) -> UpstreamRanking:
        """One chunk, retried while the failure is retryable and the budget allows."""
        attempt = 0
        while True:
            try:
                async with self._upstream_slots:
                    return await self._send(target, query, passages, deadline)
            except RerankError as error:
                if not self._retry.should_retry(error, attempt):
                    raise
                delay = self._retry.delay_s(error, attempt)
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def _send(
        self, target: Target, query: str, passages: Sequence[str], deadline: float
    ) -> UpstreamRanking:
        """One attempt, counted in the metrics whatever its outcome."""
        metrics = self.metrics
        metrics.passages_sent.inc(len(passages))
        self.upstream_in_flight += 1
        started = time.perf_counter()
        try:
            answer = await self._client.rank(
                target.endpoint,
                model=target.model,
                query=query,
                passages=passages,
                truncate=target.truncate,
                api_key=target.api_key,
                timeout_s=min(self.settings.upstream_timeout_s, deadline - time.monotonic()),
                guarded=target.guarded,
            )
        except RerankError as error:
            metrics.upstream_calls.labels(str(error.upstream_status or error.code.value)).inc()
            if error.upstream_status in (401, 403):
                self.verified_keys.rejected(target.api_key)
            raise
        finally:
            self.upstream_in_flight -= 1
            metrics.upstream_seconds.observe(time.perf_counter() - started)
        self.verified_keys.accepted(target.api_key)
        metrics.upstream_calls.labels("200").inc()
        metrics.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        metrics.tokens.labels("total").inc(answer.usage.total_tokens)
        return answer


def check_count(field: str, count: int, limit: int, variable: str) -> None:
    """Counts are checked before any per-item work, so no count costs more than its limit."""
    if count > limit:
        raise invalid_argument(
            f"{field}: {count} given, at most {limit} allowed per request ({variable})"
        )


def check_key_text(key: str) -> None:
    """A key goes into an HTTP header: printable ASCII with no spaces, or it is no key."""
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise invalid_argument(
            "api key: must be printable ASCII without spaces (X-Nvidia-Api-Key, "
            "Authorization: Bearer, or gRPC metadata x-nvidia-api-key)"
        )


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _given(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _check_unicode(field: str, text: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``) that no UTF-8 request can."""
    if text.isascii():  # O(1) in CPython
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_argument(f"{field}: not valid Unicode (a lone surrogate)") from None


def check_top_n(top_n: int | None) -> None:
    if top_n is not None and top_n < 1:
        raise invalid_argument(f"top_n must be at least 1 when given, got {top_n}")


def _cleaned(options: RankOptions) -> RankOptions:
    """Blank strings mean "not given": a header sent empty must not override the server."""

    def blank_to_none(value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    return replace(
        options,
        model=blank_to_none(options.model),
        base_url=blank_to_none(options.base_url),
        truncate=blank_to_none(options.truncate),
        api_key=usable_key(options.api_key),
    )
