"""Guarding base URLs that callers choose, so the sidecar cannot be turned against its network.

A base URL a request names (header, gRPC metadata, collection config) is checked twice:

1. by its text: https only; no host that names this machine or a private zone (``localhost``,
   ``*.local``, ``*.internal``, ``*.localhost``) and no literal address that is not global;
2. at connect time, by every address its host resolves to: the connection goes to the
   address that was checked, so a name that resolves differently a second time (DNS
   rebinding) cannot slip through.

Base URLs the operator configured or allow-listed are trusted and skip both checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument

Resolver = Callable[[str, int], Awaitable[list[str]]]

_BLOCKED_NAME_SUFFIXES = (".local", ".internal", ".localhost", ".localdomain")
_BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})
# IPv6 forms that carry an IPv4 address: NAT64 (RFC 6052) and IPv4-compatible (deprecated).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Local-use NAT64 (RFC 8215): translates to whatever the local network routes.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# A last label of digits or hex is an IPv4 address in a form resolvers accept
# (0177.0.0.1, 0x7f.1, 2130706433), never a domain name.
_NUMERIC_LABEL = re.compile(r"(?i)(0x[0-9a-f]*|[0-9]+)")
_FORBIDDEN_URL_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")


class BlockedAddressError(Exception):
    """The host of a guarded URL resolved to an address the sidecar must not connect to."""


@functools.lru_cache(maxsize=256)
def parse_base_url(url: str) -> SplitResult:
    """The parts of a base URL, or a 400 naming the field when it is not a usable URL."""

    def malformed(reason: str) -> RerankError:
        return invalid_argument(f"base_url: {reason}")

    url = url.strip()
    if _FORBIDDEN_URL_CHARACTERS.search(url):
        raise malformed("contains a space, a backslash or a control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is what raises for a bad one
    except ValueError:
        raise malformed("not a valid URL (check the host and port)") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise malformed("must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise malformed("has no host")
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            raise malformed("the host is not a valid domain name") from None
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise malformed("not a valid URL") from None
    return parts


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_forbidden_address(address: str) -> bool:
    """True for every address that is not plainly on the public internet, IPv4 addresses
    carried inside IPv6 forms (NAT64, 6to4, Teredo, IPv4-mapped and -compatible) included."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip.is_site_local:
            return True
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (not embedded.is_global or embedded.is_multicast):
            return True
    return not ip.is_global or ip.is_multicast


def check_url_text(url: str) -> None:
    """Refuse a caller-chosen base URL by its text alone, before any lookup or connection."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "https":
        raise _refused(url, "only https base URLs may be chosen per request")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise _refused(url, "it has no host")
    if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_NAME_SUFFIXES):
        raise _refused(url, f"{host} is a local or internal name")
    try:
        literal = is_forbidden_address(host)
    except ValueError:
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            raise _refused(url, f"{host} is an address in a non-standard form") from None
        return  # a name; its addresses are checked at connect time
    if literal:
        raise _refused(url, f"{host} is not a public address")


def _refused(url: str, reason: str) -> RerankError:
    host = urlsplit(url.strip()).hostname or "?"
    return RerankError(ErrorCode.PERMISSION_DENIED, f"base URL with host {host} refused: {reason}")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def public_addresses(resolver: Resolver, host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, all of them public, or ``BlockedAddressError``."""
    try:
        addresses = await resolver(host, port)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    blocked = [address for address in addresses if is_forbidden_address(address)]
    if blocked or not addresses:
        raise BlockedAddressError(
            f"{host} resolves to {', '.join(blocked) or 'nothing'}, which is not public"
        )
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to a checked address only."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await public_addresses(self._resolver, host, port)
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx raises them (same names), most specific first, so callers
# handle one family.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[Exception]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name))
    for name in (
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "LocalProtocolError",
        "UnsupportedProtocol",
        "ProxyError",
        "ProtocolError",
        "NetworkError",
    )
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(error, core):
                raise mapped(str(error)) from error
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore's public pool API whose connections go through the
    address check (httpx offers no way to hand its own transport a network backend).

    TLS still verifies against (and sends SNI for) the URL's host name, not the address
    connected to.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http2=True,
            network_backend=_GuardedBackend(resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
