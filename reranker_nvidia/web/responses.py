"""Answers of the ranking routes: one orjson encode, straight to the wire."""

from __future__ import annotations

import orjson

from reranker_nvidia.wire import Response

_JSON = (b"content-type", b"application/json")
# Says an answer is in input order because NIM failed (RERANKER_FAIL_OPEN).
_FALLBACK = (b"x-reranker-fallback", b"passthrough")
FALLBACK_HEADER = "X-Reranker-Fallback"


def json_response(payload: object, *, fallback: bool = False) -> Response:
    headers = [_JSON, _FALLBACK] if fallback else [_JSON]
    return Response(200, headers, orjson.dumps(payload))
