"""Running an ASGI 3 app (FastAPI, Starlette) for a request the server has read in full.

For the routes that are not on the hot path (docs and their assets, /metrics, /openapi.json):
the answer is collected whole and written by the server in one piece.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Scope

from reranker_nvidia.wire.exchange import Request, Response

log = logging.getLogger("reranker_nvidia.http")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
# The server frames the answer itself (see exchange.Response).
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


async def run_asgi(app: ASGIApp, request: Request) -> Response:
    """The answer of ``app`` to ``request``. An exception the app raises before its answer is
    complete propagates (the server answers 500); one raised after it is logged."""
    raw_path = request.raw_path
    scope: Scope = {
        "type": "http",
        "asgi": _ASGI,
        "http_version": request.http_version,
        "method": request.method,
        "scheme": request.scheme,
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": request.client,
        "server": request.server,
        "state": {},
    }
    body_given = False
    over = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await over.wait()
        return {"type": "http.disconnect"}

    head_only = request.method == "HEAD"
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    complete = False

    async def send(message: Message) -> None:
        nonlocal status, complete
        kind = message["type"]
        if kind == "http.response.start":
            if status is not None:
                raise RuntimeError("ASGI app started its answer twice")
            status = int(message["status"])
            for name, value in message.get("headers", ()):
                name = bytes(name).lower()
                # A HEAD answer's length is that of the GET's body, which the app knows.
                if name not in _FRAMING_HEADERS or (head_only and name == b"content-length"):
                    headers.append((name, bytes(value)))
        elif kind == "http.response.body":
            if status is None:
                raise RuntimeError("ASGI app sent a body before starting its answer")
            if complete:
                raise RuntimeError("ASGI app sent a body after its answer was complete")
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(bytes(chunk))
            if not message.get("more_body", False):
                complete = True
                over.set()

    try:
        await app(scope, receive, send)
    except Exception:
        if not complete:
            raise
        log.exception("%s %s failed after its answer", request.method, request.path[:200])
    finally:
        over.set()
    if status is None or not complete:
        raise RuntimeError(f"ASGI app returned without completing its answer to {request.path}")
    return Response(status, headers, chunks[0] if len(chunks) == 1 else b"".join(chunks))
