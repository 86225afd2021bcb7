"""The HTTP/1.1 server engine (reranker_nvidia/wire/): framing, pipelining, every transport bound,
TLS, disconnects, graceful stop, and ASGI apps run through it. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
import trustme
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from reranker_nvidia.wire import server as server_module
from reranker_nvidia.wire import server_connection
from reranker_nvidia.wire.asgi import run_asgi
from reranker_nvidia.wire.exchange import Request, Response
from reranker_nvidia.wire.limits import ServerLimits, body_charge
from reranker_nvidia.wire.server import HttpServer

FAST = ServerLimits(header_timeout_s=5.0, keep_alive_timeout_s=5.0, body_timeout_s=5.0)


class TestApp:
    """Answers refusals in plain text; otherwise routes by path."""

    __test__ = False

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.running = 0

    async def handle(self, request: Request) -> Response:
        self.seen.append(request)
        refusal = request.refusal
        if refusal is not None:
            headers = [(b"content-type", b"text/plain")]
            if refusal.retry_after_s is not None:
                headers.append((b"retry-after", b"%d" % refusal.retry_after_s))
            return Response(refusal.status, headers, refusal.message.encode())
        if request.path == "/slow":
            self.running += 1
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            finally:
                self.running -= 1
        elif request.path == "/short":
            self.started.set()
            await asyncio.sleep(0.3)
        elif request.path == "/boom":
            raise RuntimeError("the app fails")
        elif request.path == "/big":
            return Response(200, [], b"x" * int(request.query or b"2048"))
        return Response(
            200,
            [(b"x-method", request.method.encode()), (b"x-path", request.raw_path)],
            request.body,
        )

    def paths(self) -> list[str]:
        return [request.path for request in self.seen]


@contextlib.asynccontextmanager
async def serving(
    app: Any, limits: ServerLimits = FAST, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[HttpServer]:
    server = HttpServer(app, "127.0.0.1", 0, limits=limits, ssl_context=ssl_context)
    await server.start()
    try:
        yield server
    finally:
        app_release = getattr(app, "release", None)
        if app_release is not None:
            app_release.set()
        # Clients close first: a refused connection lingers until its client has gone.
        while CLIENTS:
            CLIENTS.pop().close()
        await server.stop(0.5)


CLIENTS: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
def _no_clients_of_other_tests() -> None:
    CLIENTS.clear()


async def connect(
    server: HttpServer, ssl_context: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        server.port,
        ssl=ssl_context,
        server_hostname="localhost" if ssl_context else None,
    )
    CLIENTS.append(writer)
    return reader, writer


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[bytes, bytes], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = raw[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        headers[name] = value
    length = int(headers.get(b"content-length", b"0"))
    body = b"" if head else await asyncio.wait_for(reader.readexactly(length), 5)
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None) -> bool:
    """True once the server has closed the connection (within generous bounds); then the
    client closes its side too."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except (ConnectionError, asyncio.IncompleteReadError):
        return True
    finally:
        if writer is not None:
            writer.close()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition on the server's counters, which no event signals."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\ncontent-length: %d\r\n" % (path, len(body))
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


# -- Framing ------------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        for index in range(5):
            writer.write(post(b"/echo", b"body %d" % index))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"body %d" % index)
            assert b"connection" not in headers
            assert b"date" in headers
        assert server.open_connections == 1
        assert app.seen[0].server == ("127.0.0.1", server.port)
        writer.close()
    assert [request.client for request in app.seen] == [app.seen[0].client] * 5
    assert app.seen[0].scheme == "http"


async def test_pipelined_requests_are_answered_in_order_with_their_own_bodies() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            post(b"/one", b"first")
            + b"GET /two?q=2 HTTP/1.1\r\nHost: t\r\n\r\n"
            + post(b"/three", b"third body")
        )
        answers = [await read_response(reader) for _ in range(3)]
        assert [(status, body) for status, _, body in answers] == [
            (200, b"first"),
            (200, b""),
            (200, b"third body"),
        ]
        assert [headers[b"x-path"] for _, headers, _ in answers] == [b"/one", b"/two", b"/three"]
        writer.close()
    assert app.paths() == ["/one", "/two", "/three"]
    assert app.seen[1].query == b"q=2"
    assert app.seen[1].method == "GET"


async def test_requests_split_at_every_byte_are_read_whole() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        data = post(b"/a", b"0123456789") + post(b"/b", b"xy")
        for index in range(len(data)):
            writer.write(data[index : index + 1])
            await writer.drain()
        answers = [await read_response(reader) for _ in range(2)]
        assert [body for _, _, body in answers] == [b"0123456789", b"xy"]
        writer.close()


async def test_a_chunked_body_is_read() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"hello world")
        writer.write(post(b"/after", b"ok"))
        assert (await read_response(reader))[2] == b"ok"
        writer.close()
    # A trailer is not merged into the headers.
    assert b"x-trailer" not in dict(app.seen[0].headers)
    assert app.seen[0].header(b"transfer-encoding") == b"chunked"


async def test_a_request_sent_while_another_is_handled_waits_for_its_answer() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(app.started.wait(), 5)
        writer.write(post(b"/next", b"queued"))
        await asyncio.sleep(0.05)
        assert app.paths() == ["/slow"]
        app.release.set()
        assert (await read_response(reader))[::2] == (200, b"")
        assert (await read_response(reader))[::2] == (200, b"queued")
        writer.write(post(b"/third", b"read again"))
        assert (await read_response(reader))[::2] == (200, b"read again")
    assert app.paths() == ["/slow", "/next", "/third"]


async def test_a_request_after_a_chunked_body_in_the_same_read_closes_the_connection() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        status, headers, body = await read_response(reader)
        assert (status, body, headers[b"connection"]) == (200, b"hi", b"close")
        assert await closed(reader, writer)
    assert app.paths() == ["/chunked"]


async def test_expect_100_continue() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"data")
        assert (await read_response(reader))[::2] == (200, b"data")
        # Over the limit: refused at once, without a 100.
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: 99999999999\r\n\r\n"
        )
        status, _, body = await read_response(reader)
        assert status == 413
        assert b"RERANKER_MAX_BODY_BYTES" in body
        assert await closed(reader, writer)


async def test_http_10_keeps_alive_only_when_asked() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (200, b"keep-alive")
        writer.write(b"GET /once HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (200, b"close")
        assert await closed(reader, writer)
    assert [request.http_version for request in app.seen] == ["1.0", "1.0"]


async def test_head_answers_carry_no_body() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            b"HEAD /big?100 HTTP/1.1\r\nHost: t\r\n\r\nGET /big?7 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        status, headers, _ = await read_response(reader, head=True)
        assert (status, headers[b"content-length"]) == (200, b"100")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"x" * 7)
        writer.close()


async def test_an_upgrade_without_a_body_is_answered_as_http_11_and_closed() -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(
            b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (200, b"close")
        assert await closed(reader, writer)


async def test_answers_without_content_carry_no_length() -> None:
    class NoContent:
        async def handle(self, request: Request) -> Response:
            return Response(204, [(b"content-length", b"99")], b"ignored")

    async with serving(NoContent()) as server:
        reader, writer = await connect(server)
        writer.write(b"DELETE /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(2):
            status, headers, _ = await read_response(reader, head=True)
            assert status == 204 and b"content-length" not in headers


def test_limits_name_their_settings() -> None:
    with pytest.raises(ValueError, match="RERANKER_MAX_HEADER_BYTES must be positive"):
        ServerLimits(max_header_bytes=0)
    with pytest.raises(ValueError, match="RERANKER_MAX_BUFFERED_BODY_BYTES"):
        ServerLimits(max_body_bytes=2048, max_buffered_body_bytes=1024)
    assert ServerLimits(settings_prefix="X_").setting("body_timeout_s") == "X_BODY_TIMEOUT_S"


SECOND = b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
MALFORMED = {
    "content-length and transfer-encoding": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding and content-length": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two content-lengths": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "the same content-length twice": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "content-length list": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 4\r\n\r\nabcd",
        400,
    ),
    "signed content-length": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: +4\r\n\r\nabcd",
        400,
    ),
    "bad chunk size": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nab\r\n0\r\n\r\n",
        400,
    ),
    "chunk size overflow": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000\r\nab\r\n0\r\n\r\n",
        400,
    ),
    "chunk size with LF only": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding chunked, identity": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding identity, chunked": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding gzip": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        400,
    ),
    "transfer-encoding twice": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding in HTTP/1.0": (
        b"POST /first HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "LF-only line endings": (b"GET /first HTTP/1.1\nHost: t\n\n", 400),
    "a bare CR": (b"GET /first HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400),
    "obs-fold": (b"GET /first HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
    "a space before the colon": (b"GET /first HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    "a NUL in a value": (b"GET /first HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
    "a control character in the URL": (b"GET /fi\x01rst HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "a lower-case method": (b"get /first HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "TLS to the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "an upgrade with a body": (
        b"POST /first HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 4\r\n\r\nabcd",
        400,
    ),
    "HTTP/0.9": (b"GET /first\r\n\r\n", 505),
    "HTTP/2.0": (b"GET /first HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "HTTP/2 prior knowledge": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
}


@pytest.mark.parametrize("framing", MALFORMED, ids=list(MALFORMED))
async def test_malformed_framing_is_refused_and_nothing_after_it_is_read(framing: str) -> None:
    payload, expected = MALFORMED[framing]
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(payload + SECOND)
        status, headers, _ = await read_response(reader)
        assert (status, headers[b"connection"]) == (expected, b"close")
        assert await closed(reader, writer)
    assert len(app.seen) == 1
    refusal = app.seen[0].refusal
    assert refusal is not None and refusal.status == expected
    assert app.seen[0].body == b""
    assert server.refusals == {expected: 1}


# -- Timeouts --------------------------------------------------------------------------------


async def test_headers_not_completed_in_time_close_the_connection() -> None:
    app = TestApp()
    limits = ServerLimits(header_timeout_s=0.3)
    async with serving(app, limits) as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        assert await closed(reader, writer)
        # Nor may a fresh connection say nothing.
        reader, writer = await connect(server)
        assert await closed(reader, writer)
        assert server.header_timeouts == 2
        assert server.open_connections == 0
    assert app.seen == []


async def test_an_idle_kept_alive_connection_is_closed() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(keep_alive_timeout_s=0.3)) as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await closed(reader, writer)
        assert server.open_connections == 0


async def test_a_stalled_body_is_answered_408_through_the_app() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(body_timeout_s=0.3)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        status, headers, body = await read_response(reader)
        assert (status, headers[b"connection"]) == (408, b"close")
        assert body == b"body: not received within 0.3 s (RERANKER_BODY_TIMEOUT_S)"
        assert await closed(reader, writer)
        assert server.buffered_body_bytes == 0
    assert app.seen[0].path == "/upload" and app.seen[0].method == "POST"


async def test_a_client_that_does_not_take_its_answers_is_closed() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(body_timeout_s=0.5)) as server:
        client = socket.create_connection(("127.0.0.1", server.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"GET /big?33554432 HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: server.open_connections == 0)
        client.close()


# -- Sizes ------------------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_413_at_once() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_body_bytes=1000)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 413
        assert body == b"body: larger than 1000 bytes (RERANKER_MAX_BODY_BYTES)"
        assert await closed(reader, writer)


async def test_a_refused_connection_lingers_half_closed_until_its_client_leaves() -> None:
    """Closing a socket with unread bytes resets it, and the reset can destroy the answer:
    after a refusal the server half-closes, drops what the client still sends, and closes
    once the client does."""
    app = TestApp()
    async with serving(app, ServerLimits(max_body_bytes=1000)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        assert (await read_response(reader))[0] == 413
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert server.open_connections == 1
        writer.write(b"x" * 5000)
        await writer.drain()
        writer.close()
        await until(lambda: server.open_connections == 0)


async def test_a_chunked_body_over_the_limit_is_413_once_it_passes_it() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_body_bytes=1000)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"258\r\n" + b"a" * 600 + b"\r\n")
        writer.write(b"258\r\n" + b"a" * 600 + b"\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (413, b"body: larger than 1000 bytes (RERANKER_MAX_BODY_BYTES)")
        assert await closed(reader, writer)
        assert server.buffered_body_bytes == 0


async def test_trailers_without_end_are_bounded_like_headers() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_header_bytes=1024)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ")
        for _ in range(32):
            writer.write(b"v" * 64)
            await writer.drain()
        status, _, body = await read_response(reader)
        assert status == 431
        assert b"RERANKER_MAX_HEADER_BYTES" in body


class CountingParser(httptools.HttpRequestParser):
    """Counts the bytes the server feeds its parsers."""

    fed = 0

    def feed_data(self, data: Any) -> None:
        CountingParser.fed += len(data)
        super().feed_data(data)


def stream_until_answered(port: int, opening: bytes, filler: bytes) -> bytes:
    """Send ``opening`` then ``filler`` over and over (the client never stops sending on its
    own), reading what the server answers on another thread; returns that answer."""
    client = socket.create_connection(("127.0.0.1", port))
    answered = threading.Event()
    received = bytearray()

    def read() -> None:
        client.settimeout(10)
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                received.extend(chunk)
                if b"\r\n\r\n" in received:
                    answered.set()
        answered.set()

    reader = threading.Thread(target=read)
    reader.start()
    client.sendall(opening)
    sent = len(opening)
    with contextlib.suppress(OSError):
        client.settimeout(0.2)
        while not answered.is_set() and sent < 64 * 1024 * 1024:
            with contextlib.suppress(TimeoutError, socket.timeout):
                sent += client.send(filler)
    answered.wait(10)
    client.close()
    reader.join(10)
    return bytes(received)


@pytest.mark.parametrize(
    ("opening", "status", "setting"),
    [
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Huge: ", 431, b"RERANKER_MAX_HEADER_BYTES"),
        (b"GET /", 414, b"RERANKER_MAX_URL_BYTES"),
    ],
    ids=["header", "url"],
)
async def test_a_huge_head_is_refused_while_still_being_sent_and_never_buffered(
    monkeypatch: pytest.MonkeyPatch, opening: bytes, status: int, setting: bytes
) -> None:
    monkeypatch.setattr(server_connection, "HttpRequestParser", CountingParser)
    monkeypatch.setattr(CountingParser, "fed", 0)
    # The client never stops sending, so its connection lingers the full time before it closes.
    monkeypatch.setattr(server_connection, "LINGER_S", 0.1)
    monkeypatch.setattr(server_module, "LINGER_S", 0.1)
    app = TestApp()
    limits = ServerLimits(max_header_bytes=4096, max_url_bytes=1024)
    async with serving(app, limits) as server:
        answer = await asyncio.to_thread(stream_until_answered, server.port, opening, b"a" * 65536)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert setting in answer
    assert CountingParser.fed <= 4096
    assert app.seen[0].refusal is not None and app.seen[0].refusal.status == status


async def test_a_head_exactly_at_the_limit_is_read() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_header_bytes=200)) as server:
        head = b"GET /x HTTP/1.1\r\nHost: t\r\nX: "
        filler = b"v" * (200 - len(head) - 4)
        reader, writer = await connect(server)
        writer.write(head + filler + b"\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.write(head + filler + b"v\r\n\r\n")
        assert (await read_response(reader))[0] == 431


async def test_bodies_in_memory_are_bounded_across_connections() -> None:
    """Each body is charged what holding it may cost (``body_charge``) as its bytes arrive."""
    app = TestApp()
    held = body_charge(999)
    limits = ServerLimits(
        max_body_bytes=1000, max_buffered_body_bytes=2 * held + body_charge(1000) - held
    )
    async with serving(app, limits) as server:
        stalled = []
        for _ in range(2):
            reader, writer = await connect(server)
            writer.write(
                b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"a" * 999
            )
            stalled.append((reader, writer))
        await until(lambda: server.buffered_body_bytes == 2 * held)
        # A body that does not fit is refused as soon as it is declared ...
        reader, writer = await connect(server)
        writer.write(post(b"/small", b"tiny"))
        status, headers, body = await read_response(reader)
        assert (status, headers[b"retry-after"]) == (503, b"1")
        assert b"RERANKER_MAX_BUFFERED_BODY_BYTES" in body
        # ... and a chunked one when what arrives crosses the line.
        reader, writer = await connect(server)
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        assert (await read_response(reader))[0] == 503
        # Once one upload finishes, a new body fits.
        first_reader, first_writer = stalled[0]
        first_writer.write(b"b")
        status, _, body = await read_response(first_reader)
        assert (status, body) == (200, b"a" * 999 + b"b")
        await until(lambda: server.buffered_body_bytes == held)
        reader, writer = await connect(server)
        writer.write(post(b"/small", b"tiny"))
        assert (await read_response(reader))[::2] == (200, b"tiny")
        assert server.refusals == {503: 2}


async def test_a_body_in_tiny_chunks_is_charged_as_one_piece_of_their_sum() -> None:
    """One connection sending its body a byte per chunk holds no more of the bound than the
    same bytes sent at once: it cannot keep others' bodies out with little of its own."""
    app = TestApp()
    limits = ServerLimits(
        max_body_bytes=1000, max_buffered_body_bytes=body_charge(1000) + body_charge(10)
    )
    async with serving(app, limits) as server:
        trickle_reader, trickle = await connect(server)
        trickle.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        trickle.write(b"1\r\nx\r\n" * 600)
        await until(lambda: server.buffered_body_bytes == body_charge(600))
        reader, writer = await connect(server)
        writer.write(post(b"/small", b"0123456789"))
        assert (await read_response(reader))[::2] == (200, b"0123456789")
        trickle.write(b"0\r\n\r\n")
        assert (await read_response(trickle_reader))[::2] == (200, b"x" * 600)


async def test_a_body_in_pieces_of_every_size_comes_out_whole() -> None:
    """Small pieces gathered in staging, large ones held as they came, in any order."""
    app = TestApp()
    sizes = [1, 2, 3, 5000, *[3] * 7000, 10_000, 2, 4096, 4095, 70_000, 1]
    sent = bytearray()
    async with serving(app, ServerLimits(max_body_bytes=200_000)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index, size in enumerate(sizes):
            piece = bytes([65 + index % 26]) * size
            sent += piece
            writer.write(b"%x\r\n%s\r\n" % (size, piece))
            if size > 1000:
                await writer.drain()
                await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body == sent) == (200, True)
        assert server.buffered_body_bytes == 0


async def test_a_body_of_the_largest_size_fits_a_bound_of_its_own_charge() -> None:
    """The smallest bound allowed holds one body of the largest size, however it arrives; a
    smaller bound is a configuration error naming both settings."""
    app = TestApp()
    limits = ServerLimits(max_body_bytes=50_000, max_buffered_body_bytes=body_charge(50_000))
    async with serving(app, limits) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n")
        for _ in range(50):
            writer.write(b"z" * 1000)
            await writer.drain()
            await asyncio.sleep(0)
        status, _, body = await read_response(reader)
        assert (status, len(body)) == (200, 50_000)
    with pytest.raises(ValueError, match=r"MAX_BUFFERED_BODY_BYTES .* of RERANKER_MAX_BODY_BYTES"):
        ServerLimits(max_body_bytes=50_000, max_buffered_body_bytes=50_000)


async def test_a_body_only_declared_holds_none_of_the_bound() -> None:
    """Connections that announce large bodies and send nothing do not keep anyone else's
    body out: the bound counts bytes that arrived."""
    app = TestApp()
    limits = ServerLimits(max_body_bytes=1000, max_buffered_body_bytes=2 * body_charge(1000))
    async with serving(app, limits) as server:
        promises = []
        for _ in range(8):
            reader, writer = await connect(server)
            writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            promises.append((reader, writer))
        await until(lambda: server.open_connections == 8)
        reader, writer = await connect(server)
        writer.write(post(b"/small", b"tiny"))
        assert (await read_response(reader))[::2] == (200, b"tiny")
        assert server.buffered_body_bytes == 0


# -- Connections ------------------------------------------------------------------------


async def test_past_the_cap_a_new_connection_displaces_the_longest_waiting() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_connections=3)) as server:
        idle = [await connect(server) for _ in range(3)]
        await until(lambda: server.open_connections == 3)
        reader, writer = await connect(server)
        writer.write(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await closed(idle[0][0])
        assert server.displaced == 1
        assert server.open_connections == 3


async def test_past_the_cap_with_every_connection_busy_a_newcomer_is_closed() -> None:
    app = TestApp()
    async with serving(app, ServerLimits(max_connections=2)) as server:
        busy = [await connect(server) for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await until(lambda: app.running == 2)
        reader, writer = await connect(server)
        assert await closed(reader, writer)
        assert server.turned_away == 1
        app.release.set()
        for busy_reader, _ in busy:
            assert (await read_response(busy_reader))[0] == 200


async def test_a_disconnect_cancels_the_request_being_handled() -> None:
    app = TestApp()
    async with serving(app) as server:
        _, writer = await connect(server)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(app.started.wait(), 5)
        writer.close()
        await asyncio.wait_for(app.cancelled.wait(), 5)
        await until(lambda: server.open_connections == 0)


async def test_an_app_that_raises_is_answered_500_and_the_connection_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = TestApp()
    async with serving(app) as server:
        reader, writer = await connect(server)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (500, b"internal server error\n")
        writer.write(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
    assert "answering GET /boom failed" in caplog.text


async def test_a_header_with_a_line_break_is_never_written() -> None:
    class Injecting:
        async def handle(self, request: Request) -> Response:
            return Response(200, [(b"x-echo", b"a\r\nset-cookie: evil")], b"")

    async with serving(Injecting()) as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 500 and b"set-cookie" not in headers


async def test_stop_finishes_short_requests_answers_long_ones_503_and_closes_idle_ones() -> None:
    app = TestApp()
    server = HttpServer(app, "127.0.0.1", 0, limits=FAST)
    await server.start()
    port = server.port
    idle_reader, idle_writer = await connect(server)
    idle_writer.write(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_response(idle_reader))[0] == 200
    long_reader, long_writer = await connect(server)
    long_writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: app.running == 1)
    app.started.clear()
    short_reader, short_writer = await connect(server)
    short_writer.write(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(app.started.wait(), 5)

    stopping = asyncio.create_task(server.stop(1.0))
    assert await closed(idle_reader)
    assert not stopping.done()
    status, headers, _ = await read_response(short_reader)
    assert (status, headers[b"connection"]) == (200, b"close")
    status, headers, body = await read_response(long_reader)
    assert (status, headers[b"retry-after"], headers[b"connection"]) == (503, b"1", b"close")
    assert b"the server stopped" in body
    await asyncio.wait_for(stopping, 5)
    assert server.open_connections == 0
    assert app.cancelled.is_set()
    for writer in (idle_writer, long_writer, short_writer):
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


async def test_requests_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    app = TestApp()
    async with serving(app, FAST, server_context) as server:
        reader, writer = await connect(server, client_context)
        for index in range(3):
            writer.write(post(b"/tls", b"secret %d" % index))
            assert (await read_response(reader))[::2] == (200, b"secret %d" % index)
        writer.close()
    assert app.seen[0].scheme == "https"
    assert app.seen[0].client is not None


async def test_silent_connections_to_the_tls_port_count_and_time_out(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    app = TestApp()
    limits = ServerLimits(max_connections=3, header_timeout_s=1.0)
    async with serving(app, limits, server_context) as server:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await until(lambda: server.open_connections == 3 and server.waiting_connections == 3)
        reader, writer = await connect(server, client_context)
        writer.write(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert server.displaced == 1
        for silent_reader, silent_writer in silent:
            assert await closed(silent_reader, silent_writer)
        assert server.header_timeouts >= 2


async def test_handshakes_displaced_before_they_begin_leave_nothing_open(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    app = TestApp()
    gc.collect()  # what earlier tests left is theirs to answer for, not this server's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with serving(app, ServerLimits(max_connections=1), server_context) as server:
            # Accepted back to back: each displaces the one before, whose handshake has not
            # begun.
            silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
            await until(lambda: server.displaced == 4)
            await until(lambda: server.open_connections == 1)
            reader, writer = await connect(server, client_context)
            writer.write(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            for sock in silent:
                sock.close()
        gc.collect()
    assert [str(warning.message) for warning in caught] == []


def test_tls_under_uvloop(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """uvloop reads a new connection before a task could take it over for TLS: the
    ClientHello sent with the connection must still reach the handshake."""
    uvloop = pytest.importorskip("uvloop")
    server_context, client_context = tls

    async def exchange() -> list[int]:
        app = TestApp()
        async with serving(app, FAST, server_context) as server:
            statuses = []
            for _ in range(20):
                reader, writer = await connect(server, client_context)
                writer.write(b"GET /u HTTP/1.1\r\nHost: t\r\n\r\n")
                statuses.append((await read_response(reader))[0])
                writer.close()
            return statuses

    assert uvloop.run(exchange()) == [200] * 20


def test_plain_http_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> list[bytes]:
        app = TestApp()
        async with serving(app) as server:
            reader, writer = await connect(server)
            writer.write(post(b"/a", b"1") + post(b"/b", b"22") + b"GET /c HTTP/1.1\r\n\r\n")
            return [(await read_response(reader))[2] for _ in range(3)]

    assert uvloop.run(exchange()) == [b"1", b"22", b""]


# -- ASGI -------------------------------------------------------------------------------------


class AsgiApp:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle(self, request: Request) -> Response:
        return await run_asgi(self.app, request)


async def test_an_asgi_app_runs_through_the_engine(tmp_path: Path) -> None:
    (tmp_path / "asset.js").write_text("console.log('hi');\n")
    api = FastAPI()

    @api.post("/items/{name}")
    async def item(name: str, payload: dict[str, int]) -> dict[str, Any]:
        return {"name": name, "payload": payload}

    api.mount("/static", StaticFiles(directory=tmp_path), name="static")

    async with serving(AsgiApp(api)) as server:
        reader, writer = await connect(server)
        body = b'{"a": 1}'
        writer.write(post(b"/items/caf%C3%A9?x=1", body, b"content-type: application/json"))
        status, headers, answer = await read_response(reader)
        assert (status, headers[b"content-type"]) == (200, b"application/json")
        assert answer == '{"name":"café","payload":{"a":1}}'.encode()
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 404
        writer.write(b"GET /static/asset.js HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, answer = await read_response(reader)
        assert (status, answer) == (200, b"console.log('hi');\n")
        assert headers[b"content-type"].startswith(b"text/javascript")
        writer.write(b"HEAD /static/asset.js HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await read_response(reader, head=True)
        assert (status, headers[b"content-length"]) == (200, b"19")
        writer.write(b"GET /items/x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(reader))[0] == 405


async def test_an_asgi_app_that_raises_before_answering_is_a_500() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no answer")

    async def answer_then_fail(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        raise RuntimeError("after the answer")

    request = Request("GET", "/", b"/", b"", [], b"", "1.1", "http", None, None)
    with pytest.raises(RuntimeError, match="no answer"):
        await run_asgi(failing, request)
    answer = await run_asgi(answer_then_fail, request)
    assert (answer.status, answer.body) == (201, b"done")


async def test_an_asgi_app_sees_a_disconnect_only_after_its_body() -> None:
    messages: list[Any] = []

    async def reader_app(scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        messages.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        messages.append(await receive())

    request = Request("POST", "/", b"/", b"", [], b"payload", "1.1", "http", None, None)
    answer = await run_asgi(reader_app, request)
    assert answer.body == b"ok"
    assert messages == [
        {"type": "http.request", "body": b"payload", "more_body": False},
        {"type": "http.disconnect"},
    ]
