"""The HTTP call to a NIM ranking endpoint, and the checks on what comes back.

One set of connection pools per process (``transport.py``). Every failure leaves here as a
``RerankError`` whose message says what went wrong upstream; the API key is never part of any
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterable, Sequence
from typing import Any

import httpcore
import httpx
import orjson

from reranker_nvidia import __version__
from reranker_nvidia.core.redaction import redact_url
from reranker_nvidia.core.ssrf import (
    BlockedAddressError,
    Resolver,
    checked_address,
    public_addresses,
    system_resolver,
)
from reranker_nvidia.core.upstream.answers import UpstreamRanking, loads, ranking_from
from reranker_nvidia.core.upstream.transport import ConnectionPools, Destination
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument

log = logging.getLogger("reranker_nvidia.upstream")

# Answers larger than this are parsed on a worker thread, so the event loop keeps serving.
_PARSE_OFF_LOOP_BYTES = 256 * 1024


class NimClient:
    """Sends ranking requests to NIM endpoints over pooled, bounded connections.

    Endpoints the operator trusts (configured or allow-listed) and endpoints a caller chose
    use separate pools; every connection of the second passes the SSRF address check.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        max_connections: int,
        max_answer_bytes: int,
        resolver: Resolver = system_resolver,
        secrets: Sequence[str] = (),
    ) -> None:
        """``secrets`` (the server's key, the caller token) are cut out of any upstream text
        that reaches an error message, as is the key each call sends. An answer over
        ``max_answer_bytes`` is refused as it streams in."""
        self._connect_timeout_s = connect_timeout_s
        self._max_answer_bytes = max_answer_bytes
        self._secrets = tuple(secret for secret in secrets if secret)
        self._resolver = resolver
        self._pools = ConnectionPools(
            max_connections=max_connections,
            ssl_context=shared_ssl_context(),
            address_of=checked_address(resolver),
        )

    async def aclose(self) -> None:
        await self._pools.aclose()

    async def rank(
        self,
        endpoint: str,
        *,
        model: str,
        query: str,
        passages: Sequence[str],
        truncate: str | None,
        api_key: str | None,
        timeout_s: float,
        guarded: bool,
    ) -> UpstreamRanking:
        """One call. ``timeout_s`` bounds the whole call, connecting included."""
        body: dict[str, Any] = {
            "model": model,
            "query": {"text": query},
            "passages": [{"text": passage} for passage in passages],
        }
        if truncate is not None:
            body["truncate"] = truncate
        where = redact_url(endpoint)
        try:
            destination = Destination.of(endpoint)
            content = orjson.dumps(body)
            headers = [
                (b"Host", destination.host_header),
                *_FIXED_HEADERS,
                (b"Content-Length", b"%d" % len(content)),
            ]
            if api_key:
                headers.append((b"Authorization", b"Bearer " + api_key.encode("ascii")))
            request = httpcore.Request(
                b"POST",
                destination.url,
                headers=headers,
                content=content,
                extensions={
                    "timeout": {
                        "connect": min(timeout_s, self._connect_timeout_s),
                        "read": timeout_s,
                        "write": timeout_s,
                        "pool": timeout_s,
                    }
                },
            )
            status, response_headers, answer = await asyncio.wait_for(
                self._exchange(destination, request, where, guarded), timeout_s
            )
        except httpcore.ConnectTimeout:
            message = f"could not reach NIM at {where}: connecting timed out"
            log.warning("%s", message)
            raise RerankError(ErrorCode.DEADLINE_EXCEEDED, message, retryable=True) from None
        except (httpcore.TimeoutException, asyncio.TimeoutError):
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"NIM at {where} did not answer within {timeout_s:.3g} s",
                retryable=True,
            ) from None
        except BlockedAddressError as exc:
            raise RerankError(ErrorCode.PERMISSION_DENIED, f"base URL refused: {exc}") from None
        except (httpx.InvalidURL, httpcore.UnsupportedProtocol, UnicodeError):
            # The core checks both before any call; this keeps a miss a 400, never a 500.
            raise invalid_argument("base_url or api key: cannot be put in a request") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
            message = f"could not reach NIM at {where}: {connection_failure(exc)}"
            log.warning("%s", message)
            raise RerankError(ErrorCode.UNAVAILABLE, message, retryable=True) from None
        if len(answer) > _PARSE_OFF_LOOP_BYTES:
            payload = await asyncio.to_thread(loads, answer)
        else:
            payload = loads(answer)
        return ranking_from(
            status, response_headers, payload, len(passages), where, (*self._secrets, api_key)
        )

    async def _exchange(
        self, destination: Destination, request: httpcore.Request, where: str, guarded: bool
    ) -> tuple[int, Headers, bytes]:
        proxy = self._pools.proxy_for(destination)
        if proxy is not None:
            if guarded:
                # Through a proxy the proxy connects, so the guard checks what the host
                # resolves to before each call instead (a proxy that resolves differently is
                # the operator's to trust). A name this process cannot resolve is the
                # proxy's to resolve, or to fail on.
                with contextlib.suppress(httpcore.ConnectError):
                    await public_addresses(self._resolver, destination.host, 443)
            return await self._read(await proxy.handle_async_request(request), where)
        pool = self._pools.guarded if guarded else self._pools.trusted
        async with pool.connection(destination.url) as connection:
            return await self._read(await connection.handle_async_request(request), where)

    async def _read(self, response: httpcore.Response, where: str) -> tuple[int, Headers, bytes]:
        """The status, headers and body, read as it streams in and refused past the limit."""
        limit = self._max_answer_bytes
        try:
            declared = _header(response.headers, b"content-length") or b""
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(where, limit)
            chunks: list[bytes] = []
            size = 0
            assert isinstance(response.stream, AsyncIterable)
            async for chunk in response.stream:
                size += len(chunk)
                if size > limit:
                    raise _too_large(where, limit)
                chunks.append(chunk)
        finally:
            await response.aclose()
        return response.status, response.headers, b"".join(chunks)


Headers = list[tuple[bytes, bytes]]
_FIXED_HEADERS: Headers = [
    (b"User-Agent", f"reranker-nvidia/{__version__}".encode()),
    (b"Accept", b"application/json"),
    (b"Content-Type", b"application/json"),
]


def _header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case)."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context (system CAs, or ``SSL_CERT_FILE``) for every NIM connection: loading
    the CA bundle costs tens of milliseconds, so it is done once per process."""
    return httpx.create_ssl_context()


def connection_failure(error: BaseException) -> str:
    """What went wrong on the way to NIM, in words: DNS, refused, TLS, reset, or closed."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed ({cause.strerror or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS failed: the certificate was not accepted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
        if isinstance(cause, ConnectionResetError):
            return "the connection was reset"
        if isinstance(cause, OSError) and cause.strerror:
            return f"connection failed ({cause.strerror})"
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpcore.RemoteProtocolError):
        return "the connection closed before an answer"
    return f"connection failed ({type(error).__name__})"


def _too_large(where: str, limit: int) -> RerankError:
    return RerankError(
        ErrorCode.UNAVAILABLE,
        f"NIM at {where} sent an answer over {limit} bytes (RERANKER_MAX_UPSTREAM_BYTES)",
    )
