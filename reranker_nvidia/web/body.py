"""JSON in and out of the ranking routes without FastAPI's body machinery.

A ranking body is parsed and validated in one pass from its bytes by pydantic-core, and the
answer is encoded once by orjson: no intermediate dict, no second validation of the response.
The request and response models stay the source of the OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

ModelT = TypeVar("ModelT", bound=BaseModel)

_SCHEMAS = "#/components/schemas/{model}"
# How deep a request body may nest (pydantic-core's JSON parser stops there).
MAX_DEPTH = 200


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with ``read_body``."""
    reference = {"$ref": _SCHEMAS.format(model=model.__name__)}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    """The request's body as ``model``; a bad one raises the same ``RequestValidationError``
    FastAPI would, so every route answers it in its contract's shape."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        invalid = [problem for problem in error.errors() if problem["type"] == "json_invalid"]
        if not invalid:
            raise _as_request_error(error) from None
        if any("recursion limit" in str(problem.get("msg")) for problem in invalid):
            raise _too_deep() from None
    # pydantic-core refuses some JSON the standard parser reads (a lone surrogate escape):
    # parsed here, it reaches the check that names the field.
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "not valid JSON"}]
        ) from None
    try:
        return model.model_validate(parsed)
    except ValidationError as error:
        raise _as_request_error(error) from None


def _too_deep() -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body",), "msg": f"nested deeper than {MAX_DEPTH} levels"}]
    )


def _as_request_error(error: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [
            {"type": problem["type"], "loc": ("body", *problem["loc"]), "msg": problem["msg"]}
            for problem in error.errors(include_url=False, include_context=False)
        ]
    )


# Says an answer is in input order because NIM failed (RERANKER_FAIL_OPEN).
FALLBACK_HEADER = {"X-Reranker-Fallback": "passthrough"}


def json_response(payload: object, *, fallback: bool = False) -> Response:
    return Response(
        orjson.dumps(payload),
        media_type="application/json",
        headers=FALLBACK_HEADER if fallback else None,
    )


def document_request_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add the schemas of the bodies routes read with ``read_body`` to the OpenAPI document
    (FastAPI lists only the models in its routes' signatures)."""
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
