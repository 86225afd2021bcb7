"""Telling a NIM key from the placeholders clients send when they have none, and naming a
key without holding it."""

from __future__ import annotations

import hashlib

# What clients put where a key goes when they have none: LlamaIndex sends
# "Bearer NO_API_KEY_PROVIDED"; other SDKs render an unset value as "None" or "null".
NO_KEY_PLACEHOLDERS = frozenset({"no_api_key_provided", "none", "null", "undefined"})


def usable_key(value: str | None) -> str | None:
    """``value`` stripped, or None when it is blank or a placeholder rather than a key.

    LangChain sends ten asterisks (a masked placeholder), so any all-asterisk value is no key
    either. Passing a placeholder on would override the server's key with one NIM refuses.
    """
    if value is None:
        return None
    key = value.strip()
    if not key.strip("*") or key.lower() in NO_KEY_PLACEHOLDERS:
        return None
    return key


def key_digest(key: str | None) -> bytes:
    """A stand-in for ``key`` that reveals nothing of it (no key is a key too: ""), the same
    in every replica, so that replicas sharing a store name a key alike. An API key is long
    and random, so its digest cannot be turned back into it."""
    return hashlib.blake2b(
        (key or "").encode(), digest_size=16, person=b"reranker-api-key"
    ).digest()
