"""The HTTP application: every HTTP contract's router on one FastAPI app, behind the guard."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse

from reranker_nvidia import __version__
from reranker_nvidia.core import CONTENT_TYPE, Metrics, Ranker, request_id
from reranker_nvidia.errors import RerankError
from reranker_nvidia.server.meta import describe, served_models
from reranker_nvidia.web import cohere as http_cohere
from reranker_nvidia.web import nim as http_nim
from reranker_nvidia.web import weaviate as http_weaviate
from reranker_nvidia.web.docs import add_offline_docs
from reranker_nvidia.web.guard import HttpGuard, RequestsInFlight

COHERE_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})
# Probes and scrapes come every few seconds: counted in the metrics, not logged.
QUIET_PATHS = frozenset({"/.well-known/live", "/.well-known/ready", "/metrics"})

access_log = logging.getLogger("reranker_nvidia.access")


def surface_of(path: str) -> str:
    if path in COHERE_PATHS:
        return "cohere"
    if path.startswith("/v1/"):
        return "nim"
    if path == "/rerank":
        return "weaviate"
    return "other"


def render_for_path(path: str, error: RerankError) -> Response:
    """An error in the shape of the contract ``path`` belongs to."""
    surface = surface_of(path)
    if surface == "cohere":
        return http_cohere.render_error(error)
    if surface == "nim":
        return http_nim.render_error(error)
    return http_weaviate.render_error(error)


def _observer(metrics: Metrics) -> Callable[[str, str, int, float], None]:
    def observe(method: str, path: str, status: int, seconds: float) -> None:
        surface = surface_of(path)
        metrics.observe_request(surface, str(status), seconds)
        if path not in QUIET_PATHS:
            access_log.info(
                "%s %s %d %.1f ms",
                method,
                path,
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "surface": surface,
                    "request_id": request_id.get(),
                },
            )

    return observe


def create_http_app(
    ranker: Ranker, is_ready: Callable[[], bool], in_flight: RequestsInFlight
) -> FastAPI:
    settings = ranker.settings
    app = FastAPI(
        title="reranker-nvidia",
        version=__version__,
        description="Rerank vector, keyword and hybrid search hits with NVIDIA NIM.",
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    # The Weaviate and Cohere contracts come from rerankers that cut over-long passages;
    # NIM's own routes keep NIM's semantics (the request's truncate, else the server's).
    truncate = settings.truncate or "END"
    app.include_router(
        http_weaviate.weaviate_router(ranker, describe(settings), is_ready, truncate)
    )
    app.include_router(http_nim.nim_router(ranker, served_models(settings)))
    app.include_router(http_cohere.cohere_router(ranker, truncate))

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        return Response(ranker.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(
        HttpGuard,
        render=render_for_path,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        in_flight=in_flight,
        auth_token=settings.auth_token.get_secret_value() if settings.auth_token else None,
        arriving=ranker.arriving,
        observe=_observer(ranker.metrics),
    )
    return app
