"""One HTTP/1.1 client connection, an asyncio ``Protocol`` whose answers httptools parses in C,
and the parsed ``Target`` of a request.

A connection carries one request at a time: ``send`` writes the request in one go and returns
a future for the answer, which the protocol's callbacks settle (the answer complete, the
peer's EOF, a lost connection, a parse error, a limit passed). No task runs per connection and
nothing is polled: a connection learns that its peer left from ``eof_received`` and
``connection_lost``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

from reranker_nvidia.wire.errors import (
    AnswerTooLarge,
    HeaderTooLarge,
    HttpClientError,
    InvalidResponse,
    InvalidURL,
    ReadError,
    RemoteProtocolError,
)

Headers = list[tuple[bytes, bytes]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# What stays as it is in a request target; anything else is percent-encoded.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f\\]")
# A Content-Length or Transfer-Encoding header frames the body; without either, the body of
# an answer runs to the end of the connection.
_FRAMING = (b"content-length", b"transfer-encoding")


def _ascii_host(host: str) -> str:
    """A host name as it goes into DNS, TLS and the Host header: IDNA 2008 (the ``idna``
    package, as httpx encodes), or the standard library's IDNA 2003 without it."""
    if host.isascii():
        return host
    try:
        import idna
    except ImportError:  # pragma: no cover - httpx brings it
        return host.encode("idna").decode("ascii")
    return str(idna.encode(host).decode("ascii"))


@dataclass(frozen=True, eq=False)
class Target:
    """Where a request goes, parsed once per URL: ``Target.of(url)`` remembers the last 256.

    ``host`` is ASCII (IDNA-encoded) without brackets: what is resolved, dialled and named in
    TLS (SNI and the certificate check). ``path`` is the request target in origin form, path
    and query percent-encoded; ``host_header`` is the Host header's value.
    """

    scheme: str
    host: str
    port: int
    path: bytes
    host_header: bytes
    tls: bool

    @property
    def authority(self) -> bytes:
        """``host:port`` with the port always there, as CONNECT names it."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return f"{name}:{self.port}".encode("ascii")

    @property
    def absolute(self) -> bytes:
        """The request target in absolute form, as a proxy is asked for it."""
        return b"%s://%s%s" % (self.scheme.encode("ascii"), self.host_header, self.path)

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, url: str) -> Target:
        """The parsed ``url``; ``InvalidURL`` says what is wrong with it."""
        if _UNSAFE_IN_URL.search(url):
            raise InvalidURL("the URL contains a space, a backslash or a control character")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidURL(f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise InvalidURL(f"the URL's scheme must be http or https, not {scheme or 'none'!r}")
        host = parts.hostname
        if not host:
            raise InvalidURL("the URL has no host")
        if ":" in host:
            try:
                host = str(ipaddress.IPv6Address(host))
            except ValueError:
                raise InvalidURL("the URL's host is not a valid IPv6 address") from None
            name = f"[{host}]"
        else:
            try:
                host = _ascii_host(host)
            except UnicodeError:
                raise InvalidURL("the URL's host is not a valid domain name") from None
            if not _HOST_NAME.fullmatch(host):
                raise InvalidURL("the URL's host is not a valid domain name")
            name = host
        default_port = _DEFAULT_PORTS[scheme]
        if port is None:
            port = default_port
        elif port == 0:
            raise InvalidURL("the URL's port must be between 1 and 65535")
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_QUERY_SAFE)
        host_header = name if port == default_port else f"{name}:{port}"
        return cls(
            scheme,
            host,
            port,
            path.encode("ascii"),
            host_header.encode("ascii"),
            scheme == "https",
        )


class ClientResponse:
    """An answer read in full: ``status``, ``headers`` (names in lower case, in the order
    sent) and ``body`` (a chunked body decoded)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status}, {len(self.body)} bytes>"


class _OutOfTurn(Exception):
    """Bytes from the peer while no request waits for an answer."""


class ClientConnection(asyncio.Protocol):
    """An HTTP/1.1 connection, one request at a time.

    ``key`` and ``idle_since`` belong to the pool; ``closed`` is done once the connection is
    gone; ``on_lost`` is called once then.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_header_bytes: int,
        key: Hashable,
        on_lost: Callable[[ClientConnection], None],
    ) -> None:
        self.key = key
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        # True once the peer sent any byte of the answer to the request in flight: before
        # that, a request on a reused connection may be sent again on a fresh one.
        self.answer_started = False
        self._loop = loop
        self._on_lost = on_lost
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[ClientResponse] | None = None
        self._dead = False
        self._keep_alive = False
        self._no_body = False
        self._interim = False
        self._headers_done = False
        self._head_budget = 0
        self._limit = 0
        self._size = 0
        self._status = 0
        self._headers: Headers = []
        self._chunks: list[bytes] = []
        self._error: HttpClientError | None = None

    # The pool's side.

    @property
    def usable(self) -> bool:
        """Open, and not told by the peer that it is leaving."""
        transport = self.transport
        return not self._dead and transport is not None and not transport.is_closing()

    @property
    def reusable(self) -> bool:
        """The last answer was read in full and both sides keep the connection open."""
        return self._keep_alive and self._waiter is None and self.usable

    def send(
        self, data: bytes, max_body_bytes: int, no_body: bool
    ) -> asyncio.Future[ClientResponse]:
        """Writes a whole request (head and body); the future settles with its answer, whose
        body may be ``max_body_bytes`` long at most. ``no_body``: the answer is complete
        with its headers (HEAD, CONNECT)."""
        waiter: asyncio.Future[ClientResponse] = self._loop.create_future()
        transport = self.transport
        if not self.usable or transport is None:
            waiter.set_exception(RemoteProtocolError("the connection closed before an answer"))
            return waiter
        self._waiter = waiter
        self._limit = max_body_bytes
        self._no_body = no_body
        self._head_budget = self._max_header_bytes
        self._headers_done = False
        self._keep_alive = False
        self._size = 0
        self._error = None
        self.answer_started = False
        transport.write(data)
        return waiter

    def restart(self, transport: asyncio.Transport | None = None) -> None:
        """A fresh parser (and transport): the connection became a tunnel, then TLS."""
        self._parser = httptools.HttpResponseParser(self)
        self._keep_alive = False
        if transport is not None:
            self.transport = transport

    def close(self) -> None:
        """Closes the connection once what was written has gone out."""
        self._dead = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self, error: HttpClientError | None = None) -> None:
        """Closes the connection at once, dropping whatever is unsent or unread; a request in
        flight fails with ``error`` (by default, with what the closed connection means)."""
        if error is not None and self._waiter is not None:
            self._fail(error)
            return
        self._dead = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    # asyncio's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without inheriting from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # An answer nobody asked for (a 408 before closing, say): never reuse this.
            self.abort()
            return
        self.answer_started = True
        if not self._headers_done:
            budget = self._head_budget
            if len(data) > budget:
                # The head must end within the bytes it may still take: the parser is fed
                # no more than that until it does.
                self._feed(data[:budget])
                if self._dead:
                    return
                if not self._headers_done:
                    self._fail(
                        HeaderTooLarge(
                            "the answer's status line and headers are over "
                            f"{self._max_header_bytes} bytes"
                        )
                    )
                    return
                data = data[budget:]
            else:
                self._head_budget = budget - len(data)
        self._feed(data)

    def eof_received(self) -> bool:
        self._dead = True
        if self._waiter is not None:
            self._end_of_answer(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        if self._waiter is not None:
            self._end_of_answer(exc)
        if not self.closed.done():
            self.closed.set_result(None)
            self._on_lost(self)

    # httptools' side.

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise _OutOfTurn
        self._headers = []
        self._chunks = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked body's trailer: nothing this client uses
        name = name.lower()
        if name == b"content-length" and not self._no_body:
            try:
                declared = int(value)
            except ValueError:
                declared = 0  # the parser refuses it
            if declared > self._limit:
                self._error = AnswerTooLarge(self._limit)
                raise self._error
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue and the like: the answer follows
            return
        self._status = status
        self._headers_done = True
        if self._no_body:
            # The parser would wait for a body that never comes: the answer ends here, and
            # the connection is not used again as it is.
            self._settle()

    def on_body(self, body: bytes) -> None:
        size = self._size + len(body)
        if size > self._limit:
            self._error = AnswerTooLarge(self._limit)
            raise self._error
        self._size = size
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._waiter is not None:
            self._keep_alive = self._parser.should_keep_alive()
            self._settle()

    # The answer's end.

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponse("the server switched protocols, which was not asked for"))
        except httptools.HttpParserError as exc:
            error = self._error
            if error is None:
                error = InvalidResponse(f"the answer is not valid HTTP/1.1 ({exc})")
                error.__cause__ = exc
            self._fail(error)

    def _settle(self) -> None:
        waiter = self._waiter
        self._waiter = None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if waiter is not None and not waiter.done():
            waiter.set_result(ClientResponse(self._status, self._headers, body))

    def _end_of_answer(self, exc: Exception | None) -> None:
        """The connection ended (EOF, or lost with ``exc``) while an answer was awaited."""
        if (
            self._headers_done
            and exc is None
            and not any(name in _FRAMING for name, _ in self._headers)
        ):
            self._keep_alive = False
            self._settle()  # the body ran to the end of the connection, as announced
            return
        if exc is not None:
            error: HttpClientError = ReadError(
                "the connection failed "
                + ("during" if self.answer_started else "before")
                + f" the answer ({exc})"
            )
            error.__cause__ = exc
        elif self.answer_started:
            error = RemoteProtocolError("the connection closed in the middle of the answer")
        else:
            error = RemoteProtocolError("the connection closed before an answer")
        self._fail(error)

    def _fail(self, error: HttpClientError) -> None:
        waiter = self._waiter
        self._waiter = None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
