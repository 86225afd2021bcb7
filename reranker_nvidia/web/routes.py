"""The ranking routes: served by the front straight from the wire (no ASGI, no router walk),
and documented in FastAPI's OpenAPI document all the same.

A handler takes the request as the engine read it and the percent-decoded path, and returns
the answer's bytes. Each is also registered on the FastAPI app, through an adapter, so that
``/openapi.json`` and ``/docs`` show it with its request and response models, and so the app
alone serves it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi import Request as StarletteRequest
from fastapi import Response as StarletteResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from reranker_nvidia.wire import Request, Response

Handler = Callable[[Request, str], Awaitable[Response]]

_SCHEMAS = "#/components/schemas/{model}"
_RETRIEVAL = "/v1/retrieval/"
_RERANKING = "/reranking"


class HotRoutes:
    """``POST`` paths the front answers itself: exact ones, and NIM's per-model paths
    (``/v1/retrieval/{org}[/{model}]/reranking``)."""

    def __init__(self, exact: Mapping[str, Handler], retrieval: Handler) -> None:
        self._exact = dict(exact)
        self._retrieval = retrieval

    def match(self, method: str, path: str) -> Handler | None:
        if method != "POST":
            return None
        handler = self._exact.get(path)
        if handler is not None:
            return handler
        if path.startswith(_RETRIEVAL) and path.endswith(_RERANKING):
            middle = path[len(_RETRIEVAL) : -len(_RERANKING)]
            if middle and middle.count("/") <= 1 and all(middle.split("/")):
                return self._retrieval
        return None


def document_route(
    router: APIRouter,
    path: str,
    handler: Handler,
    *,
    request_model: type[BaseModel],
    response_model: type[BaseModel],
    summary: str,
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> None:
    """Register ``handler`` at ``path`` on the FastAPI ``router``, documented with the models."""

    async def endpoint(request: StarletteRequest) -> StarletteResponse:
        wire = Request(
            method=request.method,
            path=request.url.path,
            raw_path=request.url.path.encode(),
            query=request.url.query.encode(),
            headers=[(k.lower(), v) for k, v in request.headers.raw],
            body=await request.body(),
            http_version="1.1",
            scheme=request.url.scheme,
            client=None,
            server=None,
        )
        answer = await handler(wire, request.url.path)
        return StarletteResponse(
            answer.body,
            status_code=answer.status,
            headers={k.decode(): v.decode() for k, v in answer.headers},
        )

    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        response_model=response_model,
        summary=summary,
        responses=responses,
        openapi_extra=request_body_schema(request_model),
    )


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is ``model``."""
    reference = {"$ref": _SCHEMAS.format(model=model.__name__)}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


def document_request_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add the schemas of the ranking routes' bodies to the OpenAPI document (FastAPI lists
    only the models in its routes' signatures)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _, definitions = models_json_schema(
                [(model, "validation") for model in models], ref_template=_SCHEMAS
            )
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.get("$defs", {}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
