"""The HTTP/1.1 server: a listening socket, its connections (server_connection.py), and a
graceful stop.

Plain connections are accepted by the event loop's own server. TLS connections are accepted
here, counted and timed from accept, and their handshake done by the loop as part of the time
allowed for the first request's headers, so that silent TCP connections to the TLS port count
against the connection cap and are closed after the header timeout like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Mapping

from reranker_nvidia.wire.exchange import App
from reranker_nvidia.wire.limits import LINGER_S, ServerLimits
from reranker_nvidia.wire.listener import bind_tcp_listener
from reranker_nvidia.wire.server_connection import ServerConnection, ServerState

log = logging.getLogger("reranker_nvidia.http")

BACKLOG = 2048
# After a stop's grace: the time the app is given to answer the requests it cut short.
STOP_ANSWER_S = 2.0
# Errors of accept() about one connection only (it went away before it was accepted): the
# next is accepted at once. After any other (out of files, of memory...) accepting pauses.
_ACCEPT_TRANSIENT = {errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM}
_ACCEPT_RETRY_S = 0.5


class HttpServer:
    """``app`` served on ``host``:``port`` (port 0 picks a free port) once ``start`` returns."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        limits: ServerLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._state = ServerState(app, limits, tls=ssl_context is not None)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._socket: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._accepting: asyncio.Task[None] | None = None

    @property
    def limits(self) -> ServerLimits:
        return self._state.limits

    @property
    def listener(self) -> socket.socket:
        if self._socket is None:
            raise RuntimeError("server not started")
        return self._socket

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    # Counters for metrics.

    @property
    def open_connections(self) -> int:
        return len(self._state.open)

    @property
    def waiting_connections(self) -> int:
        """Open connections a newcomer past the cap may displace: handshaking, waiting for a
        request's headers, idle between requests, or finishing."""
        return len(self._state.waiting)

    @property
    def buffered_body_bytes(self) -> int:
        """Bytes of request bodies in memory now (declared lengths reserved in full)."""
        return self._state.buffered_body_bytes

    @property
    def refusals(self) -> Mapping[int, int]:
        """Requests refused by the engine since start, by status."""
        return dict(self._state.refusals)

    @property
    def header_timeouts(self) -> int:
        """Connections closed for not completing a request's headers (or TLS handshake) in
        time."""
        return self._state.header_timeouts

    @property
    def displaced(self) -> int:
        """Waiting connections closed to make room for a new one past the cap."""
        return self._state.displaced

    @property
    def turned_away(self) -> int:
        """New connections closed at once: the cap was reached and none was waiting."""
        return self._state.turned_away

    async def start(self) -> None:
        sock = bind_tcp_listener(self._host, self._port)
        try:
            loop = asyncio.get_running_loop()
            if self._ssl is None:
                self._server = await loop.create_server(
                    functools.partial(ServerConnection, self._state), sock=sock, backlog=BACKLOG
                )
            else:
                sock.listen(BACKLOG)
                sock.setblocking(False)
                self._accepting = loop.create_task(self._accept_tls(sock, self._ssl))
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    async def _accept_tls(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as error:
                if error.errno not in _ACCEPT_TRANSIENT:
                    log.warning("accepting a connection failed (%s); retrying shortly", error)
                    await asyncio.sleep(_ACCEPT_RETRY_S)
                continue
            ServerConnection(self._state).start_tls(sock, context)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting and close idle connections now; let requests under way finish
        within ``grace_s`` (their answers close their connections); then cancel those still
        running, each answered 503 through the app (the refusal says the server stopped and
        to retry elsewhere), and close every connection."""
        state = self._state
        if state.stopping:
            return
        state.stopping = True
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._socket is not None:
            self._socket.close()
        for connection in list(state.open):
            connection.stop_if_idle()
        await _until(lambda: not state.busy(), grace_s)
        for connection in list(state.open):
            connection.stop_now()
        await _until(lambda: not state.busy(), STOP_ANSWER_S)
        # Answers written are let out (a refused client is given LINGER_S to read its own).
        await _until(lambda: not state.open, LINGER_S)
        for connection in list(state.open):
            connection.drop()
        # Let the handlers cut short by the drops see their cancellation through.
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Wait until ``condition()`` holds, or ``timeout_s`` has passed (polling: stops only)."""
    for _ in range(max(1, round(timeout_s / 0.01))):
        if condition():
            return
        await asyncio.sleep(0.01)
