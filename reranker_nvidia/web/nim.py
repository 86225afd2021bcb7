"""NVIDIA NIM's ranking API, served by the sidecar, so NIM clients need only a new base URL.

Weaviate's built-in ``reranker-nvidia`` module posts to ``/v1/retrieval/nvidia/reranking``;
LangChain and LlamaIndex post to ``{base_url}/ranking`` and list ``{base_url}/models``;
LiteLLM posts to ``/v1/retrieval/{model}/reranking``. Unlike NIM, any number of passages is
accepted: the core splits them into calls of at most 512.

Passages carry text, an image (a base64 data URL, as NIM takes it), or both; an image-only
passage's ``"text": ""`` (LangChain sends it) is dropped, as NIM wants. On Weaviate's path,
a passage whose text is wholly the base64 of an image (a ``blob`` property) is that image when
the model takes images.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from reranker_nvidia.core import ImageBudget, Passage, Ranker, all_text
from reranker_nvidia.nim_schema import NimRankingResponse, NimText, NimTruncate
from reranker_nvidia.types import TRUNCATE_VALUES
from reranker_nvidia.web.json_body import (
    array,
    choice,
    count,
    mapping,
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

# Hosted NIM's path for its first reranking model carries no model segment; Weaviate's module
# posts there whatever the model.
LEGACY_PATH_SEGMENT = "nvidia"
WEAVIATE_PATH = "/v1/retrieval/nvidia/reranking"
RANKING_PATH = "/v1/ranking"
_RETRIEVAL = "/v1/retrieval/"
_RERANKING = "/reranking"


class NimPassage(BaseModel):
    text: str | None = Field(default=None, description="Left out (or empty) beside an image.")
    image: str | None = Field(
        default=None,
        description="A base64 data URL (data:image/png;base64,...): PNG or JPEG, and for some "
        "models WebP, GIF, BMP or TIFF. URLs are not fetched.",
    )


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
    passages: list[NimPassage] = Field(description="Any number: sent to NIM in chunks of 512.")
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


def passages_of(items: list[Any], images: ImageBudget) -> list[Passage]:
    """``passages``: text, or text beside an image, or an image alone."""
    try:
        texts: list[Passage] = [item["text"] for item in items]
    except (TypeError, KeyError):
        pass
    else:
        # The common case, read in one pass: text only, every one a string.
        if all_text(texts) and not any(map(dict.__contains__, items, repeat("image"))):
            return texts
    passages: list[Passage] = []
    for index, item in enumerate(items):
        where = f"passages.{index}"
        passages.append(text_or_image(mapping(item, where), where, images))
    return passages


def path_model(path: str) -> str | None:
    """The model a per-model path names (``/v1/retrieval/{org}/{model}/reranking``, or
    LiteLLM's ``/v1/retrieval/{model}/reranking``); None for ``/v1/ranking`` and Weaviate's."""
    if not path.startswith(_RETRIEVAL):
        return None
    middle = path[len(_RETRIEVAL) : -len(_RERANKING)]
    return None if middle == LEGACY_PATH_SEGMENT else middle


def nim_rank(ranker: Ranker) -> Handler:
    async def rank(request: Request, path: str) -> Response:
        body = parse_object(request.body)
        query = string(required(mapping(required(body, "query"), "query"), "text"), "query.text")
        items = array(required(body, "passages"), "passages")
        images = ranker.image_budget(len(items))
        passages = passages_of(items, images)
        model = optional_string(body.get("model"), "model") or path_model(path)
        truncate = choice(body.get("truncate"), "truncate", TRUNCATE_VALUES)
        top_k = count(body.get("top_k"), "top_k")
        top_n = top_k if top_k is not None else count(body.get("top_n"), "top_n")
        ranking = await ranker.rank(
            query,
            passages,
            header_options(request, model=model, truncate=truncate),
            surface="nim",
            top_n=top_n,
            budget_s=request_budget(request),
            blobs=path == WEAVIATE_PATH,
            images=images,
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

    return rank


def nim_router(rank: Handler, models: Sequence[str]) -> APIRouter:
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
    documented = {
        RANKING_PATH: "Rank passages (self-hosted NIM's path)",
        "/v1/retrieval/{segment}/reranking": "Rank passages (hosted NIM's path; also "
        "/v1/retrieval/{model}/reranking)",
        "/v1/retrieval/{org}/{model}/reranking": "Rank passages with the model named in the "
        "path (hosted NIM's per-model path)",
    }
    for path, summary in documented.items():
        document_route(
            router,
            path,
            rank,
            request_model=NimRankingRequest,
            response_model=NimRankingResponse,
            summary=summary,
        )

    @router.get(
        "/v1/models",
        summary="The reranking models this sidecar offers, the default first (OpenAI-style)",
    )
    async def list_models() -> ModelList:
        return model_list

    return router
