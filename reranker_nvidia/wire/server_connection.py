"""One connection of the HTTP/1.1 server: bytes in, parsed in C by httptools, one request at a
time out to the app, its answer written back before the next request is read.

How bytes reach the parser, so that every bound holds before anything is buffered:

- While a request's head is incomplete, the parser is fed at most what is left of
  ``max_header_bytes``, and a feed stops right after the first blank line. httptools joins a
  header value across feeds by concatenation, so what it holds must be bounded by what it is fed;
  and a request without a body then ends exactly where a feed ends.
- A body of declared length is fed exactly up to its end, so every request begins at the start of
  a feed and its head is counted from its first byte. A chunked body is fed as it comes (a run of
  chunk framing or trailers without data is bounded like a head); a request that follows one in
  the same read would begin mid-feed, uncounted, so the connection is instead closed after the
  chunked request's answer (a pipelining client retries what was not answered, as it must).
- Bytes that arrive while the app handles a request, or while an answer waits to be written, are
  held and reading pauses: one request at a time, answered in order, memory bounded. (While
  reading is paused, a pipelining client's disconnect is seen only once its answer is written.)
- Request bodies in memory across all connections are bounded (``max_buffered_body_bytes``),
  counted as their bytes arrive: a body that would not fit is refused (503) when declared, and
  one that stops fitting as it arrives, at once.
- After a refusal nothing more is parsed: the answer is written, the connection half-closed, and
  what the client still sends dropped (up to ``LINGER_DISCARD_BYTES``) until it closes, or for
  ``LINGER_S`` at most.

An ``Upgrade`` (h2c, websocket) or ``CONNECT`` is not supported: such a request without a body is
answered as a plain HTTP/1.1 request and its connection closed (what follows would be the other
protocol's); one with a body is refused 400. A client that closes its side (EOF) is taken to have
left: the connection closes and a request being handled is cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from collections import Counter, OrderedDict
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
    parse_url,
)

from reranker_nvidia.wire.exchange import App, Refusal, Request, Response
from reranker_nvidia.wire.limits import (
    LINGER_DISCARD_BYTES,
    LINGER_S,
    SMALL_PIECE_BYTES,
    STAGING_BYTES,
    ServerLimits,
    body_charge,
)

log = logging.getLogger("reranker_nvidia.http")

# Where a connection is. The "waiting" ones (a new connection past the cap may displace them)
# are those in _HANDSHAKE, _HEAD, _IDLE, _DRAINING and _CLOSING.
_HANDSHAKE = 0  # TLS handshake under way
_HEAD = 1  # waiting for, or reading, a request's line and headers
_IDLE = 2  # kept alive between requests, no byte of the next one yet
_BODY = 3  # reading a request's body
_HANDLING = 4  # the app is handling a request; bytes that arrive are held
_DRAINING = 5  # an answer is written but waits in the transport's buffer for the client
_CLOSING = 6  # closed or closing: nothing more is read or answered

_END_OF_HEAD = b"\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SMALL_BODY = 64 * 1024  # written with its head in one write; larger ones follow it
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_INTERNAL_ERROR = Response(
    500, [(b"content-type", b"text/plain; charset=utf-8")], b"internal server error\n"
)
STOPPED_MESSAGE = "the server stopped before this request finished; retry on another instance"


class _Stop(Exception):
    """Raised in a parser callback to stop the parser (which cannot resume after it)."""


class ServerState:
    """What the connections of one server share: the app, the limits, the connections open
    and waiting, the bytes of request bodies in memory, and counters for metrics."""

    def __init__(self, app: App, limits: ServerLimits, *, tls: bool) -> None:
        self.app = app
        self.limits = limits
        self.scheme = "https" if tls else "http"
        self.open: set[ServerConnection] = set()
        # Connections a newcomer past the cap may displace, longest-waiting first.
        self.waiting: OrderedDict[ServerConnection, None] = OrderedDict()
        self.buffered_body_bytes = 0
        self.refusals: Counter[int] = Counter()
        self.header_timeouts = 0
        self.displaced = 0
        self.turned_away = 0
        self.stopping = False

    def admit(self, connection: ServerConnection) -> bool:
        """Count a new connection in, displacing the longest-waiting one at the cap."""
        if len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                self.turned_away += 1
                return False
            self.displaced += 1
            next(iter(self.waiting)).drop()
        self.open.add(connection)
        return True

    def fits(self, size: int) -> bool:
        return self.buffered_body_bytes + size <= self.limits.max_buffered_body_bytes

    def reserve(self, size: int) -> bool:
        if not self.fits(size):
            return False
        self.buffered_body_bytes += size
        return True

    def busy(self) -> bool:
        """Whether a connection has a request under way (being received, handled, or its
        answer waiting to be taken)."""
        return any(connection.busy for connection in self.open)


class ServerConnection(asyncio.Protocol):
    """The server side of one connection; also the protocol its parser calls back."""

    __slots__ = (
        "_body",
        "_body_left",
        "_body_size",
        "_chunked",
        "_client",
        "_closed",
        "_content_length",
        "_cut",
        "_deadline",
        "_discard_left",
        "_ending",
        "_expect",
        "_framing_run",
        "_got_data",
        "_handler",
        "_handshake",
        "_head_len",
        "_head_tail",
        "_headers",
        "_headers_done",
        "_held",
        "_keep_alive",
        "_limits",
        "_linger",
        "_loop",
        "_lost",
        "_method",
        "_parser",
        "_phase",
        "_reading_paused",
        "_ready",
        "_refusal",
        "_reserved",
        "_server",
        "_staging",
        "_state",
        "_te",
        "_te_count",
        "_timer",
        "_timer_at",
        "_transport",
        "_url_len",
        "_url_parts",
        "_version",
        "_waiting",
        "_write_paused",
    )

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = HttpRequestParser(self)
        self._phase = _HEAD
        self._waiting = False
        self._closed = False
        self._lost = False
        self._ending = False
        self._linger = False
        self._discard_left = 0
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._handshake: asyncio.Task[None] | None = None
        self._handler: asyncio.Task[None] | None = None
        self._held: list[bytes] = []
        # Small pieces of the body being read; emptied whenever a body ends or is dropped.
        self._staging = bytearray()
        self._reading_paused = False
        self._write_paused = False
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None
        self._ready: Request | None = None
        self._refusal: Refusal | None = None
        self._cut = False
        self._reserved = 0
        self._head_len = 0
        self._head_tail = b""
        self._keep_alive = True
        self._version = "1.1"
        self._method = ""
        self._reset_request()

    def _reset_request(self) -> None:
        self._url_parts: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._content_length: bytes | None = None
        self._te = b""
        self._te_count = 0
        self._expect: bytes | None = None
        self._chunked = False
        self._body_left = 0
        # One piece as it came, or the pieces held so far (see SMALL_PIECE_BYTES).
        self._body: bytes | list[bytes] = b""
        self._body_size = 0
        self._got_data = False
        self._framing_run = 0

    # -- Connection lifecycle -------------------------------------------------------------

    def start_tls(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        """Take a TCP connection accepted on the TLS port: counted, and its header timeout
        running, from now; the handshake is part of the time allowed for the first request."""
        if not self._state.admit(self):
            self._closed = True
            sock.close()
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._client = _address(sock.getpeername())
            self._server = _address(sock.getsockname())
        except OSError:  # the client is already gone
            self._forget()
            sock.close()
            return
        self._phase = _HANDSHAKE
        self._wait()
        self._set_deadline(self._limits.header_timeout_s)
        self._handshake = self._loop.create_task(self._shake_hands(sock, context))
        self._handshake.add_done_callback(functools.partial(self._handshake_over, sock))

    async def _shake_hands(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        # connect_accepted_socket rather than start_tls on a plain transport: uvloop starts
        # reading a transport as soon as connection_made returns, so a ClientHello sent with
        # the connection would reach the plain protocol before start_tls could take over.
        try:
            await self._loop.connect_accepted_socket(
                lambda: self,
                sock,
                ssl=context,
                ssl_handshake_timeout=self._limits.header_timeout_s,
            )
        except Exception as error:
            log.debug("TLS handshake with %s failed: %r", self._client, error)

    def _handshake_over(self, sock: socket.socket, _: asyncio.Task[None]) -> None:
        # A done callback, so that it runs even when the task is cancelled before it starts.
        if self._transport is None:  # connection_made never came: nothing else cleans up
            self._forget()
            sock.close()  # a no-op if the transport closed it already

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A transport, though uvloop's TLS one does not derive from asyncio.Transport.
        self._transport = transport = cast(asyncio.Transport, transport)
        if self._handshake is not None:  # TLS: counted at accept, and now ready for requests
            self._handshake = None
            if self._closed:
                transport.abort()
            else:
                self._phase = _HEAD
            return
        if not self._state.admit(self):
            self._closed = True
            self._phase = _CLOSING
            transport.abort()
            return
        self._client = _address(transport.get_extra_info("peername"))
        self._server = _address(transport.get_extra_info("sockname"))
        self._wait()
        self._set_deadline(self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        handler = self._handler
        if handler is not None and not handler.done():
            handler.cancel()  # the caller left: its request's work stops
        self._forget()
        self._held = []
        self._body = b""
        self._staging.clear()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: it has left, so the transport closes

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._phase == _DRAINING:
            self._next()

    def drop(self) -> None:
        """Close at once, without an answer (displaced, timed out, or the server stopping)."""
        self._forget()
        if self._handshake is not None:
            self._handshake.cancel()
        elif self._transport is not None:
            self._transport.abort()

    def _forget(self) -> None:
        """Count the connection out (once): it holds no slot, no wait, no body bytes."""
        if self._closed:
            return
        self._closed = True
        self._phase = _CLOSING
        state = self._state
        if self._waiting:
            self._waiting = False
            del state.waiting[self]
        self._release()
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        state.open.discard(self)

    def _wait(self) -> None:
        if not self._waiting and not self._closed:
            self._waiting = True
            self._state.waiting[self] = None

    def _unwait(self) -> None:
        if self._waiting:
            self._waiting = False
            del self._state.waiting[self]

    def _release(self) -> None:
        if self._reserved:
            self._state.buffered_body_bytes -= self._reserved
            self._reserved = 0

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    # -- Graceful stop ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        phase = self._phase
        return phase in (_BODY, _HANDLING, _DRAINING) or (phase == _HEAD and self._head_len > 0)

    def stop_if_idle(self) -> None:
        """The server is stopping: a connection with no request under way closes now."""
        phase = self._phase
        if phase == _HANDSHAKE or (phase == _HEAD and self._head_len == 0):
            self.drop()
        elif phase == _IDLE:
            self._close(linger=False)

    def stop_now(self) -> None:
        """The stop's grace is over: a request being handled is cancelled and answered 503
        through the app; one still being received is refused 503; the rest are dropped."""
        phase = self._phase
        if phase == _HANDLING and self._handler is not None:
            self._ending = True
            self._handler.cancel()
        elif phase == _BODY:
            self._refuse(Refusal(503, STOPPED_MESSAGE, retry_after_s=1.0))
        elif phase not in (_HANDLING, _CLOSING):
            self.drop()

    # -- Timeouts -----------------------------------------------------------------------------

    def _set_deadline(self, delay_s: float) -> None:
        # One timer per connection, re-armed lazily: most deadlines are moved on before they
        # pass, and moving one later costs nothing until the earlier timer fires.
        deadline = self._loop.time() + delay_s
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if deadline - self._loop.time() > 0.001:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
            return
        self._deadline = None
        phase = self._phase
        if phase == _BODY:
            limits = self._limits
            self._refuse(
                Refusal(
                    408,
                    f"body: not received within {limits.body_timeout_s:g} s "
                    f"({limits.setting('body_timeout_s')})",
                )
            )
        elif phase == _IDLE:
            self._close(linger=False)
        else:
            if phase in (_HEAD, _HANDSHAKE):
                self._state.header_timeouts += 1
            self.drop()

    # -- Reading requests ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase in (_HEAD, _BODY):
            self._consume(data)
        elif phase == _IDLE:
            self._phase = _HEAD
            self._set_deadline(self._limits.header_timeout_s)
            self._consume(data)
        elif phase in (_HANDLING, _DRAINING):
            self._held.append(data)
            self._pause_reading()
        elif phase == _CLOSING:  # lingering after a refusal: what the client still sends is
            self._discard_left -= len(data)  # dropped, up to a bound
            if self._discard_left < 0:
                self._pause_reading()

    def _consume(self, data: bytes) -> None:
        """Feed ``data`` to the parser up to the end of the first request it completes; hold
        the rest for after that request's answer."""
        end = len(data)
        pos = 0
        view: memoryview | None = None
        parser = self._parser
        limits = self._limits
        while pos < end:
            phase = self._phase
            if phase == _HEAD:
                stop = self._end_of_head(data, pos, end)
            elif phase == _BODY:
                stop = end if self._chunked else min(end, pos + self._body_left)
            else:
                break
            if pos == 0 and stop == end:
                piece: bytes | memoryview = data
            else:
                if view is None:
                    view = memoryview(data)
                piece = view[pos:stop]
            try:
                parser.feed_data(piece)
            except HttpParserUpgrade:
                pass  # the request asking to upgrade is complete; its connection will close
            except HttpParserError as error:
                if self._parser_failed(error):
                    break
                return
            fed = stop - pos
            start, pos = pos, stop
            if phase == _HEAD:
                if self._phase == _HEAD:
                    self._head_len += fed
                    self._head_tail = (self._head_tail + data[max(start, stop - 3) : stop])[-3:]
                    if self._head_len >= limits.max_header_bytes:
                        self._refuse_head()
                        return
            elif not self._chunked:
                self._body_left -= fed
            elif self._got_data:
                self._got_data = False
                self._framing_run = 0
            else:
                self._framing_run += fed
                if self._framing_run > limits.max_header_bytes and self._phase == _BODY:
                    self._refuse(
                        Refusal(
                            431,
                            f"body: chunk framing or trailers of more than "
                            f"{limits.max_header_bytes} bytes without data "
                            f"({limits.setting('max_header_bytes')})",
                        )
                    )
                    return
        request = self._ready
        if request is not None:
            if pos < end and not self._cut:
                self._held.append(data[pos:])
                self._pause_reading()
            self._dispatch(request)

    def _end_of_head(self, data: bytes, pos: int, end: int) -> int:
        """Where to stop feeding a head: past its blank line, or at what the limit leaves."""
        stop = min(end, pos + self._limits.max_header_bytes - self._head_len)
        tail = self._head_tail
        if tail:  # the blank line may straddle the previous read and this one
            found = (tail + data[pos : pos + 3]).find(_END_OF_HEAD)
            if found >= 0:
                return min(stop, pos + found + 4 - len(tail))
        found = data.find(_END_OF_HEAD, pos, stop)
        return stop if found < 0 else found + 4

    def _parser_failed(self, error: HttpParserError) -> bool:
        """After the parser raised: True if a complete request is still to be answered."""
        if self._cut:  # a request began in the feed that ended a chunked one
            self._keep_alive = False
            self._linger = True
            self._pause_reading()
            return True
        refusal = self._refusal
        if refusal is None:
            if isinstance(error, HttpParserCallbackError) and not isinstance(
                error.__context__, _Stop
            ):
                log.error("HTTP parser callback failed", exc_info=error.__context__)
            refusal = Refusal(400, f"request: not valid HTTP/1.1 ({error})")
        self._refuse(refusal)
        return False

    def _refuse_head(self) -> None:
        limits = self._limits
        self._refuse(
            Refusal(
                431,
                f"headers: larger than {limits.max_header_bytes} bytes "
                f"({limits.setting('max_header_bytes')})",
            )
        )

    def _stop_parser(self, refusal: Refusal) -> None:
        self._refusal = refusal
        raise _Stop

    # httptools callbacks, in the order it makes them.

    def on_message_begin(self) -> None:
        if self._ready is not None:
            self._cut = True
            raise _Stop

    def on_url(self, url: bytes) -> None:
        self._url_parts.append(url)
        self._url_len += len(url)
        limits = self._limits
        if self._url_len > limits.max_url_bytes:
            self._stop_parser(
                Refusal(
                    414,
                    f"url: longer than {limits.max_url_bytes} bytes "
                    f"({limits.setting('max_url_bytes')})",
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer: never merged into the headers the app reads
        name = name.lower()
        self._headers.append((name, value))
        if name == b"content-length":
            self._content_length = value
        elif name == b"transfer-encoding":
            self._te = value
            self._te_count += 1
        elif name == b"expect":
            self._expect = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._head_len = 0
        self._head_tail = b""
        parser = self._parser
        limits = self._limits
        method = parser.get_method()
        self._method = _METHODS.get(method) or method.decode("latin-1")
        version = parser.get_http_version()
        self._version = version
        if version != "1.1" and version != "1.0":
            self._stop_parser(
                Refusal(505, f"request: HTTP/{version} is not supported (1.1 and 1.0 are)")
            )
        self._keep_alive = parser.should_keep_alive()
        if self._te_count:
            if version != "1.1" or self._te_count > 1 or self._te.strip().lower() != b"chunked":
                self._stop_parser(
                    Refusal(400, "transfer-encoding: only `chunked`, alone, is supported")
                )
            self._chunked = True
        length = 0
        if self._content_length is not None:
            try:
                length = int(self._content_length)
            except ValueError:
                self._stop_parser(Refusal(400, "content-length: not a number"))
        if parser.should_upgrade():
            if length or self._chunked:
                self._stop_parser(
                    Refusal(400, "upgrade: not supported, and this request carries a body")
                )
            self._keep_alive = False
        if not (length or self._chunked):
            return  # the request is complete: on_message_complete follows at once
        if length > limits.max_body_bytes:
            self._stop_parser(self._too_large())
        if length:
            # Charged as its bytes arrive (on_body), not as declared: a connection that only
            # promises a body holds none of the bound. One that could never fit is refused now.
            if not self._state.fits(body_charge(length)):
                self._stop_parser(self._over_budget())
            self._body_left = length
        expect = self._expect
        if expect is not None and version == "1.1" and expect.strip().lower() == b"100-continue":
            assert self._transport is not None
            self._transport.write(_CONTINUE)
        self._phase = _BODY
        self._unwait()
        self._set_deadline(limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        received = self._body_size
        size = received + len(body)
        if self._chunked:
            self._got_data = True
            if size > self._limits.max_body_bytes:
                self._stop_parser(self._too_large())
        # Charged before it is held, by what holding the whole body so far may cost.
        cost = body_charge(size) - body_charge(received)
        if not self._state.reserve(cost):
            self._stop_parser(self._over_budget())
        self._reserved += cost
        self._body_size = size
        held = self._body
        if type(held) is not bytes:
            self._hold(body)
        elif not held:
            self._body = body  # most bodies come in one piece: held as it came, never copied
        else:
            self._body = []
            self._hold(held)
            self._hold(body)

    def _hold(self, piece: bytes) -> None:
        pieces = cast(list[bytes], self._body)
        staging = self._staging
        if len(piece) < SMALL_PIECE_BYTES:
            staging += piece
            if len(staging) >= STAGING_BYTES:
                pieces.append(bytes(staging))
                staging.clear()
        else:
            if staging:
                pieces.append(bytes(staging))
                staging.clear()
            pieces.append(piece)

    def on_message_complete(self) -> None:
        body = self._body
        if type(body) is not bytes:
            pieces = cast(list[bytes], body)
            if self._staging:
                pieces.append(bytes(self._staging))
                self._staging.clear()
            body = b"".join(pieces)
        self._ready = self._request(body, None)
        self._body = b""
        self._phase = _HANDLING

    def _too_large(self) -> Refusal:
        limits = self._limits
        return Refusal(
            413,
            f"body: larger than {limits.max_body_bytes} bytes ({limits.setting('max_body_bytes')})",
        )

    def _over_budget(self) -> Refusal:
        limits = self._limits
        return Refusal(
            503,
            f"server busy: request bodies in memory are at their bound of "
            f"{limits.max_buffered_body_bytes} bytes "
            f"({limits.setting('max_buffered_body_bytes')}); retry shortly",
            retry_after_s=1.0,
        )

    def _request(self, body: bytes, refusal: Refusal | None) -> Request:
        parts = self._url_parts
        if self._headers_done:
            method = self._method
            version = self._version
            target = parts[0] if len(parts) == 1 else b"".join(parts)
        else:  # refused mid-head: only what is known for sure
            method = version = ""
            target = b""
            if parts:
                method = self._parser.get_method().decode("latin-1")
            if self._headers:  # the request line is complete
                version = self._parser.get_http_version()
                target = b"".join(parts)
        raw_path, query = _split_target(target)
        return Request(
            method,
            raw_path.decode("latin-1"),
            raw_path,
            query,
            self._headers,
            body,
            version or "1.1",
            self._state.scheme,
            self._client,
            self._server,
            refusal,
        )

    # -- Handling requests and answering -------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """Refuse the request under way: the app shapes the answer, then the connection
        closes. Nothing more is read from it."""
        self._state.refusals[refusal.status] += 1
        self._keep_alive = False
        self._linger = True
        self._pause_reading()
        self._held = []
        self._release()
        self._body = b""
        self._staging.clear()
        self._dispatch(self._request(b"", refusal))

    def _dispatch(self, request: Request) -> None:
        self._ready = None
        self._reset_request()
        self._phase = _HANDLING
        self._unwait()
        self._deadline = None
        self._handler = self._loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        app = self._state.app
        try:
            try:
                response = await app.handle(request)
            except asyncio.CancelledError:
                if self._lost or not self._ending:
                    raise
                # The server's stop ended this request: the app answers it 503.
                _uncancel()
                self._keep_alive = False
                self._state.refusals[503] += 1
                request.refusal = Refusal(503, STOPPED_MESSAGE, retry_after_s=1.0)
                request.body = b""
                response = await app.handle(request)
        except asyncio.CancelledError:
            if not self._lost:
                self.drop()
            raise
        except Exception:
            log.exception("answering %s %s failed", request.method, request.path[:200])
            response = _INTERNAL_ERROR
        self._answer(request, response)

    def _answer(self, request: Request, response: Response) -> None:
        if self._lost or self._closed:
            return
        self._handler = None
        self._release()
        close = not self._keep_alive or self._state.stopping or request.refusal is not None
        head_only = request.method == "HEAD"
        try:
            head, body = _encode(
                response, head_only, close, not close and request.http_version == "1.0"
            )
        except Exception:
            log.exception("the answer to %s %s cannot be sent", request.method, request.path)
            head, body = _encode(_INTERNAL_ERROR, head_only, close, False)
        transport = self._transport
        assert transport is not None
        if len(body) <= _SMALL_BODY:
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)
        if close:
            self._close(linger=self._linger)
        elif self._write_paused:
            self._phase = _DRAINING
            self._wait()
            self._set_deadline(self._limits.body_timeout_s)
        else:
            self._next()

    def _next(self) -> None:
        """After an answer: read the next request (held bytes first), or wait idle for one."""
        if self._state.stopping:
            self._close(linger=False)
            return
        self._wait()
        held = self._held
        if held:
            self._held = []
            self._phase = _HEAD
            self._set_deadline(self._limits.header_timeout_s)
            self._consume(held[0] if len(held) == 1 else b"".join(held))
            # Read on unless bytes are held again, or the connection is to close (then what
            # the client sends next is not wanted): a disconnect is then seen at once.
            if not self._held and self._keep_alive and self._phase != _CLOSING:
                self._resume_reading()
        else:
            self._phase = _IDLE
            self._set_deadline(self._limits.keep_alive_timeout_s)
            self._resume_reading()

    def _close(self, *, linger: bool) -> None:
        """Close once what is written is sent. ``linger``: the client may still be sending
        (a refused request), so half-close first and wait for the client to close (or for
        LINGER_S): closing a socket with unread bytes resets it, and the reset can destroy the
        answer before the client reads it."""
        self._phase = _CLOSING
        self._wait()
        transport = self._transport
        assert transport is not None
        if linger:
            if transport.can_write_eof():
                transport.write_eof()
                # Read on (and drop) what the client still sends, so that its closing is seen
                # at once; past a bound it is left unread until the connection is reset.
                self._discard_left = LINGER_DISCARD_BYTES
                self._resume_reading()
            else:
                transport.close()
            self._set_deadline(LINGER_S)
        else:
            transport.close()
            # A client that does not take its last answer is reset.
            self._set_deadline(self._limits.body_timeout_s)


def _encode(
    response: Response, head_only: bool, close: bool, keep_alive_10: bool
) -> tuple[bytes, bytes]:
    """The status line and headers of ``response``, and the body to write after them."""
    status = response.status
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 200 <= status <= 999:
            raise ValueError(f"status {status!r} cannot be answered")
        line = b"HTTP/1.1 %d \r\n" % status
    parts = [line, _date_line()]
    lines = 3  # status, date, blank
    length: bytes | None = None
    for name, value in response.headers:
        if name in _FRAMING_HEADERS:
            if head_only and name == b"content-length":
                length = value
            continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    body = response.body
    if status == 204 or status == 304:
        body = b""
    else:
        parts += (b"content-length: ", length or b"%d" % len(body), b"\r\n")
        lines += 1
        if head_only:
            body = b""
    if close:
        parts.append(b"connection: close\r\n")
        lines += 1
    elif keep_alive_10:
        parts.append(b"connection: keep-alive\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR or LF inside a header would split it in two (header injection).
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ValueError("a header name or value holds CR or LF")
    return head, body


_date: tuple[int, bytes] = (0, b"")


def _date_line() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, b"date: %s\r\n" % formatdate(now, usegmt=True).encode())
    return _date[1]


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """The path and query of a request target (origin or absolute form)."""
    if b"#" in target:
        target = target[: target.index(b"#")]
    if target[:1] == b"/" or not target:
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        return target, b""
    try:
        url = parse_url(target)
    except HttpParserInvalidURLError:
        return target, b""
    return url.path or b"/", url.query or b""


def _address(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _uncancel() -> None:
    """Undo the cancellation a stop asked for (Python 3.11+ counts them)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
