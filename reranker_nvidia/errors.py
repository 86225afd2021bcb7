"""The one error type the core raises, and how each kind of failure is classified.

Surfaces translate a ``RerankError`` into their own shape (gRPC status, ``{"error": ...}``,
``{"detail": ...}``); they never see a stack trace or an upstream exception.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Failure kinds, named after the gRPC status each maps to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


_DEFAULT_HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.FAILED_PRECONDITION: 402,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 502,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}


class RerankError(Exception):
    """A failure a caller can act on: a code, a message, and the HTTP status to answer with.

    ``upstream_status`` is set when NIM answered with an error status, so that surfaces which
    mirror NIM (the NIM-compatible routes) can answer with the same status.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        http_status: int | None = None,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else _DEFAULT_HTTP_STATUS[code]
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"RerankError({self.code.value}, {self.message!r}, http_status={self.http_status})"


def invalid_argument(message: str) -> RerankError:
    return RerankError(ErrorCode.INVALID_ARGUMENT, message)


# Ranking is a pure function of its input, so these are safe to send again.
RETRYABLE_UPSTREAM_STATUSES = frozenset({429, 500, 502, 503, 504})


def code_for_upstream_status(status: int) -> ErrorCode:
    """Classify an upstream HTTP error status."""
    if status in (401, 403):
        return ErrorCode.PERMISSION_DENIED
    if status == 402:
        return ErrorCode.FAILED_PRECONDITION
    if status == 429:
        return ErrorCode.RESOURCE_EXHAUSTED
    if status == 408:
        return ErrorCode.DEADLINE_EXCEEDED
    if 400 <= status < 500:
        return ErrorCode.INVALID_ARGUMENT
    return ErrorCode.UNAVAILABLE
