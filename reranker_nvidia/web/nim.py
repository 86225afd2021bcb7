"""NVIDIA NIM's ranking API, served by the sidecar, so NIM clients need only a new base URL.

Weaviate's built-in ``reranker-nvidia`` module posts to ``/v1/retrieval/nvidia/reranking``;
LangChain and LlamaIndex post to ``{base_url}/ranking`` and list ``{base_url}/models``;
LiteLLM posts to ``/v1/retrieval/{model}/reranking``. Unlike NIM, any number of passages is
accepted: the core splits them into calls of at most 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from reranker_nvidia.core import Ranker
from reranker_nvidia.nim_schema import (
    NimRankingResponse,
    NimText,
    NimTruncate,
)
from reranker_nvidia.web.body import json_response, read_body, request_body_schema
from reranker_nvidia.web.options import (
    header_options,
    request_budget,
    with_example,
)

# Hosted NIM's path for its first reranking model carries no model segment.
LEGACY_PATH_SEGMENT = "nvidia"


class NimRankingRequest(BaseModel):
    model_config = with_example(
        {
            "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
            "query": {"text": "which way should i go?"},
            "passages": [{"text": "turn left at the mill"}, {"text": "go north"}],
            "truncate": "END",
        }
    )

    model: str | None = Field(
        default=None, description="Model id; else the one in the path; else the default."
    )
    query: NimText
    passages: list[NimText] = Field(description="Any number: sent to NIM in chunks of 512.")
    truncate: NimTruncate | None = None
    top_k: int | None = Field(default=None, ge=1, description="Return only the best top_k.")
    top_n: int | None = Field(default=None, ge=1, description="Same as top_k.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    root: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def nim_router(ranker: Ranker, models: Sequence[str]) -> APIRouter:
    """``models``: what ``GET /v1/models`` lists, the default first."""
    router = APIRouter(tags=["NVIDIA NIM ranking API"])
    model_list = ModelList(
        data=[
            ModelCard(
                id=model, owned_by=model.split("/", 1)[0] if "/" in model else "nvidia", root=model
            )
            for model in models
        ]
    )

    async def rank(request: Request, path_model: str | None) -> Response:
        body = await read_body(request, NimRankingRequest)
        options = replace(
            header_options(request), model=body.model or path_model, truncate=body.truncate
        )
        ranking = await ranker.rank(
            body.query.text,
            [passage.text for passage in body.passages],
            options,
            surface="nim",
            top_n=body.top_k if body.top_k is not None else body.top_n,
            budget_s=request_budget(request),
        )
        scores = ranking.scores
        usage = ranking.usage
        return json_response(
            {
                "rankings": [{"index": i, "logit": scores[i]} for i in ranking.order()],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "total_tokens": usage.total_tokens,
                },
            },
            fallback=ranking.fallback,
        )

    body_schema = request_body_schema(NimRankingRequest)

    @router.post(
        "/v1/ranking",
        summary="Rank passages (self-hosted NIM's path)",
        response_model=NimRankingResponse,
        openapi_extra=body_schema,
    )
    async def ranking(request: Request) -> Response:
        return await rank(request, None)

    @router.post(
        "/v1/retrieval/{segment}/reranking",
        summary="Rank passages (hosted NIM's path; also /v1/retrieval/{model}/reranking)",
        response_model=NimRankingResponse,
        openapi_extra=body_schema,
    )
    async def retrieval(segment: str, request: Request) -> Response:
        return await rank(request, None if segment == LEGACY_PATH_SEGMENT else segment)

    @router.post(
        "/v1/retrieval/{org}/{model}/reranking",
        summary="Rank passages with the model named in the path (hosted NIM's per-model path)",
        response_model=NimRankingResponse,
        openapi_extra=body_schema,
    )
    async def retrieval_model(org: str, model: str, request: Request) -> Response:
        return await rank(request, f"{org}/{model}")

    @router.get(
        "/v1/models",
        summary="The reranking models this sidecar offers, the default first (OpenAI-style)",
    )
    async def list_models() -> ModelList:
        return model_list

    return router
