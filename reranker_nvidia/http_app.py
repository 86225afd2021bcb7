"""The HTTP application: every HTTP contract's router on one FastAPI app, behind the guard."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Response

from reranker_nvidia import __version__, http_cohere, http_nim, http_weaviate
from reranker_nvidia.errors import RerankError
from reranker_nvidia.http_guard import HttpGuard
from reranker_nvidia.meta import describe
from reranker_nvidia.ranker import Ranker

COHERE_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})


def render_for_path(path: str, error: RerankError) -> Response:
    """An error in the shape of the contract ``path`` belongs to."""
    if path in COHERE_PATHS:
        return http_cohere.render_error(error)
    if path.startswith("/v1/"):
        return http_nim.render_error(error)
    return http_weaviate.render_error(error)


def create_http_app(ranker: Ranker, is_ready: Callable[[], bool]) -> FastAPI:
    settings = ranker.settings
    app = FastAPI(
        title="reranker-nvidia",
        version=__version__,
        description="Rerank vector, keyword and hybrid search hits with NVIDIA NIM.",
    )
    app.include_router(http_weaviate.weaviate_router(ranker, describe(settings), is_ready))
    app.include_router(http_nim.nim_router(ranker))
    app.include_router(http_cohere.cohere_router(ranker))
    app.add_middleware(
        HttpGuard,
        render=render_for_path,
        max_body_bytes=settings.max_body_bytes,
        auth_token=settings.auth_token.get_secret_value() if settings.auth_token else None,
        arriving=ranker.arriving,
    )
    return app
