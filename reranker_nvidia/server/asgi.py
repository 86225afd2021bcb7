"""Running the NIM emulator (an ASGI app) with uvicorn inside an event loop of its own.

The emulator stands in for NIM in tests, demos and benchmarks; it is served by uvicorn, an HTTP
implementation independent of the sidecar's own (``reranker_nvidia.wire``), so the sidecar's
client is tested against a server it does not share code with.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from reranker_nvidia.wire import bind_tcp_listener


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
    ) -> None:
        self._config = uvicorn.Config(
            app,
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
        sock = bind_tcp_listener(self._host, self._port)
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
