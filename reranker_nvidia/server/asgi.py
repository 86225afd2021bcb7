"""Running an ASGI app with uvicorn inside an event loop the sidecar owns.

uvicorn bounds the time between requests on a kept-alive connection but not the time a client
takes to send a request's headers, nor the number of connections. The protocol here adds both:
a connection that has not sent complete headers within the header timeout is closed, and past
the connection cap a new connection displaces the one that has waited longest for headers (so
that idle or stalled connections cannot lock out health probes); with none waiting, the new
connection is closed. It extends uvicorn's httptools protocol, hence the upper bound on uvicorn
in pyproject.toml; a test checks the hooks it overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import socket
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# File descriptors kept back from the HTTP connection cap: gRPC, NIM connection pools, logs.
RESERVED_FILES = 128


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    keep_alive_timeout_s: float
    max_connections: int


def default_max_connections() -> int:
    """The connection cap that leaves ``RESERVED_FILES`` of the process's file limit free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(32, soft - RESERVED_FILES)


def raise_file_limit() -> None:
    """Lift the soft limit on open files to the hard limit, as servers do at start-up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An httptools protocol class with a header timeout and a connection cap."""
    open_connections: set[HttpToolsProtocol] = set()
    # Connections waiting for a request's headers, longest-waiting first.
    waiting: OrderedDict[GuardedProtocol, None] = OrderedDict()

    class GuardedProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(open_connections) >= limits.max_connections:
                if not waiting:
                    transport.close()
                    return
                next(iter(waiting)).drop()
            open_connections.add(self)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_arrived()
            open_connections.discard(self)
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._headers_arrived()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            serving = self.cycle is not None and not self.cycle.response_complete
            if not (self.transport.is_closing() or serving):
                self._await_headers()

        def drop(self) -> None:
            self._headers_arrived()
            if not self.transport.is_closing():
                self.transport.close()

        def _await_headers(self) -> None:
            self._headers_arrived()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self.drop)
            waiting[self] = None

        def _headers_arrived(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            waiting.pop(self, None)

    return GuardedProtocol


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone.

    uvicorn installs its own SIGTERM/SIGINT handlers and re-raises the signal after serving;
    embedded next to the gRPC server, the sidecar owns signals and stops both servers itself.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """An ASGI app served on a socket bound at ``start`` (port 0 picks a free port)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        log_level: str = "warning",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        guarded: dict[str, Any] = {}
        if limits is not None:
            guarded = {
                "http": guarded_protocol(limits),
                "timeout_keep_alive": limits.keep_alive_timeout_s,
            }
        self._config = uvicorn.Config(
            app,
            **guarded,
            log_level=log_level.lower(),
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=10,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            log_config=None,  # logging is configured once, by the process (logs.configure)
        )
        self._server = _EmbeddedServer(self._config)
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def listener(self) -> socket.socket:
        if self._socket is None:
            raise RuntimeError("server not started")
        return self._socket

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on connections accepted
        # from a socket that says it is TCP, and without it every response that goes out in
        # two writes (headers, then body) waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self._host, self._port))
        sock.set_inheritable(True)
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, give open requests ``timeout_s`` to finish, then cancel them."""
        if self._task is None:
            return
        self._config.timeout_graceful_shutdown = max(1, math.ceil(timeout_s))
        self._server.should_exit = True
        await self._task
        self._task = None
        if self._socket is not None:
            self._socket.close()
