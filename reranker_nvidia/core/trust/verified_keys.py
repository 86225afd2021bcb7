"""Which keys each NIM endpoint has accepted lately, so that cached scores go only to callers
that endpoint would serve.

A score in the cache was paid for with some caller's key at some endpoint. Serving it to a
request whose key that endpoint would refuse would hand a stranger's paid-for answer to
anyone, so by default a cached score is read only by a key the endpoint that paid for it has
answered 2xx for within the cache's TTL; a 401 or 403 from an endpoint drops the key there at
once. Trust is per (endpoint, key): an endpoint that answers anything (a caller-chosen one, or
a self-hosted NIM without keys) vouches for keys at itself only. Keys and endpoints are held
as keyed digests (``trust/digests.py``), never as text; with a shared store the digests are
the same in every replica, so that replicas share what they know (``shared_cache.py``): then
this replica holds what it knows for ``SHARED_RECHECK_S`` at most before asking the store again,
so a 401 one replica saw reaches the others within that time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reranker_nvidia.core.cache.shared_cache import SharedScores

# Enough for every tenant of a busy deployment at every endpoint; the least recently seen goes
# first.
MAX_ENTRIES = 10_000
# With a shared store, how long this replica trusts what it knows before asking the store.
SHARED_RECHECK_S = 30.0

# (endpoint tag, key digest)
Grant = tuple[bytes, bytes]


class VerifiedKeys:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedScores | None = None,
    ) -> None:
        """``shared``: the store other replicas read, told of every key an endpoint accepts or
        refuses here."""
        self._shared = shared
        self._ttl_s = ttl_s
        self._held_s = ttl_s if shared is None else min(ttl_s, SHARED_RECHECK_S)
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[Grant, float] = OrderedDict()

    def accepted(self, tag: bytes, key_id: bytes) -> None:
        """The endpoint ``tag`` answered 2xx for the key ``key_id``: the store hears of it when
        this replica's own record is new or half its TTL old, not on every call."""
        grant = (tag, key_id)
        now = self._clock()
        previous = self._expiry.get(grant)
        self._remember(grant, now)
        if self._shared is not None and (previous is None or previous - now < self._held_s / 2):
            self._shared.verified(tag, key_id)

    def learned(self, tag: bytes, key_id: bytes) -> None:
        """Another replica saw the endpoint accept the key (the shared store says so)."""
        self._remember((tag, key_id), self._clock())

    def _remember(self, grant: Grant, now: float) -> None:
        self._expiry[grant] = now + self._held_s
        self._expiry.move_to_end(grant)
        while len(self._expiry) > self._max_entries:
            self._expiry.popitem(last=False)

    def rejected(self, tag: bytes, key_id: bytes) -> None:
        self._expiry.pop((tag, key_id), None)
        if self._shared is not None:
            self._shared.rejected(tag, key_id)

    def __len__(self) -> int:
        return len(self._expiry)

    def holds(self, tag: bytes, key_id: bytes) -> bool:
        grant = (tag, key_id)
        expires = self._expiry.get(grant)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expiry[grant]
            return False
        return True
