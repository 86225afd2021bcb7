"""What the HTTP surfaces share: per-request options from headers, and error plumbing.

Each surface renders errors in its own shape: its router uses ``shaped_errors(render)`` as
its route class; validation failures and
``RerankError`` from the core then reach ``render`` instead of FastAPI's defaults, so a
Weaviate client gets ``{"error": ...}`` and a NIM client ``{"detail": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from reranker_nvidia.core import RankOptions, usable_key
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument

log = logging.getLogger("reranker_nvidia.http")

ErrorRenderer = Callable[[RerankError], Response]

API_KEY_HEADER = "X-Nvidia-Api-Key"
BASE_URL_HEADER = "X-Nvidia-Baseurl"
TIMEOUT_HEADER = "X-Request-Timeout"


def header_options(request: Request) -> RankOptions:
    """The per-request key and base URL a caller sent as headers.

    The key is ``Authorization: Bearer <key>`` (how NIM, Cohere and Weaviate's built-in
    module send it), else ``X-Nvidia-Api-Key`` (how Weaviate names it on its own API).
    """
    return RankOptions(
        api_key=usable_key(_bearer_token(request.headers.get("authorization")))
        or usable_key(request.headers.get(API_KEY_HEADER)),
        base_url=request.headers.get(BASE_URL_HEADER),
    )


def request_budget(request: Request) -> float | None:
    """Seconds the caller will wait (``X-Request-Timeout``), if it said; shrinks the budget."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise invalid_argument(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def validation_message(errors: Sequence[Any]) -> str:
    """``field.path: what is wrong`` for each problem pydantic found in a request body."""
    problems = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        if error.get("type") == "json_invalid":
            problems.append("body: not valid JSON")
        elif not loc and error.get("type") in ("model_attributes_type", "dict_type"):
            problems.append("body: must be a JSON object sent with Content-Type: application/json")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request body"


def shaped_errors(render: ErrorRenderer) -> type[APIRoute]:
    class ShapedErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return render(invalid_argument(validation_message(exc.errors())))
                except HTTPException as exc:
                    # FastAPI's own refusals, e.g. a body that is not UTF-8.
                    return render(
                        RerankError(
                            ErrorCode.INVALID_ARGUMENT,
                            f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail),
                            http_status=exc.status_code,
                        )
                    )
                except RerankError as exc:
                    return render(exc)
                except Exception:
                    log.exception("unhandled error on %s %s", request.method, request.url.path)
                    return render(RerankError(ErrorCode.INTERNAL, "internal error"))

            return handle

    return ShapedErrorRoute


def retry_headers(error: RerankError) -> dict[str, str]:
    if error.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, round(error.retry_after_s)))}
