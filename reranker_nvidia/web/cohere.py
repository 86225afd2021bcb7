"""The Cohere/Jina rerank API (``POST /v1/rerank``, ``/v2/rerank``), the de facto standard
that LiteLLM's proxy, LibreChat, Dify and vLLM speak.

A document is a string, ``{"text": ...}``, or, as Jina's multimodal rerank API takes it, an
object with an ``image`` (a data URL or bare base64), with or without text.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from reranker_nvidia.core import ImageBudget, Passage, Ranker, all_text
from reranker_nvidia.web.json_body import (
    Json,
    array,
    count,
    field_error,
    flag,
    optional_string,
    parse_object,
    required,
    string,
)
from reranker_nvidia.web.options import header_options, request_budget, with_example
from reranker_nvidia.web.passage_objects import text_or_image
from reranker_nvidia.web.responses import json_response
from reranker_nvidia.web.routes import Handler, document_route
from reranker_nvidia.wire import Request, Response

# Cohere bills one search unit per query with up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100
COHERE_MODEL_PREFIX = "rerank-"
PATHS = ("/v1/rerank", "/v2/rerank")


class RerankDocument(BaseModel):
    text: str | None = None
    image: str | None = Field(
        default=None, description="An image: a data URL or bare base64 (PNG, JPEG, ...)."
    )


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
    documents: list[str | RerankDocument] = Field(
        description="Strings, {'text': ...}, or {'image': ...} with or without text."
    )
    top_n: int | None = Field(default=None, ge=1, description="Return only the best top_n.")
    return_documents: bool = Field(
        default=False, description="Echo each document (Cohere's default: false)."
    )
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Accepted for Cohere v2; over-long documents are cut."
    )


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="NIM's logit (RERANKER_SCORE_SCALE decides).")
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


def documents_of(items: list[Any], images: ImageBudget) -> list[Passage]:
    """The documents as passages."""
    if all_text(items):
        return list(items)  # the common case: texts only
    passages: list[Passage] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            passages.append(item)
            continue
        where = f"documents.{index}"
        if not isinstance(item, dict):
            raise field_error(where, "Input should be a valid string or object")
        passages.append(text_or_image(item, where, images))
    return passages


def echo(item: Any) -> Json:
    """A document as ``return_documents`` gives it back."""
    if isinstance(item, str):
        return {"text": item}
    echoed: Json = {}
    if item.get("text") or item.get("image") is None:
        echoed["text"] = item.get("text") or ""
    if item.get("image") is not None:
        echoed["image"] = item["image"]
    return echoed


def cohere_rerank(ranker: Ranker, truncate: str) -> Handler:
    """``truncate``: what NIM does with an over-long document unless the request says
    ``max_tokens_per_doc`` (then END); Cohere itself truncates."""

    async def rerank(request: Request, path: str) -> Response:
        body = parse_object(request.body)
        query = string(required(body, "query"), "query")
        items = array(required(body, "documents"), "documents")
        images = ranker.image_budget(len(items))
        passages = documents_of(items, images)
        top_n = count(body.get("top_n"), "top_n")
        cut = count(body.get("max_tokens_per_doc"), "max_tokens_per_doc") is not None
        ranking = await ranker.rank(
            query,
            passages,
            header_options(
                request,
                model=nim_model(optional_string(body.get("model"), "model")),
                truncate="END" if cut else truncate,
            ),
            surface="cohere",
            top_n=top_n,
            budget_s=request_budget(request),
            images=images,
        )
        scores = ranking.scores
        results: list[dict[str, Any]]
        if flag(body.get("return_documents"), "return_documents"):
            results = [
                {"index": i, "relevance_score": scores[i], "document": echo(items[i])}
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
                        "search_units": max(1, -(-len(passages) // DOCUMENTS_PER_SEARCH_UNIT))
                    }
                },
                "usage": {"total_tokens": ranking.usage.total_tokens},
            },
            fallback=ranking.fallback,
        )

    return rerank


def cohere_router(rerank: Handler) -> APIRouter:
    router = APIRouter(tags=["Cohere/Jina rerank API"])
    for path in PATHS:
        document_route(
            router,
            path,
            rerank,
            request_model=RerankRequest,
            response_model=RerankResponse,
            summary=f"Rerank documents (Cohere/Jina shape, {path.split('/')[1]})",
        )
    return router
