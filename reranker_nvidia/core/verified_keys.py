"""Which keys NIM has accepted lately, so that cached scores go only to callers NIM would serve.

A score in the cache was paid for with some caller's key. Serving it to a request whose key NIM
would refuse would hand a stranger's paid-for answer to anyone, so by default the cache is read
only for a key NIM has answered 2xx for within the cache's TTL; a 401 or 403 for a key drops it
at once. Keys are held as HMAC digests under a secret made at start-up, never as text.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

# Enough for every tenant of a busy deployment; the least recently seen key goes first.
MAX_KEYS = 10_000


class VerifiedKeys:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = os.urandom(32)
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def digest(self, key: str | None) -> bytes:
        """A stand-in for ``key`` that reveals nothing of it (no key is a key too: "")."""
        return hmac.new(self._secret, (key or "").encode(), hashlib.sha256).digest()[:16]

    def accepted(self, key: str | None) -> None:
        digest = self.digest(key)
        self._expiry[digest] = self._clock() + self._ttl_s
        self._expiry.move_to_end(digest)
        while len(self._expiry) > self._max_keys:
            self._expiry.popitem(last=False)

    def rejected(self, key: str | None) -> None:
        self._expiry.pop(self.digest(key), None)

    def __contains__(self, key: str | None) -> bool:
        digest = self.digest(key)
        expires = self._expiry.get(digest)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expiry[digest]
            return False
        return True
