"""What the HTTP contracts read from a request's headers: the key and base URL, and how long the
caller will wait; and the shared config of their request models (for the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from reranker_nvidia.core import RankOptions, usable_key
from reranker_nvidia.errors import invalid_argument
from reranker_nvidia.wire import Request

API_KEY_HEADER = "X-Nvidia-Api-Key"
BASE_URL_HEADER = "X-Nvidia-Baseurl"
TIMEOUT_HEADER = "X-Request-Timeout"
_AUTHORIZATION = b"authorization"
_API_KEY = API_KEY_HEADER.lower().encode()
_BASE_URL = BASE_URL_HEADER.lower().encode()
_TIMEOUT = TIMEOUT_HEADER.lower().encode()


def with_example(example: dict[str, Any]) -> ConfigDict:
    """A request model's config: unknown fields ignored (clients add their own), and the
    example ``/docs`` shows."""
    return ConfigDict(extra="ignore", json_schema_extra={"examples": [example]})


def header_options(
    request: Request, *, model: str | None = None, truncate: str | None = None
) -> RankOptions:
    """The per-request key and base URL a caller sent as headers, with the body's ``model``
    and ``truncate``.

    The key is ``Authorization: Bearer <key>`` (how NIM, Cohere and Weaviate's built-in
    module send it), else ``X-Nvidia-Api-Key`` (how Weaviate names it on its own API).
    """
    key = None
    base_url = None
    authorization = None
    for name, value in request.headers:
        if name == _AUTHORIZATION and authorization is None:
            authorization = value
        elif name == _API_KEY and key is None:
            key = value
        elif name == _BASE_URL and base_url is None:
            base_url = value
    return RankOptions(
        model=model,
        base_url=_text(base_url),
        truncate=truncate,
        api_key=usable_key(_bearer_token(authorization)) or usable_key(_text(key)),
    )


def request_budget(request: Request) -> float | None:
    """Seconds the caller will wait (``X-Request-Timeout``), if it said; shrinks the budget."""
    value = request.header(_TIMEOUT)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise invalid_argument(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _bearer_token(authorization: bytes | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
