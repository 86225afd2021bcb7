"""The HTTP application: every HTTP contract's router on one FastAPI app, behind the guard."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse

from reranker_nvidia import __version__
from reranker_nvidia.core import CONTENT_TYPE, Metrics, Ranker, request_id
from reranker_nvidia.web.body import document_request_bodies
from reranker_nvidia.web.cohere import RerankRequest, cohere_router
from reranker_nvidia.web.docs import add_offline_docs
from reranker_nvidia.web.errors import contract_of, install_error_handlers
from reranker_nvidia.web.guard import HttpGuard, RequestsInFlight
from reranker_nvidia.web.nim import NimRankingRequest, nim_router
from reranker_nvidia.web.weaviate import WeaviateRerankRequest, weaviate_router

# Probes and scrapes come every few seconds: counted in the metrics, not logged.
QUIET_PATHS = frozenset({"/.well-known/live", "/.well-known/ready", "/metrics"})

access_log = logging.getLogger("reranker_nvidia.access")


def _observer(metrics: Metrics) -> Callable[[str, str, int, float], None]:
    def observe(method: str, path: str, status: int, seconds: float) -> None:
        contract = contract_of(path)
        metrics.observe_request(contract, str(status), seconds)
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
                    "surface": contract,
                    "request_id": request_id.get(),
                },
            )

    return observe


def create_http_app(
    *,
    ranker: Ranker,
    metrics: Metrics,
    possible_joiner: Callable[[], AbstractContextManager[None]],
    is_ready: Callable[[], bool],
    in_flight: RequestsInFlight,
    describe: Callable[[], dict[str, Any]],
    endpoint_states: Callable[[], list[dict[str, Any]]],
    models: Sequence[str],
    contract_truncate: str,
    max_body_bytes: int,
    body_timeout_s: float,
    auth_token: str | None,
) -> FastAPI:
    """``contract_truncate``: what the Weaviate and Cohere contracts send NIM for over-long
    passages (the rerankers they come from cut them); the NIM routes keep NIM's semantics."""
    app = FastAPI(
        title="reranker-nvidia",
        version=__version__,
        description="Rerank vector, keyword and hybrid search hits with NVIDIA NIM.",
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    install_error_handlers(app)
    app.include_router(weaviate_router(ranker, describe, is_ready, contract_truncate))
    app.include_router(nim_router(ranker, models))
    app.include_router(cohere_router(ranker, contract_truncate))
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

    app.add_middleware(
        HttpGuard,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        in_flight=in_flight,
        auth_token=auth_token,
        possible_joiner=possible_joiner,
        observe=_observer(metrics),
    )
    return app
