"""The HTTP/1.1 client: keep-alive connections (``client.py``) pooled per origin, at most
``max_connections`` of them, direct or through a proxy (``proxy.py``).

One call holds one connection from its request's first byte to its answer's last. A call
waits for a slot when ``max_connections`` calls are in flight; it takes the most recently used
idle connection to its origin, or opens one (closing the least recently used idle connection
of another origin when the cap is reached).

A reused connection may have been closed by the server just as the request went out. When it
fails before any byte of the answer arrived, the request is sent once more on a fresh
connection. Only then: the client treats requests as idempotent for that purpose (a server
that closed the connection has not answered, and the requests this client makes have no side
effects worth guarding), and a failure after the answer began is never repeated.

The caller bounds a whole call (``asyncio.wait_for`` around ``request``); cancelled at any
point, a call gives its slot back and closes a connection it left half used.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from reranker_nvidia.wire.client import ClientConnection, ClientResponse, Headers, Target
from reranker_nvidia.wire.errors import (
    ClientClosed,
    ConnectError,
    ConnectTimeout,
    InvalidHeader,
    ProxyError,
    ReadError,
    RemoteProtocolError,
    TransportError,
)
from reranker_nvidia.wire.proxy import Proxy, ProxyTable

__all__ = ["AddressOf", "ClientResponse", "HttpClient", "Target"]

AddressOf = Callable[[str, int], Awaitable[str]]

# Requests whose answer is complete with its headers.
_NO_BODY_ANSWER = frozenset({b"HEAD"})
# Requests that send no Content-Length when they have no body.
_NO_BODY_REQUEST = frozenset({b"GET", b"HEAD"})
_MAX_PLANS = 1024


class _Plan:
    """How requests with one method to one URL are made: the start of the head (request line,
    Host and Proxy-Authorization), the proxy, and the pool keys of trusted and of guarded
    connections."""

    __slots__ = ("guarded_key", "key", "no_body", "prefix", "proxy", "target", "tunnel")

    def __init__(self, target: Target, method: bytes, proxy: Proxy | None) -> None:
        self.target = target
        self.proxy = proxy
        self.no_body = method in _NO_BODY_ANSWER
        self.tunnel = proxy.connect_head(target) if proxy is not None and target.tls else None
        absolute_form = proxy is not None and not target.tls
        request_target = target.absolute if absolute_form else target.path
        prefix = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, request_target, target.host_header)
        if absolute_form and proxy is not None and proxy.authorization is not None:
            prefix += b"Proxy-Authorization: %s\r\n" % proxy.authorization
        self.prefix = prefix
        origin = (target.scheme, target.host, target.port, proxy)
        self.key = (*origin, False)
        self.guarded_key = (*origin, True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Marks an abandoned task's outcome as seen, so nothing is logged for it."""
    if not task.cancelled():
        task.exception()


class HttpClient:
    """HTTP/1.1 calls over pooled keep-alive connections; one per process.

    ``ssl_context`` verifies every TLS peer (it is set to offer ALPN ``http/1.1`` only).
    ``proxies`` maps a scheme to a proxy URL as ``urllib.request.getproxies()`` does (keys
    ``http``, ``https``, ``all``, ``no``); None reads the environment once, here.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext,
        keepalive_expiry_s: float = 5.0,
        max_header_bytes: int = 64 * 1024,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_expiry_s = keepalive_expiry_s
        self._max_header_bytes = max_header_bytes
        self._proxies = ProxyTable(proxies)
        self._plans: dict[tuple[str | Target, bytes], _Plan] = {}
        # Slots for calls in flight: free ones, and the calls waiting for one, in order.
        self._free_slots = max_connections
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Idle connections by pool key, least recently used first; every connection open or
        # opening; the tasks opening connections.
        self._idle: dict[Any, list[ClientConnection]] = {}
        self._open: set[ClientConnection] = set()
        self._opening: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open or being opened, idle ones included."""
        return len(self._open)

    def uses_proxy(self, url: str | Target) -> bool:
        """Whether calls to ``url`` go through a proxy (which then resolves and connects, so
        ``address_of`` is not asked: a caller guarding a host checks it itself first)."""
        plan = self._plans.get((url, b"POST")) or self._plan(url, b"POST")
        return plan.proxy is not None

    async def request(
        self,
        url: str | Target,
        *,
        method: bytes = b"POST",
        headers: Headers,
        body: bytes,
        max_body_bytes: int,
        address_of: AddressOf | None = None,
    ) -> ClientResponse:
        """One request and its whole answer, whatever its status.

        ``headers``: every header but Host, Content-Length, Connection and
        Proxy-Authorization, which the client adds. ``address_of(host, port)``, given for a
        URL a caller chose, says which address each new connection dials (the certificate is
        still checked for the host's name); its own exceptions pass through, an ``OSError``
        becomes a ``ConnectError``. Such connections are pooled apart from the others.
        """
        if self._closed:
            raise ClientClosed("the HTTP client is closed")
        plan = self._plans.get((url, method)) or self._plan(url, method)
        data = _request_bytes(plan.prefix, headers, body, method)
        key = plan.key if address_of is None else plan.guarded_key
        if self._free_slots > 0:
            self._free_slots -= 1
        else:
            await self._wait_for_slot()
        try:
            if self._closed:
                raise ClientClosed("the HTTP client was closed while the call waited")
            connection = self._take_idle(key)
            reused = connection is not None
            while True:
                if connection is None:
                    connection = await self._connect(plan, key, address_of)
                waiter = connection.send(data, max_body_bytes, plan.no_body)
                try:
                    response = await waiter
                except (ReadError, RemoteProtocolError):
                    self._drop(connection)
                    if reused and not connection.answer_started:
                        # The server closed the idle connection as the request went out.
                        reused = False
                        connection = None
                        continue
                    raise
                except BaseException:
                    self._drop(connection)
                    if waiter.done() and not waiter.cancelled():
                        waiter.exception()
                    raise
                break
            if connection.reusable:
                self._keep(connection)
            else:
                self._retire(connection)
            return response
        finally:
            self._release_slot()

    async def aclose(self) -> None:
        """Closes every connection; calls in flight fail with ``ClientClosed``."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        opening = list(self._opening)
        for task in opening:
            task.cancel()
        connections = list(self._open)
        self._open.clear()
        self._idle.clear()
        closed = ClientClosed("the HTTP client was closed during the call")
        for connection in connections:
            connection.abort(closed)
        pending: list[asyncio.Future[Any]] = [*opening]
        pending += [c.closed for c in connections if c.transport is not None]
        if pending:
            await asyncio.wait(pending, timeout=5)

    # Plans.

    def _plan(self, url: str | Target, method: bytes) -> _Plan:
        target = url if isinstance(url, Target) else Target.of(url)
        plan = _Plan(target, method, self._proxies.proxy_for(target) if self._proxies else None)
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # caller-chosen URLs must not grow this without bound
        self._plans[url, method] = plan
        return plan

    # Slots.

    async def _wait_for_slot(self) -> None:
        loop = self._loop or self._bind_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed over as the wait was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next call
                return
        self._free_slots += 1

    # Connections.

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _take_idle(self, key: Any) -> ClientConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        loop = self._loop or self._bind_loop()
        expired = loop.time() - self._keepalive_expiry_s
        while idle:
            connection = idle.pop()
            if connection.idle_since > expired and connection.usable:
                return connection
            self._retire(connection)
        return None

    def _keep(self, connection: ClientConnection) -> None:
        loop = self._loop or self._bind_loop()
        connection.idle_since = loop.time()
        idle = self._idle.get(connection.key)
        if idle is None:
            self._idle[connection.key] = [connection]
        else:
            idle.append(connection)
        if self._sweep is None:
            self._sweep = loop.call_at(
                connection.idle_since + self._keepalive_expiry_s, self._sweep_idle
            )

    def _retire(self, connection: ClientConnection) -> None:
        connection.close()
        self._open.discard(connection)

    def _drop(self, connection: ClientConnection) -> None:
        connection.abort()
        self._open.discard(connection)

    def _lost(self, connection: ClientConnection) -> None:
        """A connection is gone (the peer closed it, or it was closed)."""
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]

    def _sweep_idle(self) -> None:
        """Closes the connections idle for longer than the keep-alive expiry."""
        self._sweep = None
        loop = self._loop or self._bind_loop()
        expired = loop.time() - self._keepalive_expiry_s
        next_due: float | None = None
        for key, idle in list(self._idle.items()):
            while idle and idle[0].idle_since <= expired:
                self._retire(idle.pop(0))
            if not idle:
                del self._idle[key]
            elif next_due is None or idle[0].idle_since < next_due:
                next_due = idle[0].idle_since
        if next_due is not None:
            self._sweep = loop.call_at(next_due + self._keepalive_expiry_s, self._sweep_idle)

    def _make_room(self) -> None:
        """At the cap, closes the least recently used idle connection (of another origin:
        this call would have taken one of its own)."""
        if len(self._open) < self._max_connections:
            return
        oldest: ClientConnection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.key].remove(oldest)
            self._retire(oldest)

    async def _connect(
        self, plan: _Plan, key: Any, address_of: AddressOf | None
    ) -> ClientConnection:
        """A new connection for ``plan``, connected (TLS and tunnel included) within the
        connect timeout."""
        loop = self._loop or self._bind_loop()
        self._make_room()
        connection = ClientConnection(
            loop, max_header_bytes=self._max_header_bytes, key=key, on_lost=self._lost
        )
        self._open.add(connection)
        # A task of its own, so that the timeout can stop it without touching the caller's
        # own cancellation (asyncio.wait_for on Python 3.11 may swallow one).
        opening = loop.create_task(self._open_connection(connection, plan, address_of))
        self._opening.add(opening)
        opening.add_done_callback(self._opening.discard)
        try:
            done, _ = await asyncio.wait((opening,), timeout=self._connect_timeout_s)
        except BaseException:
            self._abandon(opening, connection)
            raise
        if not done:
            self._abandon(opening, connection)
            raise ConnectTimeout(
                f"connecting to {plan.target.host_header.decode()} took longer than "
                f"{self._connect_timeout_s:.3g} s"
            )
        if opening.cancelled():  # by aclose(): the caller itself was not cancelled
            self._drop(connection)
            raise ClientClosed("the HTTP client was closed while the call connected")
        try:
            opening.result()
        except BaseException:
            self._drop(connection)
            raise
        return connection

    def _abandon(self, opening: asyncio.Task[None], connection: ClientConnection) -> None:
        opening.cancel()
        opening.add_done_callback(_retrieve)
        self._drop(connection)

    async def _open_connection(
        self, connection: ClientConnection, plan: _Plan, address_of: AddressOf | None
    ) -> None:
        loop = self._loop or self._bind_loop()
        target, proxy = plan.target, plan.proxy
        where = target.host_header.decode()
        try:
            if proxy is None:
                host = target.host
                if address_of is not None:
                    try:
                        host = await address_of(target.host, target.port)
                    except OSError as exc:
                        raise ConnectError(f"could not resolve {target.host} ({exc})") from exc
                try:
                    await loop.create_connection(
                        lambda: connection,
                        host,
                        target.port,
                        ssl=self._ssl_context if target.tls else None,
                        server_hostname=target.host if target.tls else None,
                    )
                except OSError as exc:
                    raise ConnectError(f"could not connect to {where} ({exc})") from exc
            else:
                await self._through_proxy(connection, plan, proxy)
            _check_protocol(connection, where)
        except BaseException:
            connection.abort()
            raise

    async def _through_proxy(self, connection: ClientConnection, plan: _Plan, proxy: Proxy) -> None:
        loop = self._loop or self._bind_loop()
        target = plan.target
        try:
            await loop.create_connection(
                lambda: connection,
                proxy.host,
                proxy.port,
                ssl=self._ssl_context if proxy.tls else None,
                server_hostname=proxy.host if proxy.tls else None,
            )
        except OSError as exc:
            raise ProxyError(f"could not connect to the proxy {proxy.where} ({exc})") from exc
        if plan.tunnel is None:
            return  # the proxy is asked for http:// URLs in absolute form
        where = target.authority.decode()
        try:
            answer = await connection.send(plan.tunnel, 0, True)
        except TransportError as exc:
            raise ProxyError(f"the proxy {proxy.where} did not open a tunnel ({exc})") from exc
        if not 200 <= answer.status < 300:
            raise ProxyError(
                f"the proxy {proxy.where} refused a tunnel to {where}: it answered {answer.status}"
            )
        transport = connection.transport
        assert transport is not None
        try:
            tls = await loop.start_tls(
                transport, connection, self._ssl_context, server_hostname=target.host
            )
        except OSError as exc:
            raise ConnectError(f"could not connect to {where} through a tunnel ({exc})") from exc
        except TypeError as exc:
            # Python 3.10's own loop cannot start TLS on a TLS connection (3.11's and uvloop
            # can): a TLS proxy tunnels https:// URLs only there.
            raise ProxyError(
                f"TLS to {where} inside the TLS connection to the proxy {proxy.where} needs "
                "Python 3.11 or uvloop"
            ) from exc
        connection.restart(cast(asyncio.Transport, tls))


def _check_protocol(connection: ClientConnection, where: str) -> None:
    """A TLS peer must have agreed to HTTP/1.1 (or to nothing in particular)."""
    transport = connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        chosen = ssl_object.selected_alpn_protocol()
        if chosen not in (None, "http/1.1"):
            raise ConnectError(f"{where} chose {chosen} over TLS, not HTTP/1.1")


def _request_bytes(prefix: bytes, headers: Headers, body: bytes, method: bytes) -> bytes:
    """The whole request: head (the caller's headers after the plan's prefix) and body."""
    count = len(headers)
    block = b"\r\n".join([b": ".join(header) for header in headers])
    if count and (block.count(b"\n") != count - 1 or block.count(b"\r") != count - 1):
        raise InvalidHeader("a header name or value contains a line break")
    if body or method not in _NO_BODY_REQUEST:
        length = b"Content-Length: %d\r\n\r\n" % len(body)
    else:
        length = b"\r\n"
    return b"".join((prefix, block, b"\r\n" if count else b"", length, body))
