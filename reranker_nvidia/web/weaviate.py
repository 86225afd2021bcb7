"""Weaviate's reranker sidecar contract (the ``reranker-transformers`` module's API).

Weaviate calls ``GET /.well-known/ready`` until it answers 2xx, then ``POST /rerank`` with
chunks of 32 documents, several in parallel, and assigns scores by position. A document that
is wholly the base64 of an image (a ``blob`` property) is ranked by that image when the model
takes images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from reranker_nvidia.core import Ranker
from reranker_nvidia.errors import invalid_argument
from reranker_nvidia.web.json_body import optional_string, parse_object, required, string, strings
from reranker_nvidia.web.options import header_options, request_budget
from reranker_nvidia.web.responses import json_response
from reranker_nvidia.web.routes import Handler, document_route
from reranker_nvidia.wire import Request
from reranker_nvidia.wire import Response as WireResponse

# Weaviate splits a rerank into chunks of this many documents and sends them in parallel: a
# full chunk is one of several, so its upstream call may wait a moment for its siblings.
WEAVIATE_CHUNK_SIZE = 32
RERANK_PATH = "/rerank"


class WeaviateRerankRequest(BaseModel):
    """Batch mode sends ``documents``; the legacy single mode sends one text as ``property``."""

    query: str = Field(examples=["which way should i go?"])
    documents: list[str] | None = Field(
        default=None,
        examples=[["turn left", "go north"]],
        description="Texts; with a vision-language model, a document that is wholly the base64 "
        "of a PNG, JPEG, WebP, GIF, BMP or TIFF image (a Weaviate blob) is ranked by its image.",
    )
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


def weaviate_rerank(ranker: Ranker, truncate: str) -> Handler:
    """``POST /rerank``. ``truncate``: what NIM does with an over-long passage; Weaviate never
    says, and the cross-encoder this contract comes from truncates."""

    async def rerank(request: Request, path: str) -> WireResponse:
        body = parse_object(request.body)
        query = string(required(body, "query"), "query")
        documents = body.get("documents")
        options = header_options(request, truncate=truncate)
        budget_s = request_budget(request)
        if documents is not None:
            texts = strings(documents, "documents")
            ranking = await ranker.rank(
                query,
                texts,
                options,
                surface="weaviate",
                budget_s=budget_s,
                siblings_expected=len(texts) == WEAVIATE_CHUNK_SIZE,
                blobs=True,
            )
            scores = [
                {"document": document, "score": score}
                for document, score in zip(texts, ranking.scores, strict=True)
            ]
            return json_response(
                {"query": query, "scores": scores, "property": None, "score": None},
                fallback=ranking.fallback,
            )
        single = optional_string(body.get("property"), "property")
        if single is None:
            raise invalid_argument("documents: required (or property, for a single text)")
        ranking = await ranker.rank(
            query, [single], options, surface="weaviate", budget_s=budget_s, blobs=True
        )
        return json_response(
            {"query": query, "scores": None, "property": single, "score": ranking.scores[0]},
            fallback=ranking.fallback,
        )

    return rerank


def weaviate_router(
    rerank: Handler, describe: Callable[[], dict[str, Any]], is_ready: Callable[[], bool]
) -> APIRouter:
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

    document_route(
        router,
        RERANK_PATH,
        rerank,
        request_model=WeaviateRerankRequest,
        response_model=WeaviateRerankResponse,
        summary="Score documents (batch) or one text (single) against a query",
        responses={400: {"model": WeaviateError}, 502: {"model": WeaviateError}},
    )
    return router
