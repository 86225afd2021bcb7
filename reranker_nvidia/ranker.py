"""The core: rank documents for a query through NIM.

Every surface (gRPC, each HTTP contract) calls ``Ranker``; none of them resolves keys or
URLs, validates limits, chunks, or talks to NIM itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from reranker_nvidia.endpoints import is_hosted, normalise_model, resolve_endpoint
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.settings import Settings
from reranker_nvidia.upstream import NimClient, UpstreamRanking, Usage

TRUNCATE_VALUES = ("NONE", "END")

NO_KEY_MESSAGE = (
    "no api key found neither in request header: X-Nvidia-Api-Key "
    "(gRPC metadata: x-nvidia-api-key) nor in environment variable under NVIDIA_APIKEY"
)

T = TypeVar("T")


@dataclass(frozen=True)
class RankOptions:
    """Per-request choices; ``None`` means "use the next layer down" (collection, then server)."""

    model: str | None = None
    base_url: str | None = None
    truncate: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def over(self, fallback: RankOptions) -> RankOptions:
        """These options, with any unset field taken from ``fallback``."""
        return RankOptions(
            model=self.model or fallback.model,
            base_url=self.base_url or fallback.base_url,
            truncate=self.truncate or fallback.truncate,
            api_key=self.api_key or fallback.api_key,
        )


@dataclass(frozen=True)
class Target:
    """Where and how one request is sent: fully resolved, nothing left to default."""

    endpoint: str
    model: str
    truncate: str | None
    api_key: str | None = field(repr=False)


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
    def __init__(self, settings: Settings, client: NimClient) -> None:
        self.settings = settings
        self._client = client
        self._defaults = RankOptions(
            model=settings.model,
            base_url=settings.base_url,
            truncate=settings.truncate,
            api_key=settings.server_key(),
        )
        self._upstream_slots = asyncio.Semaphore(settings.upstream_concurrency)

    @classmethod
    def from_settings(cls, settings: Settings) -> Ranker:
        client = NimClient(
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_concurrency,
        )
        return cls(settings, client)

    async def aclose(self) -> None:
        await self._client.aclose()

    def resolve(self, options: RankOptions) -> Target:
        """Apply precedence (request, then server) and check what the request chose."""
        chosen = _cleaned(options).over(self._defaults)
        base_url = chosen.base_url or self.settings.base_url
        if not base_url.startswith(("http://", "https://")):
            raise invalid_argument(
                f"base_url must start with http:// or https://, got {base_url!r}"
            )
        truncate = chosen.truncate.upper() if chosen.truncate else None
        if truncate is not None and truncate not in TRUNCATE_VALUES:
            raise invalid_argument(f"truncate must be NONE or END, got {chosen.truncate!r}")
        model = normalise_model(chosen.model or self.settings.model)
        if chosen.api_key is None and is_hosted(base_url):
            raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
        return Target(resolve_endpoint(base_url, model), model, truncate, chosen.api_key)

    async def rank(
        self,
        query: str,
        documents: Sequence[str],
        options: RankOptions = RankOptions(),
        *,
        top_n: int | None = None,
    ) -> Ranking:
        """One score per document, in input order; chunks above the per-call passage limit.

        ``top_n`` limits ``Ranking.order()``; every document is still scored.
        """
        self.check_request(query, len(documents))
        check_top_n(top_n)
        target = self.resolve(options)
        if not documents:
            return Ranking([], target.model, top_n=top_n)
        size = self.settings.max_passages_per_call
        starts = range(0, len(documents), size)
        answers = await _all_or_none(
            [self._call(target, query, documents[start : start + size]) for start in starts]
        )
        scores: list[float] = []
        usage = Usage()
        for answer in answers:
            scores.extend(answer.logits)
            usage += answer.usage
        return Ranking(scores, target.model, usage, top_n)

    def check_request(self, query: str, document_count: int) -> None:
        if not query.strip():
            raise invalid_argument("query must not be empty")
        limit = self.settings.max_documents
        if document_count > limit:
            raise invalid_argument(
                f"documents: {document_count} given, at most {limit} allowed per request "
                "(RERANKER_MAX_DOCUMENTS)"
            )

    async def _call(self, target: Target, query: str, passages: Sequence[str]) -> UpstreamRanking:
        async with self._upstream_slots:
            return await self._client.rank(
                target.endpoint,
                model=target.model,
                query=query,
                passages=passages,
                truncate=target.truncate,
                api_key=target.api_key,
            )


def check_top_n(top_n: int | None) -> None:
    if top_n is not None and top_n < 1:
        raise invalid_argument(f"top_n must be at least 1 when given, got {top_n}")


def _cleaned(options: RankOptions) -> RankOptions:
    """Blank strings mean "not given": a header sent empty must not override the server."""

    def blank_to_none(value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    api_key = blank_to_none(options.api_key)
    if api_key is not None and not api_key.strip("*"):
        # A masked placeholder, not a key: langchain-nvidia-ai-endpoints sends
        # "Bearer **********" when it has none. Passing it on would override the server's key.
        api_key = None
    return replace(
        options,
        model=blank_to_none(options.model),
        base_url=blank_to_none(options.base_url),
        truncate=blank_to_none(options.truncate),
        api_key=api_key,
    )


async def _all_or_none(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` concurrently; on the first failure cancel the rest and raise it."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
