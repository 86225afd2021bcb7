"""The HTTP application: the front every request goes through, the ranking routes it answers
from the wire, and a FastAPI app for everything else (docs, OpenAPI, metrics, meta, models)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse

from reranker_nvidia import __version__
from reranker_nvidia.core import CONTENT_TYPE, Metrics, Ranker
from reranker_nvidia.web.cohere import PATHS as COHERE_PATHS
from reranker_nvidia.web.cohere import RerankRequest, cohere_rerank, cohere_router
from reranker_nvidia.web.docs import add_offline_docs
from reranker_nvidia.web.errors import install_error_handlers
from reranker_nvidia.web.front import HttpFront, access_observer
from reranker_nvidia.web.nim import (
    RANKING_PATH,
    WEAVIATE_PATH,
    NimRankingRequest,
    nim_rank,
    nim_router,
)
from reranker_nvidia.web.routes import HotRoutes, document_request_bodies
from reranker_nvidia.web.weaviate import (
    RERANK_PATH,
    WeaviateRerankRequest,
    weaviate_rerank,
    weaviate_router,
)


def create_http_app(
    *,
    ranker: Ranker,
    metrics: Metrics,
    possible_joiner: Callable[[], AbstractContextManager[None]],
    is_ready: Callable[[], bool],
    describe: Callable[[], dict[str, Any]],
    endpoint_states: Callable[[], list[dict[str, Any]]],
    models: Sequence[str],
    contract_truncate: str,
    auth_token: str | None,
) -> HttpFront:
    """``contract_truncate``: what the Weaviate and Cohere contracts send NIM for over-long
    passages (the rerankers they come from cut them); the NIM routes keep NIM's semantics."""
    weaviate = weaviate_rerank(ranker, contract_truncate)
    nim = nim_rank(ranker)
    cohere = cohere_rerank(ranker, contract_truncate)
    app = FastAPI(
        title="reranker-nvidia",
        version=__version__,
        description="Rerank vector, keyword and hybrid search hits with NVIDIA NIM.",
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    install_error_handlers(app)
    app.include_router(weaviate_router(weaviate, describe, is_ready))
    app.include_router(nim_router(nim, models))
    app.include_router(cohere_router(cohere))
    document_request_bodies(app, [WeaviateRerankRequest, NimRankingRequest, RerankRequest])

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def render_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health/endpoints", summary="Each configured NIM endpoint's state and load")
    async def health_endpoints() -> dict[str, Any]:
        return {"endpoints": endpoint_states()}

    routes = HotRoutes(
        {
            RERANK_PATH: weaviate,
            RANKING_PATH: nim,
            WEAVIATE_PATH: nim,
            **dict.fromkeys(COHERE_PATHS, cohere),
        },
        retrieval=nim,
    )
    return HttpFront(
        routes=routes,
        asgi=app,
        observe=access_observer(metrics),
        possible_joiner=possible_joiner,
        auth_token=auth_token,
    )
