"""Keeping secrets out of every text that reaches a caller or a log line."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

# Any NVIDIA API key, known to this process or not, whole or cut short; and whatever follows
# "Bearer", which is a credential whatever its shape.
_CREDENTIAL = re.compile(r"nvapi-[A-Za-z0-9_\-]*|(?i:bearer)\s+[^\s'\",;]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Below this length a "secret" would match ordinary words; such a value is no real key.
MIN_SECRET_CHARS = 6
MASK = "***"


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every secret in ``secrets`` and every credential-shaped string masked."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, MASK)
    return _CREDENTIAL.sub(_mask_credential, text)


def _mask_credential(match: re.Match[str]) -> str:
    found = match.group(0)
    return "nvapi-" + MASK if found.startswith("nvapi-") else found.split()[0] + " " + MASK


def escape_controls(text: str) -> str:
    """Control characters as escapes, so that no value can start a forged log line."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group(0)):02x}", text)


def redact_url(url: str) -> str:
    """The URL without user-info, query or fragment, which may carry credentials."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<malformed URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
