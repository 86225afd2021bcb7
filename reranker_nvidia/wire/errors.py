"""What the HTTP client raises. Every failure of the network keeps what the system said (an
``OSError``, ``ssl.SSLError`` or ``socket.gaierror``) as its ``__cause__``, so a caller can
say in words whether DNS, the connection, TLS or the peer failed.

    HttpClientError
    ├── InvalidURL (also a ValueError)       the URL cannot be called
    ├── InvalidHeader (also a ValueError)    a header would break the request's head
    ├── ClientClosed                         the client was closed
    ├── AnswerTooLarge                       the answer is over the caller's limit
    └── TransportError                       the network or the peer failed
        ├── ConnectError                     connecting, TLS included
        │   └── ConnectTimeout               ... took longer than the connect timeout
        ├── ProxyError                       the proxy could not be reached or refused
        ├── ReadError                        the connection failed before the answer ended
        └── RemoteProtocolError              the peer closed early or broke HTTP
            └── InvalidResponse              the answer is not valid HTTP/1.x
                └── HeaderTooLarge           its status line and headers are too long
"""

from __future__ import annotations


class HttpClientError(Exception):
    """Anything the HTTP client raises on its own account."""


class InvalidURL(HttpClientError, ValueError):
    """The URL cannot be called: not http(s), no host, a bad port, an invalid name."""


class InvalidHeader(HttpClientError, ValueError):
    """A header name or value holds a line break, which would split the request's head."""


class ClientClosed(HttpClientError):
    """A call was made after ``aclose()``."""


class AnswerTooLarge(HttpClientError):
    """The answer's body is over ``max_body_bytes`` (declared, or as it streamed in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is over {limit} bytes")
        self.limit = limit


class TransportError(HttpClientError):
    """The connection, TLS, a proxy or the peer's HTTP failed; ``__cause__`` says how."""


class ConnectError(TransportError):
    """No connection: DNS, refused, unreachable, TLS handshake or certificate."""


class ConnectTimeout(ConnectError):
    """Connecting (DNS, TCP, proxy tunnel, TLS handshake) took longer than allowed."""


class ProxyError(TransportError):
    """The proxy could not be reached, or it refused to open a tunnel."""


class ReadError(TransportError):
    """The connection failed (reset, broken) while the answer was awaited or read."""


class RemoteProtocolError(TransportError):
    """The peer closed the connection before its answer was complete."""


class InvalidResponse(RemoteProtocolError):
    """The peer's answer is not valid HTTP/1.x."""


class HeaderTooLarge(InvalidResponse):
    """The answer's status line and headers are over ``max_header_bytes``."""
