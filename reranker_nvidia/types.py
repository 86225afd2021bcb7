"""The values the API speaks in: search hits going in, rankings coming out.

Plain dataclasses with no dependencies, shared by the Python client and the server, so that
importing the client costs nothing but grpcio and protobuf.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict, get_args

# typing.Required is Python 3.11+; grpcio brings typing_extensions for 3.10.
from typing_extensions import Required

__all__ = [
    "TRUNCATE_VALUES",
    "Answer",
    "CallOptions",
    "Document",
    "Hit",
    "Meta",
    "RankCall",
    "RankedDocuments",
    "RerankCall",
    "RerankedHit",
    "RerankedHits",
    "ScoredDocument",
    "SearchType",
    "Truncate",
    "Usage",
]

# What NIM does with a query+passage pair over the model's token limit.
Truncate = Literal["NONE", "END"]
TRUNCATE_VALUES: tuple[str, ...] = get_args(Truncate)


class CallOptions(TypedDict, total=False):
    """Per-call choices of the Python client; each defaults to the sidecar's own setting."""

    model: str | None
    base_url: str | None
    truncate: str | None
    api_key: str | None


class RankCall(CallOptions, total=False):
    """What a ``rank`` call may say besides its query and documents."""

    top_n: int | None


class RerankCall(CallOptions, total=False):
    """What a ``rerank`` call says besides its hits."""

    properties: Required[Sequence[str]]
    query: Required[str]
    top_n: int | None
    module_config: Mapping[str, Any] | None


class SearchType(enum.Enum):
    UNSPECIFIED = "unspecified"
    VECTOR = "vector"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Document:
    """A document of a ``rank`` call that carries an image: text, an image, or both.

    ``image`` is the image itself: its bytes (PNG or JPEG; WebP, GIF, BMP or TIFF where the
    model takes them) or a data URL (``data:image/png;base64,...``), never a URL to fetch.
    Ranking an image takes a vision-language model (``nvidia/llama-nemotron-rerank-vl-1b-v2``).
    """

    text: str = ""
    image: bytes | str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result as the search produced it; the reranker never alters these fields.

    ``properties`` may hold ``bytes`` (e.g. a Weaviate ``blob``): an image there is ranked by
    its pixels when a rerank property names it and the model takes images.
    """

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
class Answer:
    """What every answer says besides its order: the NIM model that scored, and NIM's usage."""

    model: str
    usage: Usage


@dataclass(frozen=True)
class RerankedHits(Answer):
    """Hits best first, then those with no text to rank by, in their old order."""

    hits: list[RerankedHit]
    fallback: bool = False
    """NIM could not rank them: they are in their search order (the sidecar's fail-open)."""


@dataclass(frozen=True)
class RankedDocuments(Answer):
    """Documents best first (at most ``top_n``)."""

    documents: list[ScoredDocument]
    fallback: bool = False
    """NIM could not rank them: they are in their input order (the sidecar's fail-open)."""


@dataclass(frozen=True)
class ScoredDocument:
    """A document of a ``rank`` call: its position in the call, its score, its text ("" for
    an image only) and its image's bytes, if it had one."""

    index: int
    score: float
    document: str
    image: bytes | None = None


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
