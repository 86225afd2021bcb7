"""Which proxy, if any, a call goes through: ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``ALL_PROXY``
as ``urllib.request.getproxies()`` reads them (once), ``NO_PROXY`` bypassing them.

An ``http://`` URL is asked of the proxy in absolute form; an ``https://`` URL goes through a
``CONNECT`` tunnel with TLS to the target inside it. The proxy itself may be spoken to in
plain text (``http://proxy``) or over TLS (``https://proxy``).
"""

from __future__ import annotations

import base64
import functools
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from reranker_nvidia.wire.client import Target
from reranker_nvidia.wire.errors import ProxyError

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    """A proxy to connect to; ``where`` names it in messages (never its credentials)."""

    host: str
    port: int
    tls: bool
    authorization: bytes | None
    where: str

    @classmethod
    @functools.lru_cache(maxsize=16)
    def of(cls, url: str) -> Proxy:
        """The proxy at ``url`` (``host:port`` alone means ``http://host:port``), with
        Basic credentials from its user-info; ``ProxyError`` if it cannot be used."""
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            port = parts.port
        except ValueError:
            raise ProxyError("the proxy URL is not valid") from None
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in _DEFAULT_PORTS:
            raise ProxyError(f"{scheme} proxies are not supported (http and https proxies are)")
        if not host:
            raise ProxyError("the proxy URL has no host")
        port = port or _DEFAULT_PORTS[scheme]
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(host, port, scheme == "https", authorization, where)

    def connect_head(self, target: Target) -> bytes:
        """The ``CONNECT`` request that opens a tunnel to ``target``."""
        authority = target.authority
        head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (authority, authority)
        if self.authorization is not None:
            head += b"Proxy-Authorization: %s\r\n" % self.authorization
        return head + b"\r\n"


class ProxyTable:
    """The proxies of a client, by target scheme, and the hosts that bypass them."""

    def __init__(self, proxies: Mapping[str, str] | None) -> None:
        """``proxies`` as ``urllib.request.getproxies()`` returns them (keys ``http``,
        ``https``, ``all``, ``no``); None reads the environment now, once."""
        self._urls = dict(urllib.request.getproxies() if proxies is None else proxies)

    def __bool__(self) -> bool:
        return any(self._urls.get(scheme) for scheme in ("http", "https", "all"))

    def proxy_for(self, target: Target) -> Proxy | None:
        """The proxy a call to ``target`` goes through, or None to connect directly."""
        url = self._urls.get(target.scheme) or self._urls.get("all")
        if not url:
            return None
        if _bypassed(target, self._urls.get("no", "")):
            return None
        return Proxy.of(url)


def _bypassed(target: Target, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names the target, as urllib reads it: ``*``, or entries (comma
    separated) that are the host, a domain it is in (leading dots ignored), or ``host:port``."""
    if no_proxy.strip() == "*":
        return True
    host = target.host
    authority = target.authority.decode()
    for entry in no_proxy.lower().split(","):
        name = entry.strip().lstrip(".")
        if not name:
            continue
        bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        if host == bare or authority == name or host.endswith("." + name):
            return True
    return False
