"""Telling a NIM key from the placeholders clients send when they have none."""

from __future__ import annotations

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
