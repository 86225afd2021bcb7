"""Weaviate's reranker sidecar contract (the ``reranker-transformers`` module's API).

Weaviate calls ``GET /.well-known/ready`` until it answers 2xx, then ``POST /rerank`` with
chunks of 32 documents, several in parallel, and assigns scores by position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from reranker_nvidia.core import Ranker
from reranker_nvidia.errors import invalid_argument
from reranker_nvidia.web.body import json_response, read_body, request_body_schema
from reranker_nvidia.web.options import (
    header_options,
    request_budget,
)

# Weaviate splits a rerank into chunks of this many documents and sends them in parallel: a
# full chunk is one of several, so its upstream call may wait a moment for its siblings.
WEAVIATE_CHUNK_SIZE = 32


class WeaviateRerankRequest(BaseModel):
    """Batch mode sends ``documents``; the legacy single mode sends one text as ``property``."""

    query: str = Field(examples=["which way should i go?"])
    documents: list[str] | None = Field(default=None, examples=[["turn left", "go north"]])
    property: str | None = Field(default=None, examples=[""])


class DocumentScore(BaseModel):
    document: str
    score: float


class WeaviateRerankResponse(BaseModel):
    query: str
    scores: list[DocumentScore] | None = None
    property: str | None = None
    score: float | None = None


class WeaviateError(BaseModel):
    error: str


def weaviate_router(
    ranker: Ranker,
    describe: Callable[[], dict[str, Any]],
    is_ready: Callable[[], bool],
    truncate: str,
) -> APIRouter:
    """``truncate``: what NIM does with an over-long passage; Weaviate never says, and the
    cross-encoder this contract comes from truncates."""
    router = APIRouter(tags=["Weaviate sidecar"])

    @router.get("/.well-known/live", status_code=204, summary="Liveness")
    async def live() -> Response:
        return Response(status_code=204)

    @router.get(
        "/.well-known/ready",
        status_code=204,
        summary="Readiness: 204 once serving, 503 otherwise",
        responses={503: {"description": "Not ready"}},
    )
    async def ready() -> Response:
        return Response(status_code=204 if is_ready() else 503)

    @router.get(
        "/meta",
        summary="What this sidecar is and how it is configured, its endpoints as they are now "
        "(never a key)",
    )
    async def get_meta() -> dict[str, Any]:
        return describe()

    @router.post(
        "/rerank",
        response_model=WeaviateRerankResponse,
        summary="Score documents (batch) or one text (single) against a query",
        responses={400: {"model": WeaviateError}, 502: {"model": WeaviateError}},
        openapi_extra=request_body_schema(WeaviateRerankRequest),
    )
    async def rerank(request: Request) -> Response:
        body = await read_body(request, WeaviateRerankRequest)
        options = replace(header_options(request), truncate=truncate)
        budget_s = request_budget(request)
        if body.documents is not None:
            ranking = await ranker.rank(
                body.query,
                body.documents,
                options,
                surface="weaviate",
                budget_s=budget_s,
                siblings_expected=len(body.documents) == WEAVIATE_CHUNK_SIZE,
            )
            scores = [
                {"document": document, "score": score}
                for document, score in zip(body.documents, ranking.scores, strict=True)
            ]
            return json_response(
                {"query": body.query, "scores": scores, "property": None, "score": None},
                fallback=ranking.fallback,
            )
        if body.property is None:
            raise invalid_argument("documents: required (or property, for a single text)")
        ranking = await ranker.rank(
            body.query, [body.property], options, surface="weaviate", budget_s=budget_s
        )
        return json_response(
            {
                "query": body.query,
                "scores": None,
                "property": body.property,
                "score": ranking.scores[0],
            },
            fallback=ranking.fallback,
        )

    return router
