"""The HTTP call to a NIM ranking endpoint, and the checks on what comes back.

One pooled ``httpx.AsyncClient`` per process. Every failure leaves here as a ``RerankError``
whose message says what went wrong upstream; the API key is never part of any message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import socket
import ssl
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import orjson

from reranker_nvidia import __version__
from reranker_nvidia.core.redaction import redact_url, scrub
from reranker_nvidia.core.ssrf import (
    BlockedAddressError,
    GuardedTransport,
    Resolver,
    public_addresses,
    system_resolver,
)
from reranker_nvidia.errors import (
    RETRYABLE_UPSTREAM_STATUSES,
    ErrorCode,
    RerankError,
    code_for_upstream_status,
    invalid_argument,
)
from reranker_nvidia.types import Usage

log = logging.getLogger("reranker_nvidia.upstream")

_MAX_DETAIL_CHARS = 300
# Answers larger than this are parsed on a worker thread, so the event loop keeps serving.
_PARSE_OFF_LOOP_BYTES = 256 * 1024


@dataclass(frozen=True)
class UpstreamRanking:
    """One upstream call's answer: a logit per passage, in the order the passages were sent."""

    logits: list[float]
    usage: Usage


class NimClient:
    """Sends ranking requests to NIM endpoints over pooled, bounded connections.

    Two pools: one for the base URLs the operator trusts (configured or allow-listed), and one
    for base URLs a caller chose, whose every connection passes the SSRF address check.
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
        ``max_answer_bytes`` (decoded) is refused as it streams in."""
        self._connect_timeout_s = connect_timeout_s
        self._max_answer_bytes = max_answer_bytes
        self._secrets = tuple(secret for secret in secrets if secret)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        common: dict[str, Any] = {
            "limits": limits,
            "headers": {
                "User-Agent": f"reranker-nvidia/{__version__}",
                "Accept": "application/json",
            },
            # A redirect would carry the key to wherever it points.
            "follow_redirects": False,
            "verify": shared_ssl_context(),
        }
        # HTTP/2 where NIM offers it (negotiated over TLS); HTTP/1.1 keep-alive otherwise.
        self._trusted = httpx.AsyncClient(**common, http2=True)
        self._guarded = httpx.AsyncClient(
            **common,
            transport=GuardedTransport(
                limits=limits, ssl_context=shared_ssl_context(), resolver=resolver
            ),
        )
        self._resolver = resolver
        # Through an HTTPS proxy the proxy connects, so the guard checks what the host
        # resolves to before each call instead (a proxy that resolves differently is the
        # operator's to trust).
        proxy = urllib.request.getproxies().get("https")
        self._guarded_via_proxy = (
            httpx.AsyncClient(**common, proxy=proxy, trust_env=False) if proxy else None
        )

    async def aclose(self) -> None:
        await self._trusted.aclose()
        await self._guarded.aclose()
        if self._guarded_via_proxy is not None:
            await self._guarded_via_proxy.aclose()

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
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        where = redact_url(endpoint)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        try:
            client = await self._guarded_client(endpoint) if guarded else self._trusted
            request = client.build_request(
                "POST", endpoint, content=orjson.dumps(body), headers=headers, timeout=timeout
            )
            response, content = await asyncio.wait_for(
                self._exchange(client, request, where), timeout_s
            )
        except httpx.ConnectTimeout:
            message = f"could not reach NIM at {where}: connecting timed out"
            log.warning("%s", message)
            raise RerankError(ErrorCode.DEADLINE_EXCEEDED, message, retryable=True) from None
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"NIM at {where} did not answer within {timeout_s:.3g} s",
                retryable=True,
            ) from None
        except BlockedAddressError as exc:
            raise RerankError(ErrorCode.PERMISSION_DENIED, f"base URL refused: {exc}") from None
        except (httpx.InvalidURL, UnicodeError):
            # The core checks both before any call; this keeps a miss a 400, never a 500.
            raise invalid_argument("base_url or api key: cannot be put in a request") from None
        except httpx.HTTPError as exc:
            message = f"could not reach NIM at {where}: {connection_failure(exc)}"
            log.warning("%s", message)
            raise RerankError(ErrorCode.UNAVAILABLE, message, retryable=True) from None
        payload = await _parse_json(content)
        if response.status_code != 200:
            raise _error_from_response(response, payload, where, (*self._secrets, api_key))
        return _parse_ranking(payload, len(passages), where)

    async def _guarded_client(self, endpoint: str) -> httpx.AsyncClient:
        host = urlsplit(endpoint).hostname or ""
        if self._guarded_via_proxy is None or urllib.request.proxy_bypass(host):
            return self._guarded
        # A name this process cannot resolve is the proxy's to resolve, or to fail on.
        with contextlib.suppress(httpcore.ConnectError):
            await public_addresses(self._resolver, host, 443)
        return self._guarded_via_proxy

    async def _exchange(
        self, client: httpx.AsyncClient, request: httpx.Request, where: str
    ) -> tuple[httpx.Response, bytes]:
        """The response and its body, read as it streams in and refused past the limit."""
        limit = self._max_answer_bytes
        response = await client.send(request, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(where, limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _too_large(where, limit)
                chunks.append(chunk)
        finally:
            await response.aclose()
        return response, b"".join(chunks)


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
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection closed before an answer"
    return f"connection failed ({type(error).__name__})"


def _too_large(where: str, limit: int) -> RerankError:
    return RerankError(
        ErrorCode.UNAVAILABLE,
        f"NIM at {where} sent an answer over {limit} bytes (RERANKER_MAX_UPSTREAM_BYTES)",
    )


class _NotJson:
    """An answer body that did not parse as JSON, kept as text for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text


def _loads(content: bytes) -> object:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        # orjson refuses NaN and Infinity; the standard parser reads them, so the answer is
        # refused for what it is (a non-finite logit), not as "not JSON".
        try:
            return json.loads(content)
        except ValueError:
            return _NotJson(content.decode("utf-8", "replace").strip())


async def _parse_json(content: bytes) -> object:
    if len(content) > _PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(_loads, content)
    return _loads(content)


def _error_from_response(
    response: httpx.Response, payload: object, where: str, secrets: Sequence[str | None]
) -> RerankError:
    status = response.status_code
    # Scrubbed before it is cut short, so that no part of a secret survives the cut.
    detail = _clip(scrub(_detail_of(payload, response.reason_phrase), secrets))
    return RerankError(
        code_for_upstream_status(status),
        f"NIM at {where} answered {status}: {detail}",
        upstream_status=status,
        retry_after_s=_retry_after(response),
        retryable=status in RETRYABLE_UPSTREAM_STATUSES,
    )


def _detail_of(payload: object, reason: str) -> str:
    """NIM's own message: ``{"detail": "..."}``, ``{"detail": [{"msg": ...}]}``, or the text."""
    if isinstance(payload, _NotJson):
        return payload.text or reason or "no body"
    if isinstance(payload, dict):
        detail = payload.get("detail", payload.get("error", payload.get("message")))
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in detail[:20]
            )
        if isinstance(detail, dict):
            return str(detail.get("msg", detail.get("message", detail)))
    return json.dumps(payload)[: _MAX_DETAIL_CHARS * 4]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_ranking(payload: object, count: int, where: str) -> UpstreamRanking:
    """The logits of a 200 answer. Messages name what is wrong and the type of what was
    found, never its content: an upstream may echo anything, the request's key included."""

    def broken(reason: str) -> RerankError:
        return RerankError(
            ErrorCode.UNAVAILABLE, f"NIM at {where} sent an invalid ranking: {reason}"
        )

    if isinstance(payload, _NotJson):
        raise broken("the body is not JSON")
    rankings = payload.get("rankings") if isinstance(payload, dict) else None
    if not isinstance(rankings, list):
        raise broken("no 'rankings' list")
    if len(rankings) != count:
        raise broken(f"{len(rankings)} rankings for {count} passages")
    logits: list[float | None] = [None] * count
    for entry in rankings:
        if not isinstance(entry, dict):
            raise broken("a ranking is not an object")
        index, logit = entry.get("index"), entry.get("logit")
        if not isinstance(index, int) or isinstance(index, bool):
            raise broken(f"an index is a {type(index).__name__}, not an integer")
        if not 0 <= index < count:
            raise broken(f"index {index} is out of range for {count} passages")
        if logits[index] is not None:
            raise broken(f"index {index} appears twice")
        if not isinstance(logit, (int, float)) or isinstance(logit, bool):
            raise broken(f"logit for index {index} is not a number")
        if not math.isfinite(logit):
            raise broken(f"logit for index {index} is not finite")
        logits[index] = float(logit)
    usage = _usage_of(payload) if isinstance(payload, dict) else Usage()
    return UpstreamRanking([logit for logit in logits if logit is not None], usage)


def _usage_of(payload: dict[str, Any]) -> Usage:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    prompt = usage.get("prompt_tokens")
    total = usage.get("total_tokens")
    return Usage(
        prompt if isinstance(prompt, int) else 0,
        total if isinstance(total, int) else 0,
    )


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."
