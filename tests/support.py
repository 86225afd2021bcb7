"""Real servers on loopback for the tests, hosted on an event loop in a background thread.

Running servers off the test's own thread lets blocking clients (the sync gRPC client, the
CLI) and async clients (in the test's loop) talk to them alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from reranker_nvidia.emulator import EmulatorState, create_emulator_app
from reranker_nvidia.server.asgi import AsgiServer
from reranker_nvidia.server.sidecar import SidecarServer
from reranker_nvidia.settings import Settings

T = TypeVar("T")

# The one helper for running the console script, shared with the benchmark and the soak.
from bench.processes import SCRIPT, SERVE, clean_environment, running  # noqa: E402
from bench.processes import SIDECAR_READY as SERVING  # noqa: E402

__all__ = ["SCRIPT", "SERVE", "SERVING", "clean_environment", "running"]
SERVER_KEY = "nvapi-server-key-0123456789"
REQUEST_KEY = "nvapi-request-key-9876543210"
# What replicas sharing a store in the tests name and authenticate its entries with.
STORE_SECRET = "store-secret-shared-by-the-test-replicas"


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._closing: list[concurrent.futures.Future[None]] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close_later(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` without waiting for it; ``finish_closing`` waits for them all."""
        self._closing.append(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def finish_closing(self, timeout_s: float = 60) -> None:
        for closing in self._closing:
            closing.result(timeout_s)
        self._closing.clear()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Emulator:
    state: EmulatorState
    server: AsgiServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@dataclass
class Sidecar:
    server: SidecarServer

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"


class CaptureServer:
    """A TCP server on loopback that records every connection and the bytes sent on it.

    It answers every request with 200 and an empty ranking list, or, with ``hang_up`` set,
    closes the connection without a word; tests count what arrives.
    """

    def __init__(self) -> None:
        self.hang_up = False
        self.connections = 0
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            data = await asyncio.wait_for(reader.read(65536), 2)
            self.received.append(data)
            if self.hang_up:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b'Content-Length: 16\r\nConnection: close\r\n\r\n{"rankings": []}'
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def start_emulator(background: BackgroundLoop) -> Emulator:
    state = EmulatorState()
    server = AsgiServer(create_emulator_app(state), "127.0.0.1", 0)
    background.run(server.start())
    return Emulator(state, server)


def sidecar_settings(upstream_url: str, **overrides: Any) -> Settings:
    """Settings for a sidecar on ephemeral loopback ports; nothing read from the environment
    can change them, since every field a test relies on is passed explicitly."""
    values: dict[str, Any] = {
        "api_key": SERVER_KEY,
        "base_url": upstream_url,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "log_level": "WARNING",
        # Error-mapping tests see each upstream failure as it is; retry tests turn this up.
        "max_retries": 0,
        # Each test sees its own upstream calls; cache tests turn the cache on.
        "cache_size": 0,
    }
    values.update(overrides)
    if "cache_url" in values:
        values.setdefault("cache_secret", STORE_SECRET)
        # The default 25 ms is for a store beside the replicas; a loaded test machine can take
        # longer to answer, and a store that times out is skipped for a while.
        values.setdefault("cache_timeout_ms", 2000)
    return Settings(**values)


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Returns once ``condition()`` holds, checking every 10 ms; fails after ``timeout_s``."""
    for _ in range(max(1, int(timeout_s / 0.01))):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout_s} s")
