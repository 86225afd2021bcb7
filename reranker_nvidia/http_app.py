"""The HTTP application: every HTTP contract's router on one FastAPI app."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from reranker_nvidia import __version__
from reranker_nvidia.http_cohere import cohere_router
from reranker_nvidia.http_nim import nim_router
from reranker_nvidia.http_weaviate import weaviate_router
from reranker_nvidia.meta import describe
from reranker_nvidia.ranker import Ranker


def create_http_app(ranker: Ranker, is_ready: Callable[[], bool]) -> FastAPI:
    app = FastAPI(
        title="reranker-nvidia",
        version=__version__,
        description="Rerank vector, keyword and hybrid search hits with NVIDIA NIM.",
    )
    app.include_router(weaviate_router(ranker, describe(ranker.settings), is_ready))
    app.include_router(nim_router(ranker))
    app.include_router(cohere_router(ranker))
    return app
