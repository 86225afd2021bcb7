"""NIM's ranking API on the wire: the shapes the NIM emulator serves and the sidecar's
NIM-compatible routes accept and answer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from reranker_nvidia.types import TRUNCATE_VALUES, Truncate

# What NIM accepts: at most this many passages per call, and these truncation modes.
NIM_MAX_PASSAGES = 512
NimTruncate = Truncate
__all__ = ["NIM_MAX_PASSAGES", "TRUNCATE_VALUES", "NimTruncate"]


class NimText(BaseModel):
    text: str


class NimRanking(BaseModel):
    index: int
    logit: float


class NimUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class NimRankingResponse(BaseModel):
    """Rankings sorted by logit, descending; ``index`` points into the request's passages."""

    rankings: list[NimRanking]
    usage: NimUsage = Field(default_factory=NimUsage)
