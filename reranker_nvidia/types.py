"""The values the API speaks in: search hits going in, rankings coming out.

Plain dataclasses with no dependencies, shared by the Python client and the server, so that
importing the client costs nothing but grpcio and protobuf.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

# What NIM does with a query+passage pair over the model's token limit.
Truncate = Literal["NONE", "END"]
TRUNCATE_VALUES: tuple[str, ...] = get_args(Truncate)


class SearchType(enum.Enum):
    UNSPECIFIED = "unspecified"
    VECTOR = "vector"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Hit:
    """One search result as the search produced it; the reranker never alters these fields."""

    id: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    score: float | None = None
    distance: float | None = None
    search_type: SearchType = SearchType.UNSPECIFIED


@dataclass(frozen=True)
class Usage:
    """NIM's token count for what it scored."""

    prompt_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.total_tokens + other.total_tokens
        )


@dataclass(frozen=True)
class RerankedHit:
    hit: Hit
    position: int
    """Where the hit stood in the request."""
    rerank_score: float | None
    """``None`` when the hit had no text to rank by; such hits come last."""


@dataclass(frozen=True)
class RerankedHits:
    """Hits best first, then those with no text to rank by, in their old order."""

    hits: list[RerankedHit]
    model: str
    usage: Usage


@dataclass(frozen=True)
class ScoredDocument:
    index: int
    score: float
    document: str


@dataclass(frozen=True)
class RankedDocuments:
    """Documents best first (at most ``top_n``), with the model and NIM's token usage."""

    documents: list[ScoredDocument]
    model: str
    usage: Usage


@dataclass(frozen=True)
class Meta:
    """What a sidecar says about itself (``GET /meta``, gRPC ``GetMeta``): never a key."""

    name: str
    version: str
    model: str
    base_url: str
    endpoint: str
    max_passages_per_call: int
    max_documents: int
    server_key_configured: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
