"""The one error type the core raises (and the client raises for a failed call), and how
each kind of failure is classified.

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


class RerankError(Exception):
    """A failure a caller can act on: a code and a message. Each surface maps the code to
    its own status (gRPC, or HTTP in the contract's shape).

    ``upstream_status`` is set when NIM answered with an error status, so that surfaces which
    mirror NIM can answer with the same status; ``retry_after_s`` says when to try again.
    ``rate_limited`` marks a refusal by the NIM budget (``RERANKER_UPSTREAM_RPM/TPM``): the
    caller is over a rate, not the sidecar over its capacity.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited
        self.code = code
        self.message = message
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"RerankError({self.code.value}, {self.message!r})"


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
