"""Which keys NIM has accepted lately, so that cached scores go only to callers NIM would serve.

A score in the cache was paid for with some caller's key. Serving it to a request whose key NIM
would refuse would hand a stranger's paid-for answer to anyone, so by default the cache is read
only for a key NIM has answered 2xx for within the cache's TTL; a 401 or 403 for a key drops it
at once. Keys are held as digests (``keys.key_digest``), never as text; the digest is the
same in every replica, so that replicas sharing a store (``shared_cache.py``) share what they
know.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from reranker_nvidia.core.keys import key_digest

if TYPE_CHECKING:
    from reranker_nvidia.core.shared_cache import SharedScores

# Enough for every tenant of a busy deployment; the least recently seen key goes first.
MAX_KEYS = 10_000


class VerifiedKeys:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedScores | None = None,
    ) -> None:
        """``shared``: the store other replicas read, told of every key NIM accepts or
        refuses here."""
        self._shared = shared
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    digest = staticmethod(key_digest)

    def accepted(self, key: str | None) -> None:
        """NIM answered 2xx for ``key``: the store hears of it when this replica's own
        record is new or half its TTL old, not on every call."""
        digest = self.digest(key)
        now = self._clock()
        previous = self._expiry.get(digest)
        self._remember(digest, now)
        if self._shared is not None and (previous is None or previous - now < self._ttl_s / 2):
            self._shared.verified(digest)

    def learned(self, key: str | None) -> None:
        """Another replica saw NIM accept ``key`` (the shared store says so)."""
        self._remember(self.digest(key), self._clock())

    def _remember(self, digest: bytes, now: float) -> None:
        self._expiry[digest] = now + self._ttl_s
        self._expiry.move_to_end(digest)
        while len(self._expiry) > self._max_keys:
            self._expiry.popitem(last=False)

    def rejected(self, key: str | None) -> None:
        digest = self.digest(key)
        self._expiry.pop(digest, None)
        if self._shared is not None:
            self._shared.rejected(digest)

    def __contains__(self, key: str | None) -> bool:
        digest = self.digest(key)
        expires = self._expiry.get(digest)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expiry[digest]
            return False
        return True
