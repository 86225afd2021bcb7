"""Optional caller authentication with a shared token (``RERANKER_AUTH_TOKEN``).

The token travels in its own header (``X-Reranker-Token``, gRPC metadata
``x-reranker-token``), not in ``Authorization``: on the NIM-compatible and Cohere routes
``Authorization: Bearer`` already carries the caller's NIM key.
"""

from __future__ import annotations

import hmac

from reranker_nvidia.messages import TOKEN_METADATA

TOKEN_HEADER = "X-Reranker-Token"
OPEN_HTTP_PATHS = frozenset({"/.well-known/live", "/.well-known/ready"})
OPEN_GRPC_SERVICE = "/grpc.health.v1.Health/"
MISSING_TOKEN_MESSAGE = (
    f"this sidecar requires its caller token in the {TOKEN_HEADER} header "
    f"(gRPC metadata {TOKEN_METADATA})"
)


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so the time taken tells nothing about the token."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
