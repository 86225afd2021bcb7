"""What the HTTP server hands an app and takes back: a request, fully read, and its response.

The engine calls ``app.handle(request)`` for every request, including those it refuses itself
(``request.refusal`` set, body empty), so that the app shapes every error body in its contract's
format and logs every request once. The engine writes the response, adding ``content-length``
(and ``connection: close`` when it closes the connection); the app never sets framing headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Refusal:
    """Why the engine refused a request before the app could see it complete.

    ``status``: 400 malformed HTTP/1.1 (bad framing, invalid characters, an unsupported
    transfer coding or a protocol upgrade with a body), 408 body not received in time, 413 body
    too large, 414 URL too long, 431 headers (or trailers) too large, 503 bodies in memory at
    their bound or server stopping (both with ``retry_after_s``), 505 an HTTP version other than
    1.0 and 1.1. The connection is closed after every refusal's answer.
    """

    status: int
    message: str
    """Names the limit and its setting, e.g. "headers: larger than 32768 bytes
    (RERANKER_MAX_HEADER_BYTES)"."""
    retry_after_s: float | None = None


@dataclass(slots=True)
class Request:
    """One request as received. Strings are decoded as latin-1 from the bytes sent."""

    method: str
    """"GET", "POST", ... ("" when refused before the request line was complete)."""
    path: str
    """The target's path as sent, without the query, not percent-decoded (the app normalises)."""
    raw_path: bytes
    query: bytes
    """Without the "?"."""
    headers: list[tuple[bytes, bytes]]
    """Names lower-cased, values as sent (the parser drops the whitespace before a value, not
    after it), in the order received. Trailers of a chunked body are not among them."""
    body: bytes
    http_version: str
    """"1.1" or "1.0"."""
    scheme: str
    """"http" or "https"."""
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    refusal: Refusal | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), if it was sent."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    """Names lower-case. ``content-length``, ``transfer-encoding`` and ``connection`` are the
    engine's: given here they are dropped (but a HEAD answer's ``content-length`` is kept, as
    the length the GET would have had)."""
    body: bytes = b""


class App(Protocol):
    async def handle(self, request: Request, /) -> Response: ...
