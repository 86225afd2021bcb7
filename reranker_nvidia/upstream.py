"""The HTTP call to a NIM ranking endpoint, and the checks on what comes back.

One pooled ``httpx.AsyncClient`` per process. Every failure leaves here as a ``RerankError``
whose message says what went wrong upstream; the API key is never part of any message.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from reranker_nvidia import __version__
from reranker_nvidia.errors import (
    RETRYABLE_UPSTREAM_STATUSES,
    ErrorCode,
    RerankError,
    code_for_upstream_status,
)
from reranker_nvidia.ssrf import BlockedAddressError, GuardedTransport, Resolver, system_resolver

_MAX_DETAIL_CHARS = 300
# Any NVIDIA API key an upstream echoes, known to this process or not.
_NVIDIA_KEY = re.compile(r"nvapi-[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.total_tokens + other.total_tokens
        )


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
        resolver: Resolver = system_resolver,
        secrets: Sequence[str] = (),
    ) -> None:
        """``secrets`` (the server's key, the caller token) are cut out of any upstream text
        that reaches an error message, as is the key each call sends."""
        self._connect_timeout_s = connect_timeout_s
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
        }
        # HTTP/2 where NIM offers it (negotiated over TLS); HTTP/1.1 keep-alive otherwise.
        self._trusted = httpx.AsyncClient(**common, http2=True)
        self._guarded = httpx.AsyncClient(
            **common, transport=GuardedTransport(limits=limits, resolver=resolver)
        )

    async def aclose(self) -> None:
        await self._trusted.aclose()
        await self._guarded.aclose()

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
        client = self._guarded if guarded else self._trusted
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, self._connect_timeout_s))
        try:
            response = await asyncio.wait_for(
                client.post(endpoint, content=orjson.dumps(body), headers=headers, timeout=timeout),
                timeout_s,
            )
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise RerankError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"NIM at {where} did not answer within {timeout_s:.3g} s",
                retryable=True,
            ) from None
        except BlockedAddressError as exc:
            raise RerankError(ErrorCode.PERMISSION_DENIED, f"base URL refused: {exc}") from None
        except httpx.HTTPError as exc:
            raise RerankError(
                ErrorCode.UNAVAILABLE,
                f"could not reach NIM at {where}: {type(exc).__name__}",
                retryable=True,
            ) from None
        if response.status_code != 200:
            raise _error_from_response(response, where, (*self._secrets, api_key or ""))
        return _parse_ranking(response, len(passages), where)


def redact_url(url: str) -> str:
    """The URL without user-info, query or fragment, which may carry credentials."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _error_from_response(
    response: httpx.Response, where: str, secrets: Sequence[str]
) -> RerankError:
    status = response.status_code
    detail = _scrub(_detail_of(response), secrets)
    return RerankError(
        code_for_upstream_status(status),
        f"NIM at {where} answered {status}: {detail}",
        http_status=status if 400 <= status < 500 else 502,
        upstream_status=status,
        retry_after_s=_retry_after(response),
        retryable=status in RETRYABLE_UPSTREAM_STATUSES,
    )


def _detail_of(response: httpx.Response) -> str:
    """NIM's own message: ``{"detail": "..."}``, ``{"detail": [{"msg": ...}]}``, or the text."""
    try:
        payload = response.json()
    except ValueError:
        text = response.text.strip()
        return _clip(text) if text else response.reason_phrase or "no body"
    if isinstance(payload, dict):
        detail = payload.get("detail", payload.get("error", payload.get("message")))
        if isinstance(detail, str):
            return _clip(detail)
        if isinstance(detail, list):
            messages = [
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in detail
            ]
            return _clip("; ".join(messages))
        if isinstance(detail, dict):
            return _clip(str(detail.get("msg", detail.get("message", detail))))
    return _clip(json.dumps(payload))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_ranking(response: httpx.Response, count: int, where: str) -> UpstreamRanking:
    def broken(reason: str) -> RerankError:
        return RerankError(
            ErrorCode.UNAVAILABLE, f"NIM at {where} sent an invalid ranking: {reason}"
        )

    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        # orjson refuses NaN and Infinity; the standard parser reads them, so the answer is
        # refused below for what it is (a non-finite logit), not as "not JSON".
        try:
            payload = json.loads(response.content)
        except ValueError:
            raise broken("the body is not JSON") from None
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
            raise broken(f"index {index!r} is not an integer")
        if not 0 <= index < count:
            raise broken(f"index {index} is out of range for {count} passages")
        if logits[index] is not None:
            raise broken(f"index {index} appears twice")
        if not isinstance(logit, (int, float)) or isinstance(logit, bool):
            raise broken(f"logit for index {index} is not a number")
        if not math.isfinite(logit):
            raise broken(f"logit for index {index} is not finite")
        logits[index] = float(logit)
    return UpstreamRanking([logit for logit in logits if logit is not None], _usage_of(payload))


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


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _NVIDIA_KEY.sub("nvapi-***", text)
