"""What the HTTP contracts read from a request: the key and base URL in its headers, how long
the caller will wait, and the shared config of their request models."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ConfigDict

from reranker_nvidia.core import RankOptions, usable_key
from reranker_nvidia.errors import invalid_argument

API_KEY_HEADER = "X-Nvidia-Api-Key"
BASE_URL_HEADER = "X-Nvidia-Baseurl"
TIMEOUT_HEADER = "X-Request-Timeout"


def with_example(example: dict[str, Any]) -> ConfigDict:
    """A request model's config: unknown fields ignored (clients add their own), and the
    example ``/docs`` shows."""
    return ConfigDict(extra="ignore", json_schema_extra={"examples": [example]})


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
