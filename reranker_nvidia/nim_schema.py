"""NIM's ranking API on the wire: the shapes the NIM emulator serves and the sidecar's
NIM-compatible routes accept and answer."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field

# What NIM accepts: at most this many passages per call, and these truncation modes.
NIM_MAX_PASSAGES = 512
NimTruncate = Literal["NONE", "END"]
TRUNCATE_VALUES: tuple[str, ...] = get_args(NimTruncate)


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
