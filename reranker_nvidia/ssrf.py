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
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from reranker_nvidia.errors import ErrorCode, RerankError

Resolver = Callable[[str, int], Awaitable[list[str]]]

_BLOCKED_NAME_SUFFIXES = (".local", ".internal", ".localhost", ".localdomain")
_BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})


class BlockedAddressError(Exception):
    """The host of a guarded URL resolved to an address the sidecar must not connect to."""


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): two URLs with the same origin reach the same server."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def is_forbidden_address(address: str) -> bool:
    """True for every address that is not plainly on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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
        return  # a name; its addresses are checked at connect time
    if literal:
        raise _refused(url, f"{host} is not a public address")


def _refused(url: str, reason: str) -> RerankError:
    host = urlsplit(url.strip()).hostname or url
    return RerankError(ErrorCode.PERMISSION_DENIED, f"base URL with host {host} refused: {reason}")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


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
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        blocked = [address for address in addresses if is_forbidden_address(address)]
        if blocked or not addresses:
            raise BlockedAddressError(
                f"{host} resolves to {', '.join(blocked) or 'nothing'}, which is not public"
            )
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections go through the address check.

    httpx builds its connection pool without a way to pass a network backend, so the pool is
    rebuilt here with the same limits; TLS still verifies against (and sends SNI for) the
    URL's host name, not the address connected to.
    """

    def __init__(self, *, limits: httpx.Limits, resolver: Resolver = system_resolver) -> None:
        super().__init__(limits=limits, http2=True)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http2=True,
            network_backend=_GuardedBackend(resolver),
        )
