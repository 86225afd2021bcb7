"""Everything an endpoint answers is data to validate, here and nowhere else.

An answer becomes a ranking only when every part of it checks out: status 200, a JSON body
nested no deeper than orjson's limit, one ranking per passage with an integer index in range
and a finite logit within ``MAX_LOGIT``, and token counts that are integers in
``[0, MAX_TOKENS]``. An error status from 400 to 599 is NIM's own refusal (its message kept,
secrets masked); any other status, and any answer that fails a check, is UNAVAILABLE (HTTP
502, not retried: the same endpoint would answer the same) with a message naming what was
wrong and never the content that was (an endpoint may echo anything, a key included). Nothing
here raises anything but ``RerankError``, so a bad answer can never reach the cache, the
verified keys or the metrics.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from reranker_nvidia.core.trust.redaction import scrub
from reranker_nvidia.errors import (
    RETRYABLE_UPSTREAM_STATUSES,
    ErrorCode,
    RerankError,
    code_for_upstream_status,
)
from reranker_nvidia.types import Usage

# Rerank logits are small numbers (single or low double digits); anything past this is damage.
MAX_LOGIT = 1e6
MAX_TOKENS = 2**40
_MAX_DETAIL_CHARS = 300
_KNOWN_STATUSES = frozenset(status.value for status in HTTPStatus)

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class UpstreamRanking:
    """One upstream call's answer: a logit per passage, in the order the passages were sent,
    and the tag of the endpoint that answered."""

    logits: list[float]
    usage: Usage
    tag: bytes = b""


class NotJson:
    """An answer body that did not parse as JSON: why, and its text for error messages."""

    def __init__(self, reason: str, text: str) -> None:
        self.reason = reason
        self.text = text


def loads(content: bytes) -> object:
    """The body as JSON, or ``NotJson`` saying why not (orjson bounds nesting at 1024 levels
    and refuses numbers a double cannot hold, NaN and Infinity)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as error:
        message = str(error)
        if "depth" in message or "recursion" in message:
            reason = "the body is nested too deep"
        elif "infinity" in message:
            reason = "a number is out of range"
        elif b"NaN" in content or b"Infinity" in content:
            reason = "a number is not finite (NaN or Infinity)"
        else:
            reason = "the body is not JSON"
        return NotJson(reason, content[:4096].decode("utf-8", "replace").strip())


def ranking_from(
    status: int,
    headers: Headers,
    payload: object,
    count: int,
    where: str,
    secrets: Sequence[str | None],
) -> UpstreamRanking:
    """The ranking of an answer to a call of ``count`` passages, or the RerankError it is."""
    if status == 200:
        return _parse_ranking(payload, count, where)
    if 400 <= status <= 599:
        # Scrubbed before it is cut short, so that no part of a secret survives the cut.
        reason = HTTPStatus(status).phrase if status in _KNOWN_STATUSES else ""
        detail = _clip(scrub(_detail_of(payload, reason), secrets))
        raise RerankError(
            code_for_upstream_status(status),
            f"NIM at {where} answered {status}: {detail}",
            upstream_status=status,
            retry_after_s=retry_after(headers),
            retryable=status in RETRYABLE_UPSTREAM_STATUSES,
        )
    raise RerankError(
        ErrorCode.UNAVAILABLE,
        f"NIM at {where} answered an unexpected status {status} (a ranking comes with 200)",
    )


def _detail_of(payload: object, reason: str) -> str:
    """NIM's own message: ``{"detail": "..."}``, ``{"detail": [{"msg": ...}]}``, or the text."""
    if isinstance(payload, NotJson):
        return payload.text or reason or "no body"
    if isinstance(payload, dict):
        detail = payload.get("detail", payload.get("error", payload.get("message")))
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in detail[:20]
            )[: _MAX_DETAIL_CHARS * 4]
        if isinstance(detail, dict):
            return str(detail.get("msg", detail.get("message", detail)))[: _MAX_DETAIL_CHARS * 4]
    return orjson.dumps(payload).decode()[: _MAX_DETAIL_CHARS * 4] or reason


def retry_after(headers: Headers, now: float | None = None) -> float | None:
    """Seconds NIM asked to wait: ``Retry-After`` as seconds or as an HTTP date."""
    value = next((v for k, v in headers if k.lower() == b"retry-after"), None)
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _parse_ranking(payload: object, count: int, where: str) -> UpstreamRanking:
    def broken(reason: str) -> RerankError:
        return RerankError(
            ErrorCode.UNAVAILABLE,
            f"NIM at {where} sent an invalid ranking: {reason}",
        )

    if isinstance(payload, NotJson):
        raise broken(payload.reason)
    rankings = payload.get("rankings") if isinstance(payload, dict) else None
    if not isinstance(rankings, list):
        raise broken("no 'rankings' list")
    if len(rankings) != count:
        raise broken(f"{len(rankings)} rankings for {count} passages")
    try:
        indices = [entry["index"] for entry in rankings]
        values = [entry["logit"] for entry in rankings]
    except (TypeError, KeyError):
        raise broken(_what_is_wrong(rankings)) from None
    # Checked as whole lists (in C): every index an int (not a bool) and each of 0..count-1
    # once; every logit a float or an int within range.
    if set(map(type, indices)) - {int}:
        kind = next(type(i).__name__ for i in indices if type(i) is not int)
        raise broken(f"an index is a {kind}, not an integer")
    if sorted(indices) != list(range(count)):
        raise broken(_index_problem(indices, count))
    if set(map(type, values)) - {float, int}:
        index = next(i for i, v in zip(indices, values, strict=True) if type(v) not in (float, int))
        raise broken(f"logit for index {index} is not a number")
    if values and not -MAX_LOGIT <= min(values) <= max(values) <= MAX_LOGIT:
        index = next(
            i for i, v in zip(indices, values, strict=True) if not -MAX_LOGIT <= v <= MAX_LOGIT
        )
        raise broken(f"logit for index {index} is out of range (at most {MAX_LOGIT:g})")
    logits = [0.0] * count
    for index, value in zip(indices, values, strict=True):
        logits[index] = value
    usage = _usage_of(payload, broken) if isinstance(payload, dict) else Usage()
    return UpstreamRanking([float(logit) for logit in logits], usage)


def _what_is_wrong(rankings: list[Any]) -> str:
    for entry in rankings:
        if not isinstance(entry, dict):
            return "a ranking is not an object"
        if "index" not in entry:
            return "a ranking has no index"
    return "a ranking has no logit"


def _index_problem(indices: list[int], count: int) -> str:
    seen: set[int] = set()
    for index in indices:
        if not 0 <= index < count:
            return f"index {index} is out of range for {count} passages"
        if index in seen:
            return f"index {index} appears twice"
        seen.add(index)
    return "the indices are not 0 to count - 1"


def _usage_of(payload: dict[str, Any], broken: Any) -> Usage:
    usage = payload.get("usage")
    if usage is None:
        return Usage()
    if not isinstance(usage, dict):
        raise broken("'usage' is not an object")
    counts = []
    for name in ("prompt_tokens", "total_tokens"):
        value = usage.get(name, 0)
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            raise broken(f"usage.{name} is not a token count")
        counts.append(value)
    return Usage(counts[0], counts[1])


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."
