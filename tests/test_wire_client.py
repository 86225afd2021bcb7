"""The HTTP/1.1 client of wire/ (pool.py, client.py, proxy.py) against real servers on
loopback: the NIM emulator, small raw servers for the edge cases, TLS servers with a test CA,
and a proxy that speaks absolute form and CONNECT. The tests that need no fixture run on the
default event loop and again on uvloop (production's loop)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import inspect
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import orjson
import pytest
import trustme
import uvloop

from reranker_nvidia.wire.client import Target
from reranker_nvidia.wire.errors import (
    AnswerTooLarge,
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    HeaderTooLarge,
    InvalidHeader,
    InvalidResponse,
    InvalidURL,
    ProxyError,
    RemoteProtocolError,
)
from reranker_nvidia.wire.pool import HttpClient
from tests.support import Emulator, eventually

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMIT = 1 << 20
# Bounds a call that must not hang; nothing here comes near it when all is well.
PATIENCE_S = 10


# Servers.


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body, or None once the client has gone."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(header_of(head, b"content-length") or 0)
        return head, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def header_of(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def answer(body: bytes = b"{}", *headers: bytes, status: bytes = b"200 OK") -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def until_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


class Server:
    """A TCP server on loopback (TLS with ``tls``) that runs ``handler`` on each connection
    and counts connections: in all, open now, and the most open at once."""

    def __init__(
        self, handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.host = host
        self.connections = 0
        self.open_now = 0
        self.peak = 0
        self.heads: list[bytes] = []
        self.ended = asyncio.Event()  # a connection ended
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.peak = max(self.peak, self.open_now)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            self.ended.set()


def answering(reply: bytes, *, delay_s: float = 0) -> Handler:
    """Answers every request on a connection with ``reply``."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while (request := await read_request(reader)) is not None:
            server.heads.append(request[0])
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(reply)

    return handler


def once(reply: bytes) -> Handler:
    """Answers the first request with ``reply`` and closes the connection."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        request = await read_request(reader)
        if request is not None:
            server.heads.append(request[0])
            writer.write(reply)
            await writer.drain()

    return handler


def silent() -> Handler:
    """Reads a request and never answers; the connection ends when the client closes it."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        request = await read_request(reader)
        if request is not None:
            server.heads.append(request[0])
            await until_closed(reader)

    return handler


@contextlib.asynccontextmanager
async def client(**options: Any) -> AsyncIterator[HttpClient]:
    settings: dict[str, Any] = {
        "max_connections": 4,
        "connect_timeout_s": 5.0,
        "ssl_context": client_tls(),
        "proxies": {},
    }
    settings.update(options)
    http = HttpClient(**settings)
    try:
        yield http
    finally:
        await http.aclose()


async def post(
    http: HttpClient, url: str, body: bytes = b"{}", *, limit: int = LIMIT, **options: Any
) -> Any:
    headers = [(b"Accept", b"application/json"), (b"Content-Type", b"application/json")]
    return await asyncio.wait_for(
        http.request(url, headers=headers, body=body, max_body_bytes=limit, **options),
        PATIENCE_S,
    )


def causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


async def to_loopback(host: str, port: int) -> str:
    return "127.0.0.1"


# TLS: one test CA, certificates for names that exist only here.


@functools.cache
def authority() -> trustme.CA:
    return trustme.CA()


def server_tls(name: str, seen: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority().issue_cert(name).configure_cert(context)
    if seen is not None:
        context.sni_callback = lambda _socket, server_name, _context: seen.append(server_name)
    return context


def client_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    authority().configure_trust(context)
    return context


# A proxy: absolute form for http:// URLs, CONNECT tunnels for https:// ones.


class Proxy:
    """Records the request line and Proxy-Authorization of each request it gets; connects
    every target to 127.0.0.1 (the names in these tests resolve nowhere else)."""

    def __init__(self, refuse_tunnels: bool = False) -> None:
        self.refuse_tunnels = refuse_tunnels
        self.lines: list[bytes] = []
        self.authorizations: list[bytes | None] = []

    async def __call__(self, server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while (request := await read_request(reader)) is not None:
            head, body = request
            line, _, rest = head.partition(b"\r\n")
            self.lines.append(line)
            self.authorizations.append(header_of(head, b"proxy-authorization"))
            method, target, _ = line.split(b" ")
            if method == b"CONNECT":
                await self._tunnel(target, reader, writer)
                return
            await self._forward(method, target, rest, body, writer)

    async def _tunnel(self, target: bytes, reader: asyncio.StreamReader, writer: Any) -> None:
        if self.refuse_tunnels:
            writer.write(answer(b"", status=b"407 Proxy Authentication Required"))
            return
        port = int(target.rpartition(b":")[2])
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def _forward(
        self, method: bytes, target: bytes, rest: bytes, body: bytes, writer: Any
    ) -> None:
        authority, _, path = target.removeprefix(b"http://").partition(b"/")
        port = int(authority.rpartition(b":")[2])
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        kept = [
            line
            for line in rest.split(b"\r\n")
            if not line.lower().startswith(b"proxy-authorization:")
        ]
        upstream_writer.write(b"%s /%s HTTP/1.1\r\n%s%s" % (method, path, b"\r\n".join(kept), body))
        head = await upstream_reader.readuntil(b"\r\n\r\n")
        length = int(header_of(head, b"content-length") or 0)
        writer.write(head + await upstream_reader.readexactly(length))
        upstream_writer.close()


# The loops: each test with no fixture runs on the default loop (pytest-asyncio) and on
# uvloop (test_on_uvloop, at the end). Neither may log an error of its own (an exception
# never retrieved, a callback that failed).


@pytest.fixture(autouse=True)
async def _no_loop_errors(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    if not inspect.iscoroutinefunction(request.function):
        yield  # a test that runs a loop of its own watches it itself
        return
    with watching_loop_errors():
        yield


@contextlib.contextmanager
def watching_loop_errors() -> Iterator[None]:
    """Fails if the running loop reports an error, up to the collection of the garbage the
    code under test left (where a future's exception nobody retrieved is reported). Only
    that garbage is collected: what existed before is frozen meanwhile."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    gc.freeze()
    try:
        yield
        gc.collect()
    finally:
        gc.unfreeze()
    assert not errors, errors


# Calls.


async def test_calls_the_nim_emulator(emulator: Emulator) -> None:
    request = {
        "model": "nvidia/test",
        "query": {"text": "red fox"},
        "passages": [{"text": "a red fox"}, {"text": "a blue whale"}],
    }
    async with client() as http:
        ranked = await post(http, emulator.url + "/v1/ranking", orjson.dumps(request))
        refused = await post(http, emulator.url + "/v1/ranking", b'{"model": "m"}')
    assert ranked.status == 200
    assert ranked.header(b"content-type") == b"application/json"
    assert [entry["index"] for entry in orjson.loads(ranked.body)["rankings"]] == [0, 1]
    assert refused.status == 422
    assert b"detail" in refused.body


async def test_sends_the_caller_s_head_and_reads_the_answer() -> None:
    async with (
        Server(answering(answer(b'{"ok": true}', b"X-Answer: yes"))) as server,
        client() as http,
    ):
        response = await post(http, server.url + "/v1/ranking?x=1&y=%41", b"[1, 2]")
    assert (response.status, response.body) == (200, b'{"ok": true}')
    assert response.headers == [(b"content-length", b"12"), (b"x-answer", b"yes")]
    assert server.heads == [
        b"POST /v1/ranking?x=1&y=%%41 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Accept: application/json\r\nContent-Type: application/json\r\n"
        b"Content-Length: 6\r\n\r\n" % server.port
    ]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_calls_an_ipv6_address() -> None:
    async with Server(answering(answer(b"six")), host="::1") as server, client() as http:
        response = await post(http, f"http://[::1]:{server.port}/v1")
    assert response.body == b"six"
    assert server.heads[0].startswith(b"POST /v1 HTTP/1.1\r\nHost: [::1]:%d\r\n" % server.port)


async def test_sequential_calls_share_one_connection() -> None:
    async with Server(answering(answer())) as server, client() as http:
        for _ in range(5):
            assert (await post(http, server.url)).status == 200
        assert http.open_connections == 1
    assert server.connections == 1
    assert len(server.heads) == 5


async def test_concurrent_calls_never_open_more_connections_than_allowed() -> None:
    async with (
        Server(answering(answer(), delay_s=0.02)) as server,
        client(max_connections=2) as http,
    ):
        answers = await asyncio.gather(*(post(http, server.url) for _ in range(12)))
        assert http.open_connections == 2
    assert [response.status for response in answers] == [200] * 12
    assert server.peak == 2
    assert server.connections == 2


async def test_guarded_and_trusted_calls_never_share_a_connection() -> None:
    asked: list[tuple[str, int]] = []

    async def address_of(host: str, port: int) -> str:
        asked.append((host, port))
        return "127.0.0.1"

    async with Server(answering(answer())) as server, client() as http:
        for _ in range(3):
            await post(http, server.url)
            await post(http, server.url, address_of=address_of)
    assert server.connections == 2
    assert asked == [("127.0.0.1", server.port)]


async def test_a_call_to_another_origin_at_the_cap_closes_the_oldest_idle_connection() -> None:
    async with (
        Server(answering(answer())) as first,
        Server(answering(answer())) as second,
        client(max_connections=1) as http,
    ):
        await post(http, first.url)
        await post(http, second.url)
        await asyncio.wait_for(first.ended.wait(), PATIENCE_S)
        assert http.open_connections == 1
        await post(http, second.url)
    assert (first.connections, second.connections) == (1, 1)


# Answers of every shape.


async def test_reads_a_chunked_answer() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with Server(answering(reply)) as server, client() as http:
        first = await post(http, server.url)
        second = await post(http, server.url)
    assert first.body == second.body == b"hello, world"
    assert first.headers == [(b"transfer-encoding", b"chunked")]
    assert server.connections == 1


async def test_reads_an_answer_that_runs_until_the_connection_closes() -> None:
    async with (
        Server(once(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end")) as s,
        client() as http,
    ):
        first = await post(http, s.url)
        second = await post(http, s.url)
    assert first.body == second.body == b"to the end"
    assert s.connections == 2


async def test_reads_an_answer_that_arrives_a_byte_at_a_time() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while await read_request(reader) is not None:
            for index in range(len(reply)):
                writer.write(reply[index : index + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async with Server(handler) as server, client() as http:
        assert (await post(http, server.url)).body == b"abcde"
        assert (await post(http, server.url)).body == b"abcde"
    assert server.connections == 1


async def test_skips_interim_answers() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\n"
    async with (
        Server(answering(reply + answer(b"final", b"X-Final: 1"))) as server,
        client() as http,
    ):
        response = await post(http, server.url)
        again = await post(http, server.url)
    assert (response.status, response.body, response.headers[-1]) == (
        200,
        b"final",
        (b"x-final", b"1"),
    )
    assert again.body == b"final"
    assert server.connections == 1


async def test_a_head_answer_has_no_body() -> None:
    async with (
        Server(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")) as server,
        client() as http,
    ):
        response = await asyncio.wait_for(
            http.request(server.url, method=b"HEAD", headers=[], body=b"", max_body_bytes=10),
            PATIENCE_S,
        )
    assert (response.status, response.body) == (200, b"")
    assert server.heads == [b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port]


@pytest.mark.parametrize(
    "reply",
    [
        answer(b"{}", b"Connection: close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_connection_the_server_will_close_is_not_used_again(reply: bytes) -> None:
    async with Server(answering(reply)) as server, client() as http:
        await post(http, server.url)
        await post(http, server.url)
    assert server.connections == 2


async def test_an_idle_connection_the_server_closes_is_let_go() -> None:
    async with Server(once(answer())) as server, client() as http:
        await post(http, server.url)
        await eventually(lambda: http.open_connections == 0)
        await post(http, server.url)
    assert server.connections == 2


async def test_idle_connections_expire() -> None:
    async with Server(answering(answer())) as server, client(keepalive_expiry_s=0.05) as http:
        await post(http, server.url)
        await asyncio.wait_for(server.ended.wait(), PATIENCE_S)
        assert http.open_connections == 0
        await post(http, server.url)
    assert server.connections == 2


# Limits.


async def test_refuses_a_head_over_the_limit() -> None:
    def head_of(size: int) -> bytes:
        return answer(b"{}", b"X-Filler: " + b"f" * size)

    async with Server(answering(head_of(3900))) as fits, client(max_header_bytes=4096) as http:
        assert (await post(http, fits.url)).status == 200

    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await read_request(reader)
        writer.write(head_of(1 << 20)[:-2])  # a megabyte of head that never ends
        await until_closed(reader)

    async with Server(handler) as server:
        async with client(max_header_bytes=4096) as http:
            with pytest.raises(HeaderTooLarge, match="over 4096 bytes"):
                await post(http, server.url)
            assert http.open_connections == 0
        await asyncio.wait_for(server.ended.wait(), PATIENCE_S)


async def test_refuses_a_declared_body_over_the_limit_at_once() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n")  # and no body
        await until_closed(reader)

    async with Server(handler) as server:
        async with client() as http:
            with pytest.raises(AnswerTooLarge, match="over 1000 bytes") as caught:
                await post(http, server.url, limit=1000)
        await asyncio.wait_for(server.ended.wait(), PATIENCE_S)
    assert caught.value.limit == 1000


async def test_refuses_a_streamed_body_over_the_limit() -> None:
    chunk = b"190\r\n" + b"x" * 400 + b"\r\n"
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n"
    async with Server(answering(reply)) as server, client() as http:
        assert len((await post(http, server.url, limit=1200)).body) == 1200
        with pytest.raises(AnswerTooLarge):
            await post(http, server.url, limit=1199)
        assert http.open_connections == 0
        assert len((await post(http, server.url, limit=1200)).body) == 1200
    assert server.connections == 2


async def test_refuses_an_answer_that_is_not_http() -> None:
    async with Server(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server, client() as http:
        with pytest.raises(InvalidResponse, match="not valid HTTP"):
            await post(http, server.url)
        assert http.open_connections == 0


async def test_refuses_a_header_that_would_split_the_head() -> None:
    async with client() as http:
        for bad in [(b"Authorization", b"Bearer k\r\nX-Evil: 1"), (b"X-A\n", b"v")]:
            with pytest.raises(InvalidHeader, match="line break"):
                await http.request(
                    "http://127.0.0.1:1/", headers=[bad], body=b"", max_body_bytes=10
                )
        assert http.open_connections == 0


# Connections that fail.


async def test_sends_again_once_when_a_reused_connection_was_closed_meanwhile() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        # The first connection answers once, then takes the next request and closes without
        # a word, as a server does that times an idle connection out as the request comes.
        first = server.connections == 1
        while (request := await read_request(reader)) is not None:
            server.heads.append(request[0])
            if first and len(server.heads) > 1:
                return
            writer.write(answer())

    async with Server(handler) as server, client() as http:
        await post(http, server.url)
        assert (await post(http, server.url)).status == 200
    assert server.connections == 2
    assert len(server.heads) == 3


async def test_does_not_send_again_once_the_answer_began() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: Any) -> None:
        while (request := await read_request(reader)) is not None:
            server.heads.append(request[0])
            if len(server.heads) > 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                return
            writer.write(answer())

    async with Server(handler) as server, client() as http:
        await post(http, server.url)
        with pytest.raises(RemoteProtocolError, match="middle of the answer"):
            await post(http, server.url)
    assert server.connections == 1
    assert len(server.heads) == 2


async def test_does_not_send_again_on_a_fresh_connection() -> None:
    async with Server(once(b"")) as server, client() as http:
        with pytest.raises(RemoteProtocolError, match="closed before an answer"):
            await post(http, server.url)
    assert server.connections == 1


async def test_connection_refused_keeps_its_cause() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with client() as http:
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}") as caught:
            await post(http, f"http://127.0.0.1:{port}/")
        assert http.open_connections == 0
    assert any(isinstance(cause, ConnectionRefusedError) for cause in causes(caught.value))


async def test_address_of_failures() -> None:
    class Blocked(Exception):
        pass

    async def unresolvable(host: str, port: int) -> str:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def blocked(host: str, port: int) -> str:
        raise Blocked(host)

    async with client() as http:
        with pytest.raises(ConnectError) as caught:
            await post(http, "http://nim.test/", address_of=unresolvable)
        assert isinstance(caught.value.__cause__, socket.gaierror)
        with pytest.raises(Blocked):
            await post(http, "http://nim.test/", address_of=blocked)
        assert http.open_connections == 0


async def test_connecting_is_bounded_by_the_connect_timeout() -> None:
    async def never(host: str, port: int) -> str:
        await asyncio.Event().wait()
        raise AssertionError

    async with client(connect_timeout_s=0.05) as http:
        with pytest.raises(ConnectTimeout, match=r"nim\.test"):
            await post(http, "http://nim.test/", address_of=never)
        assert http.open_connections == 0
        await expect_no_other_tasks()


# Cancellation: a call bounded by its caller leaves nothing behind.


async def expect_no_other_tasks(*allowed: asyncio.Task[Any]) -> None:
    current = asyncio.current_task()
    await eventually(lambda: asyncio.all_tasks() <= {current, *allowed})


async def test_a_cancelled_call_closes_its_connection_and_frees_its_slot() -> None:
    async with (
        Server(silent()) as server,
        Server(answering(answer())) as good,
        client(max_connections=1) as http,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                http.request(server.url, headers=[], body=b"{}", max_body_bytes=10), 0.1
            )
        await asyncio.wait_for(server.ended.wait(), PATIENCE_S)
        assert http.open_connections == 0
        assert (await post(http, good.url)).status == 200


async def test_a_call_cancelled_while_waiting_for_a_slot_leaves_the_slots_whole() -> None:
    async with (
        Server(silent()) as server,
        Server(answering(answer())) as good,
        client(max_connections=1) as http,
    ):
        holder = asyncio.ensure_future(post(http, server.url))
        await eventually(lambda: len(server.heads) == 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(http, good.url), 0.05)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert (await post(http, good.url)).status == 200
        assert (await post(http, good.url)).status == 200
    assert good.connections == 1


async def test_a_call_cancelled_as_it_is_handed_a_slot_passes_the_slot_on() -> None:
    waiting: asyncio.Future[Any] | None = None
    async with (
        Server(answering(answer(), delay_s=0.02)) as server,
        client(max_connections=1) as http,
    ):

        async def first_then_cancel_the_next() -> None:
            await http.request(server.url, headers=[], body=b"", max_body_bytes=10)
            # The slot was just handed to the waiting call, which has not run yet.
            assert waiting is not None
            waiting.cancel()

        first = asyncio.ensure_future(first_then_cancel_the_next())
        await eventually(lambda: len(server.heads) == 1)
        waiting = asyncio.ensure_future(
            http.request(server.url, headers=[], body=b"", max_body_bytes=10)
        )
        await first
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await post(http, server.url)).status == 200
    assert len(server.heads) == 2


async def test_a_call_cancelled_while_connecting_leaves_no_task_or_connection() -> None:
    started = asyncio.Event()

    async def slow(host: str, port: int) -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    async with client() as http:
        call = asyncio.ensure_future(post(http, "http://nim.test/", address_of=slow))
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert http.open_connections == 0
        await expect_no_other_tasks()


async def test_closing_the_client_ends_every_call() -> None:
    connecting = asyncio.Event()

    async def slow(host: str, port: int) -> str:
        connecting.set()
        await asyncio.Event().wait()
        raise AssertionError

    async with Server(silent()) as server:
        http = HttpClient(
            max_connections=2, connect_timeout_s=5, ssl_context=client_tls(), proxies={}
        )
        answering = asyncio.ensure_future(post(http, server.url))
        await eventually(lambda: len(server.heads) == 1)
        opening = asyncio.ensure_future(post(http, server.url, address_of=slow))
        await connecting.wait()
        waiting = asyncio.ensure_future(
            http.request(server.url, headers=[], body=b"", max_body_bytes=10)
        )
        await asyncio.sleep(0)  # it runs up to its wait for a slot
        await http.aclose()
        for call, moment in [(answering, "during"), (opening, "connected"), (waiting, "waited")]:
            with pytest.raises(ClientClosed, match=f"closed (while the call )?{moment}"):
                await call
        with pytest.raises(ClientClosed):
            await post(http, server.url)
        assert http.open_connections == 0
    await expect_no_other_tasks()


# TLS.


async def test_tls_checks_the_name_while_dialling_the_checked_address() -> None:
    names: list[str] = []
    asked: list[tuple[str, int]] = []

    async def address_of(host: str, port: int) -> str:
        asked.append((host, port))
        return "127.0.0.1"

    async with Server(answering(answer()), tls=server_tls("nim.test", names)) as server:
        url = f"https://nim.test:{server.port}/v1/ranking"
        async with client() as http:
            assert (await post(http, url, address_of=address_of)).status == 200
            assert (await post(http, url, address_of=address_of)).status == 200
    assert names == ["nim.test"]
    assert asked == [("nim.test", server.port)]
    assert server.heads[0].startswith(
        b"POST /v1/ranking HTTP/1.1\r\nHost: nim.test:%d\r\n" % server.port
    )


async def test_tls_refuses_a_certificate_for_another_name() -> None:
    async with (
        Server(answering(answer()), tls=server_tls("other.test")) as server,
        client() as http,
    ):
        with pytest.raises(ConnectError) as caught:
            await post(http, f"https://nim.test:{server.port}/", address_of=to_loopback)
        assert http.open_connections == 0
    assert any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes(caught.value))


# Proxies.


async def test_an_http_url_goes_to_the_proxy_in_absolute_form() -> None:
    proxy = Proxy()
    async with Server(answering(answer(b"via proxy"))) as target, Server(proxy) as via:
        proxies = {"http": f"http://user:p%40ss@127.0.0.1:{via.port}"}
        async with client(proxies=proxies) as http:
            assert http.uses_proxy(target.url)
            assert (await post(http, target.url + "/v1/ranking")).body == b"via proxy"
            assert (await post(http, target.url + "/v1/ranking")).body == b"via proxy"
    assert proxy.lines == [b"POST %s/v1/ranking HTTP/1.1" % target.url.encode()] * 2
    assert proxy.authorizations == [b"Basic " + base64.b64encode(b"user:p@ss")] * 2
    assert via.connections == 1
    assert target.heads[0].startswith(b"POST /v1/ranking HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_an_https_url_goes_through_a_tunnel() -> None:
    proxy = Proxy()
    names: list[str] = []
    async with (
        Server(answering(answer(b"tunnelled")), tls=server_tls("nim.test", names)) as target,
        Server(proxy) as via,
    ):
        url = f"https://nim.test:{target.port}/v1/ranking"
        async with client(proxies={"https": f"http://u:pw@127.0.0.1:{via.port}"}) as http:
            assert http.uses_proxy(url)
            assert (await post(http, url)).body == b"tunnelled"
            assert (await post(http, url)).body == b"tunnelled"
    assert proxy.lines == [b"CONNECT nim.test:%d HTTP/1.1" % target.port]
    assert proxy.authorizations == [b"Basic " + base64.b64encode(b"u:pw")]
    assert names == ["nim.test"]
    assert target.connections == 1


async def test_an_https_url_through_a_proxy_spoken_to_over_tls() -> None:
    proxy = Proxy()
    async with (
        Server(answering(answer(b"inside")), tls=server_tls("nim.test")) as target,
        Server(proxy, tls=server_tls("127.0.0.1")) as via,
    ):
        url = f"https://nim.test:{target.port}/"
        async with client(proxies={"all": f"https://127.0.0.1:{via.port}"}) as http:
            assert (await post(http, url)).body == b"inside"
            assert (await post(http, url)).body == b"inside"
    assert proxy.lines == [b"CONNECT nim.test:%d HTTP/1.1" % target.port]


async def test_a_proxy_that_refuses_the_tunnel() -> None:
    async with (
        Server(Proxy(refuse_tunnels=True)) as via,
        client(proxies={"https": f"127.0.0.1:{via.port}"}) as http,
    ):
        with pytest.raises(ProxyError, match="answered 407"):
            await post(http, "https://nim.test/")
        assert http.open_connections == 0


async def test_an_unreachable_or_unsupported_proxy() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with client(proxies={"http": f"http://127.0.0.1:{port}"}) as http:
        with pytest.raises(ProxyError, match="could not connect to the proxy") as caught:
            await post(http, "http://nim.test/")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    async with client(proxies={"all": "socks5://127.0.0.1:1080"}) as http:
        with pytest.raises(ProxyError, match="socks5 proxies are not supported"):
            await post(http, "http://nim.test/")


async def test_no_proxy_bypasses_the_proxy() -> None:
    proxy = Proxy()
    async with Server(answering(answer(b"direct"))) as target, Server(proxy) as via:
        proxies = {"http": f"http://127.0.0.1:{via.port}", "no": "localhost, .example, 127.0.0.1"}
        async with client(proxies=proxies) as http:
            assert not http.uses_proxy(target.url)
            assert not http.uses_proxy("http://api.example/")
            assert http.uses_proxy("http://example.org/")
            assert (await post(http, target.url)).body == b"direct"
    assert proxy.lines == []


async def test_proxies_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test")
    async with client(proxies=None) as http:
        assert http.uses_proxy("https://nim.test/")
        assert not http.uses_proxy("https://nim.internal.test/")
        assert not http.uses_proxy("http://nim.test/")


# URLs.


def test_targets() -> None:
    target = Target.of("https://Bücher.example/v1/ränking?q=ä|b")
    assert (target.scheme, target.host, target.port, target.tls) == (
        "https",
        "xn--bcher-kva.example",
        443,
        True,
    )
    assert target.path == b"/v1/r%C3%A4nking?q=%C3%A4%7Cb"
    assert target.host_header == b"xn--bcher-kva.example"
    assert Target.of("https://Bücher.example/v1/ränking?q=ä|b") is target

    literal = Target.of("http://[::1]:8000")
    assert (literal.host, literal.port, literal.path) == ("::1", 8000, b"/")
    assert literal.host_header == b"[::1]:8000"
    assert literal.authority == b"[::1]:8000"
    assert literal.absolute == b"http://[::1]:8000/"
    assert Target.of("http://nim.test:80/").host_header == b"nim.test"
    assert Target.of("https://user:secret@nim.test:8443/a#frag").absolute == (
        b"https://nim.test:8443/a"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://nim.test/", "scheme must be http or https, not 'ftp'"),
        ("nim.test/v1", "scheme must be http or https"),
        ("http:///v1", "has no host"),
        ("http://nim.test:99999/", "not a valid URL"),
        ("http://nim.test:0/", "port must be between 1 and 65535"),
        ("http://nim test/", "a space"),
        ("http://nim.test/\r\nX-Evil: 1", "control character"),
        ("http://[::zz]/", "not a valid URL"),
        ("http://nim$.test/", "not a valid domain name"),
    ],
)
def test_invalid_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=reason.replace("(", r"\(")):
        Target.of(url)
    assert issubclass(InvalidURL, ValueError)


# The same tests on uvloop.

ON_UVLOOP: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_sends_the_caller_s_head_and_reads_the_answer,
    test_sequential_calls_share_one_connection,
    test_concurrent_calls_never_open_more_connections_than_allowed,
    test_guarded_and_trusted_calls_never_share_a_connection,
    test_a_call_to_another_origin_at_the_cap_closes_the_oldest_idle_connection,
    test_reads_a_chunked_answer,
    test_reads_an_answer_that_runs_until_the_connection_closes,
    test_reads_an_answer_that_arrives_a_byte_at_a_time,
    test_skips_interim_answers,
    test_a_head_answer_has_no_body,
    test_an_idle_connection_the_server_closes_is_let_go,
    test_idle_connections_expire,
    test_refuses_a_head_over_the_limit,
    test_refuses_a_declared_body_over_the_limit_at_once,
    test_refuses_a_streamed_body_over_the_limit,
    test_refuses_an_answer_that_is_not_http,
    test_sends_again_once_when_a_reused_connection_was_closed_meanwhile,
    test_does_not_send_again_once_the_answer_began,
    test_does_not_send_again_on_a_fresh_connection,
    test_connection_refused_keeps_its_cause,
    test_address_of_failures,
    test_connecting_is_bounded_by_the_connect_timeout,
    test_a_cancelled_call_closes_its_connection_and_frees_its_slot,
    test_a_call_cancelled_while_waiting_for_a_slot_leaves_the_slots_whole,
    test_a_call_cancelled_as_it_is_handed_a_slot_passes_the_slot_on,
    test_a_call_cancelled_while_connecting_leaves_no_task_or_connection,
    test_closing_the_client_ends_every_call,
    test_tls_checks_the_name_while_dialling_the_checked_address,
    test_tls_refuses_a_certificate_for_another_name,
    test_an_http_url_goes_to_the_proxy_in_absolute_form,
    test_an_https_url_goes_through_a_tunnel,
    test_an_https_url_through_a_proxy_spoken_to_over_tls,
    test_a_proxy_that_refuses_the_tunnel,
    test_an_unreachable_or_unsupported_proxy,
    test_no_proxy_bypasses_the_proxy,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=lambda test: test.__name__[5:])
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def watched() -> None:
        with watching_loop_errors():
            await scenario()

    uvloop.run(watched())
