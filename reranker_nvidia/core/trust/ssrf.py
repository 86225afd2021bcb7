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
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

import httpx

from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.wire import InvalidURL, Target

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
    try:
        if not host.isascii():
            host.encode("idna")
        for label in host.split("."):
            # An ASCII label that claims to be punycode must decode as such.
            if label[:4].lower() == "xn--":
                label.encode("ascii").decode("idna")
    except UnicodeError:
        raise malformed("the host is not a valid domain name") from None
    try:
        httpx.URL(url)
        Target.of(url)
    except (httpx.InvalidURL, InvalidURL, UnicodeError, ValueError):
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
    """The addresses ``host`` resolves to, all of them public, or ``BlockedAddressError`` (an
    ``OSError`` when it does not resolve)."""
    addresses = await resolver(host, port)
    blocked = [address for address in addresses if is_forbidden_address(address)]
    if blocked or not addresses:
        raise BlockedAddressError(
            f"{host} resolves to {', '.join(blocked) or 'nothing'}, which is not public"
        )
    return addresses


def checked_address(resolver: Resolver) -> Callable[[str, int], Awaitable[str]]:
    """What a guarded connection dials: the host resolved, every address checked, the first
    (a connection is made to a checked address only, never to the name again)."""

    async def address_of(host: str, port: int) -> str:
        return (await public_addresses(resolver, host, port))[0]

    return address_of
