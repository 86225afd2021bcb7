"""The HTTP call to a NIM ranking endpoint, over the project's own HTTP/1.1 client (parsed in C
by httptools: ``reranker_nvidia.wire``), and what its failures are called.

One client (one set of keep-alive pools) per process. Every failure leaves here as a
``RerankError`` whose message says what went wrong upstream; the API key is never part of any
message. What NIM answered is checked by ``answers.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
import orjson

from reranker_nvidia import __version__
from reranker_nvidia.core.documents.passages import Passage, wire_passages
from reranker_nvidia.core.timeouts import within
from reranker_nvidia.core.trust.redaction import redact_url
from reranker_nvidia.core.trust.ssrf import (
    BlockedAddressError,
    Resolver,
    checked_address,
    public_addresses,
    system_resolver,
)
from reranker_nvidia.core.upstream.answers import UpstreamRanking, loads, ranking_from
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.wire import (
    AnswerTooLarge,
    ClientClosed,
    ConnectTimeout,
    HttpClient,
    InvalidHeader,
    InvalidURL,
    ProxyError,
    RemoteProtocolError,
    TransportError,
)

log = logging.getLogger("reranker_nvidia.upstream")
T = TypeVar("T")
# How an endpoint is named in messages, worked out once per URL rather than once per call.
_named = functools.lru_cache(maxsize=1024)(redact_url)

# Answers larger than this are parsed on a worker thread, so the event loop keeps serving.
_PARSE_OFF_LOOP_BYTES = 256 * 1024
Headers = list[tuple[bytes, bytes]]
_FIXED_HEADERS: Headers = [
    (b"user-agent", f"reranker-nvidia/{__version__}".encode()),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
]


class NimClient:
    """Sends ranking requests to NIM endpoints over pooled, bounded connections.

    Endpoints a caller chose are "guarded": each of their connections goes to an address that
    passed the SSRF check (and never shares a pooled connection with a trusted endpoint's).
    """

    def __init__(
        self,
        *,
        http: HttpClient,
        max_answer_bytes: int,
        resolver: Resolver = system_resolver,
        secrets: Sequence[str] = (),
    ) -> None:
        """``secrets`` (the server's key, the caller token) are cut out of any upstream text
        that reaches an error message, as is the key each call sends. An answer over
        ``max_answer_bytes`` is refused as it streams in."""
        self._http = http
        self._max_answer_bytes = max_answer_bytes
        self._secrets = tuple(secret for secret in secrets if secret)
        self._resolver = resolver
        self._address_of = checked_address(resolver)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def rank(
        self,
        endpoint: str,
        *,
        model: str,
        query: str,
        passages: Sequence[Passage],
        truncate: str | None,
        api_key: str | None,
        timeout_s: float,
        guarded: bool,
    ) -> UpstreamRanking:
        """One call. ``timeout_s`` bounds the whole call, connecting included."""
        body: dict[str, Any] = {
            "model": model,
            "query": {"text": query},
            "passages": wire_passages(passages),
        }
        if truncate is not None:
            body["truncate"] = truncate
        headers = _FIXED_HEADERS
        if api_key:
            headers = [*headers, (b"authorization", b"Bearer " + api_key.encode("ascii"))]
        where = _named(endpoint)
        try:
            response = await within(
                timeout_s, self._send(endpoint, headers, orjson.dumps(body), guarded)
            )
        except (TimeoutError, asyncio.TimeoutError):
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"NIM at {where} did not answer within {timeout_s:.3g} s",
                retryable=True,
            ) from None
        except ConnectTimeout:
            message = f"could not reach NIM at {where}: connecting timed out"
            log.warning("%s", message)
            raise RerankError(ErrorCode.DEADLINE_EXCEEDED, message, retryable=True) from None
        except BlockedAddressError as exc:
            raise RerankError(ErrorCode.PERMISSION_DENIED, f"base URL refused: {exc}") from None
        except (InvalidURL, InvalidHeader, UnicodeError):
            # The core checks both before any call; this keeps a miss a 400, never a 500.
            raise invalid_argument("base_url or api key: cannot be put in a request") from None
        except AnswerTooLarge:
            raise RerankError(
                ErrorCode.UNAVAILABLE,
                f"NIM at {where} sent an answer over {self._max_answer_bytes} bytes "
                "(RERANKER_MAX_UPSTREAM_BYTES)",
            ) from None
        except (TransportError, ClientClosed) as exc:
            message = f"could not reach NIM at {where}: {connection_failure(exc)}"
            log.warning("%s", message)
            raise RerankError(ErrorCode.UNAVAILABLE, message, retryable=True) from None
        answer = response.body
        if log.isEnabledFor(logging.DEBUG):
            # Masked like every line (logs.py): an endpoint may echo a key in a header.
            shown = ", ".join(
                f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in response.headers
            )
            log.debug(
                "NIM at %s answered %d (%s), %d bytes", where, response.status, shown, len(answer)
            )
        if len(answer) > _PARSE_OFF_LOOP_BYTES:
            payload = await asyncio.to_thread(loads, answer)
        else:
            payload = loads(answer)
        return ranking_from(
            response.status,
            response.headers,
            payload,
            len(passages),
            where,
            (*self._secrets, api_key),
        )

    async def _send(self, endpoint: str, headers: Headers, content: bytes, guarded: bool) -> Any:
        http = self._http
        address_of = None
        if guarded:
            if http.uses_proxy(endpoint):
                # Through a proxy the proxy connects, so the guard checks what the host
                # resolves to before each call instead (a proxy that resolves differently is
                # the operator's to trust). A name this process cannot resolve is the
                # proxy's to resolve, or to fail on.
                with contextlib.suppress(OSError):
                    await public_addresses(self._resolver, httpx.URL(endpoint).host, 443)
            else:
                address_of = self._address_of
        return await http.request(
            endpoint,
            headers=headers,
            body=content,
            max_body_bytes=self._max_answer_bytes,
            address_of=address_of,
        )

    async def ready(self, url: str, timeout_s: float) -> bool:
        """Whether a GET of ``url`` (a NIM's readiness route) answers 2xx in time."""
        probe = self._http.request(
            url, method=b"GET", headers=_FIXED_HEADERS[:2], body=b"", max_body_bytes=65536
        )
        try:
            response = await within(timeout_s, probe)
        except (TimeoutError, asyncio.TimeoutError, TransportError, AnswerTooLarge, ValueError):
            return False
        return 200 <= response.status < 300


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context (system CAs, or ``SSL_CERT_FILE``) for every NIM connection: loading
    the CA bundle costs tens of milliseconds, so it is done once per process."""
    return httpx.create_ssl_context()


def connection_failure(error: BaseException) -> str:
    """What went wrong on the way to NIM, in words: DNS, refused, TLS, reset, or closed."""
    if isinstance(error, ProxyError):
        return f"proxy: {error}"
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
    if isinstance(error, RemoteProtocolError):
        return "the connection closed before an answer"
    return f"connection failed ({error or type(error).__name__})"
