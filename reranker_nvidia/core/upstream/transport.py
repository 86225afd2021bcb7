"""The connection pools under the NIM client: httpcore's public connection API over a network
backend that can send each connection to a checked address.

A pooled connection is asked whether its peer hung up before it is used again; through
anyio's stream that question costs a dictionary of attribute lookups, so the streams here
answer it with one ``poll`` on a socket looked up once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

AddressOf = Callable[[str, int], Awaitable[str]]
# How long an idle connection is kept (httpx's default).
KEEPALIVE_EXPIRY_S = 5.0


def _peer_closed_or_sent(sock: socket.socket | None) -> bool:
    """True when the socket has something to read or is closed: on an idle keep-alive
    connection either means it cannot take another request."""
    if sock is None or sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _peer_closed_or_sent(self._socket)
        return self._inner.get_extra_info(info)


class SocketBackend(httpcore.AsyncNetworkBackend):
    """TCP connections whose address ``address_of(host, port)`` chooses (default: the host)."""

    def __init__(self, address_of: AddressOf | None = None) -> None:
        self._address_of = address_of
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = host if self._address_of is None else await self._address_of(host, port)
        stream = await self._inner.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _Stream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True)
class Destination:
    """Where a call goes, parsed once per endpoint: httpcore's URL and the Host header."""

    url: httpcore.URL
    host_header: bytes
    host: str

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, endpoint: str) -> Destination:
        parsed = httpx.URL(endpoint)  # the same parsing (and IDNA encoding) httpx applies
        default_port = {"https": 443, "http": 80}.get(parsed.scheme)
        port = parsed.port
        name = b"[%s]" % parsed.raw_host if b":" in parsed.raw_host else parsed.raw_host
        host_header = name if port in (None, default_port) else b"%s:%d" % (name, port)
        return cls(
            httpcore.URL(
                scheme=parsed.raw_scheme, host=parsed.raw_host, port=port, target=parsed.raw_path
            ),
            host_header,
            parsed.host,
        )


class ConnectionPool:
    """Keep-alive connections to any number of origins, at most ``max_connections`` open,
    handed out most recently used first, one call at a time each.

    httpcore's own pool re-examines every pooled connection (and counts the idle ones for
    each) whenever a request is placed or finished; with tens of warm connections that is
    most of a call's client-side cost. Here a call looks at the connections it takes and
    nothing else: an idle one is checked for expiry or a peer hang-up as it is taken.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext,
        backend: SocketBackend,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        self._ssl_context = ssl_context
        self._backend = backend
        self._keepalive_expiry_s = keepalive_expiry_s
        self._slots = asyncio.Semaphore(max_connections)
        # By origin (scheme, host, port): httpcore's Origin compares but does not hash.
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTPConnection]] = {}
        self._open: set[httpcore.AsyncHTTPConnection] = set()

    @contextlib.asynccontextmanager
    async def connection(self, url: httpcore.URL) -> AsyncIterator[httpcore.AsyncHTTPConnection]:
        """A connection to ``url``'s origin, ready for one request; kept for the next call
        if it ends idle (its answer read and closed), closed otherwise."""
        origin = url.origin
        key = (origin.scheme, origin.host, origin.port)
        async with self._slots:
            connection = await self._take_idle(key) or self._new(origin)
            try:
                yield connection
            finally:
                if connection.is_idle() and not connection.is_closed():
                    self._idle.setdefault(key, []).append(connection)
                else:
                    self._open.discard(connection)
                    await connection.aclose()

    async def _take_idle(
        self, key: tuple[bytes, bytes, int]
    ) -> httpcore.AsyncHTTPConnection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                return connection
            self._open.discard(connection)
            await connection.aclose()
        return None

    def _new(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        connection = httpcore.AsyncHTTPConnection(
            origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry_s,
            http2=True,
            network_backend=self._backend,
        )
        self._open.add(connection)
        return connection

    async def aclose(self) -> None:
        connections, self._open = self._open, set()
        self._idle.clear()
        for connection in connections:
            await connection.aclose()


class ConnectionPools:
    """Pooled, bounded connections to NIM endpoints: one pool for the endpoints the operator
    trusts, one whose every connection passes the address check (endpoints a caller chose),
    and one per proxy the environment names (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``;
    ``NO_PROXY`` bypasses them). HTTP/2 where the endpoint offers it over TLS."""

    def __init__(
        self, *, max_connections: int, ssl_context: ssl.SSLContext, address_of: AddressOf
    ) -> None:
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self.trusted = ConnectionPool(
            max_connections=max_connections, ssl_context=ssl_context, backend=SocketBackend()
        )
        self.guarded = ConnectionPool(
            max_connections=max_connections,
            ssl_context=ssl_context,
            backend=SocketBackend(address_of),
        )
        self._proxy_urls = urllib.request.getproxies()
        self._proxies: dict[str, httpcore.AsyncHTTPProxy] = {}
        # Asked once per destination: the environment is read at start-up, as httpx does.
        self._proxy_by_host = functools.lru_cache(maxsize=256)(self._proxy_for)

    def proxy_for(self, destination: Destination) -> httpcore.AsyncHTTPProxy | None:
        return self._proxy_by_host(destination.url.scheme.decode(), destination.host)

    def _proxy_for(self, scheme: str, host: str) -> httpcore.AsyncHTTPProxy | None:
        """The proxy pool a call to ``destination`` goes through, if the environment names
        one for its scheme and does not bypass its host."""
        proxy = self._proxy_urls.get(scheme) or self._proxy_urls.get("all")
        if not proxy or urllib.request.proxy_bypass(host):
            return None
        pool = self._proxies.get(proxy)
        if pool is None:
            parsed = httpx.URL(proxy if "://" in proxy else f"http://{proxy}")
            auth = (parsed.username, parsed.password) if parsed.username else None
            pool = httpcore.AsyncHTTPProxy(
                proxy_url=httpcore.URL(
                    scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=b"/"
                ),
                proxy_auth=auth,
                ssl_context=self._ssl_context,
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                http2=True,
            )
            self._proxies[proxy] = pool
        return pool

    async def aclose(self) -> None:
        await self.trusted.aclose()
        await self.guarded.aclose()
        for proxy in self._proxies.values():
            await proxy.aclose()
