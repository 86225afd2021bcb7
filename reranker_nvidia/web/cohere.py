"""The Cohere/Jina rerank API (``POST /v1/rerank``, ``/v2/rerank``), the de facto standard
that LiteLLM's proxy, LibreChat, Dify and vLLM speak."""

from __future__ import annotations

import uuid
from dataclasses import replace

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from reranker_nvidia.core import Ranker
from reranker_nvidia.web.body import json_response, read_body, request_body_schema
from reranker_nvidia.web.options import (
    header_options,
    request_budget,
    with_example,
)

# Cohere bills one search unit per query with up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100
COHERE_MODEL_PREFIX = "rerank-"


class RerankDocument(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = with_example(
        {
            "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "query": "which way should i go?",
            "documents": ["turn left at the mill", {"text": "go north"}],
            "top_n": 1,
            "return_documents": True,
        }
    )

    model: str | None = Field(default=None, description="NIM model id; default: the server's.")
    query: str
    documents: list[str | RerankDocument] = Field(description="Strings or {'text': ...}.")
    top_n: int | None = Field(default=None, ge=1, description="Return only the best top_n.")
    return_documents: bool = Field(
        default=False, description="Echo each document's text (Cohere's default: false)."
    )
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Accepted for Cohere v2; over-long documents are cut."
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="NIM's logit: unnormalised, may be negative.")
    document: RerankDocument | None = None


class BilledUnits(BaseModel):
    search_units: int


class RerankMeta(BaseModel):
    billed_units: BilledUnits


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="Best first, at most top_n.")
    meta: RerankMeta
    usage: RerankUsage


def nim_model(model: str | None) -> str | None:
    """The NIM model a Cohere request's ``model`` names; None for the server's default.

    Clients set up for Cohere keep Cohere's own model ids (``rerank-english-v3.0``,
    ``rerank-v3.5``); those name no NIM model, so they mean the server's.
    """
    if model is None or "/" in model or not model.startswith(COHERE_MODEL_PREFIX):
        return model
    return None


def cohere_router(ranker: Ranker, truncate: str) -> APIRouter:
    """``truncate``: what NIM does with an over-long document unless the request says
    ``max_tokens_per_doc`` (then END); Cohere itself truncates."""
    router = APIRouter(tags=["Cohere/Jina rerank API"])

    async def rerank(request: Request) -> Response:
        body = await read_body(request, RerankRequest)
        texts = [doc if isinstance(doc, str) else doc.text for doc in body.documents]
        ranking = await ranker.rank(
            body.query,
            texts,
            replace(
                header_options(request),
                model=nim_model(body.model),
                truncate="END" if body.max_tokens_per_doc is not None else truncate,
            ),
            surface="cohere",
            top_n=body.top_n,
            budget_s=request_budget(request),
        )
        scores = ranking.scores
        if body.return_documents:
            results = [
                {"index": i, "relevance_score": scores[i], "document": {"text": texts[i]}}
                for i in ranking.order()
            ]
        else:
            results = [{"index": i, "relevance_score": scores[i]} for i in ranking.order()]
        return json_response(
            {
                "id": str(uuid.uuid4()),
                "model": ranking.model,
                "results": results,
                "meta": {
                    "billed_units": {
                        "search_units": max(1, -(-len(texts) // DOCUMENTS_PER_SEARCH_UNIT))
                    }
                },
                "usage": {"total_tokens": ranking.usage.total_tokens},
            },
            fallback=ranking.fallback,
        )

    for path in ("/v1/rerank", "/v2/rerank"):
        router.add_api_route(
            path,
            rerank,
            methods=["POST"],
            response_model=RerankResponse,
            summary=f"Rerank documents (Cohere/Jina shape, {path.split('/')[1]})",
            openapi_extra=request_body_schema(RerankRequest),
        )
    return router
