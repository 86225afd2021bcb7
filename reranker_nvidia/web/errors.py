"""One error path for every HTTP contract: which contract a path belongs to, the HTTP status
of a failure, and the shape each contract gives it (``{"error"}`` for Weaviate, ``{"detail"}``
for NIM, ``{"message"}`` for Cohere). The front (refusals, the ranking routes) and FastAPI's
exception handlers (every other route) both answer through ``error_parts``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi import Response as StarletteResponse
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.wire import Response

JSON = (b"content-type", b"application/json")

log = logging.getLogger("reranker_nvidia.http")

Contract = Literal["weaviate", "nim", "cohere", "other"]
COHERE_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})
NIM_NO_KEY_HINT = "; on this route send the key as Authorization: Bearer <key>"

_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.FAILED_PRECONDITION: 402,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 502,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}


def contract_of(path: str) -> Contract:
    if path in COHERE_PATHS:
        return "cohere"
    if path.startswith("/v1/"):
        return "nim"
    if path == "/rerank":
        return "weaviate"
    return "other"


def http_status(error: RerankError) -> int:
    """NIM's own 4xx where NIM refused; 502 for NIM's 5xx; 429 over the NIM budget; 503 when
    the sidecar itself asks for a retry later (over its in-flight limit, or stopping); else by
    the error's code."""
    if error.upstream_status is not None:
        return error.upstream_status if 400 <= error.upstream_status < 500 else 502
    if error.rate_limited:
        return 429
    if error.retry_after_s is not None and error.code in (
        ErrorCode.RESOURCE_EXHAUSTED,
        ErrorCode.UNAVAILABLE,
    ):
        return 503
    return _STATUS[error.code]


def error_parts(
    path: str, error: RerankError, status: int | None = None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``error`` in the shape of the contract ``path`` belongs to: (status, body, headers), with
    ``status`` (default: ``http_status(error)``)."""
    contract = contract_of(path)
    if status is None:
        # The NIM-compatible routes answer with NIM's own status, a 503 from NIM included.
        status = (contract == "nim" and error.upstream_status) or http_status(error)
    body: object
    if contract == "nim":
        if error.code is ErrorCode.INVALID_ARGUMENT and status == 400:
            status = 422
        if status == 422:
            body = {"detail": [{"type": "value_error", "loc": ["body"], "msg": error.message}]}
        elif error.code is ErrorCode.UNAUTHENTICATED:
            body = {"detail": error.message + NIM_NO_KEY_HINT}
        else:
            body = {"detail": error.message}
    elif contract == "cohere":
        body = {"message": error.message}
    else:
        body = {"error": error.message}
    headers = [JSON]
    if error.retry_after_s is not None:
        headers.append((b"retry-after", b"%d" % max(1, round(error.retry_after_s))))
    return status, orjson.dumps(body), headers


def error_response(path: str, error: RerankError, status: int | None = None) -> Response:
    code, body, headers = error_parts(path, error, status)
    return Response(code, headers, body)


def _starlette(path: str, error: RerankError, status: int | None = None) -> StarletteResponse:
    code, body, headers = error_parts(path, error, status)
    return StarletteResponse(
        body, status_code=code, headers={k.decode(): v.decode() for k, v in headers}
    )


def validation_message(errors: Sequence[Any]) -> str:
    """``field.path: what is wrong`` for each problem pydantic found in a request body."""
    problems = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        if error.get("type") == "json_invalid":
            problems.append("body: not valid JSON")
        elif not loc and error.get("type") in ("model_attributes_type", "model_type", "dict_type"):
            problems.append("body: must be a JSON object")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request body"


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a route raises is answered in its contract's shape."""

    async def rerank_error(request: Request, exc: Exception) -> StarletteResponse:
        assert isinstance(exc, RerankError)
        return _starlette(request.url.path, exc)

    async def invalid_body(request: Request, exc: Exception) -> StarletteResponse:
        assert isinstance(exc, RequestValidationError)
        return _starlette(request.url.path, invalid_argument(validation_message(exc.errors())))

    async def refused(request: Request, exc: Exception) -> StarletteResponse:
        # FastAPI's and Starlette's own refusals: a body that is not UTF-8, 404, 405.
        assert isinstance(exc, HTTPException)
        message = f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)
        error = RerankError(ErrorCode.INVALID_ARGUMENT, message)
        return _starlette(request.url.path, error, exc.status_code)

    handlers: dict[type[Exception], Callable[[Request, Exception], Any]] = {
        RerankError: rerank_error,
        RequestValidationError: invalid_body,
        HTTPException: refused,
    }
    for exception, handler in handlers.items():
        app.add_exception_handler(exception, handler)


def internal_error(path: str) -> Response:
    log.exception("unhandled error on %s", path)
    return error_response(path, RerankError(ErrorCode.INTERNAL, "internal error"))
