"""Pair-level score cache: (route, model, truncate, query, passage) -> logit, and the endpoint
that answered it.

A logit depends only on the model, the truncation and the two texts, so it can be reused
across requests and callers; who may read it is the core's decision (``RERANKER_CACHE_SCOPE``),
made per entry from the endpoint that paid for it. Keys are keyed digests (``trust/digests.py``:
16-byte BLAKE2b where replicas share a store, the process's keyed string hash otherwise), so
the cache holds no text and no API key. Bounded by entries and by bytes, and by age (TTL).

What goes first when it is full is what has not been used for longest, in two generations
rather than entry by entry: new scores go into the young generation; when it would hold more
than half the capacity it becomes the old one, and the old one is dropped; a score read from
the old generation moves back to the young one. Every step is a dictionary operation done in
C for a whole request's pairs at once, where a strict LRU order costs a linked-list update
per pair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import islice, repeat

# What one entry costs: the key object, the entry tuple and its float, the dictionary slot.
ENTRY_BYTES = 200

# A pair's name: ``Digests.pairs`` (bytes) or ``Digests.local_pairs`` (int).
PairKey = bytes | int

# (logit, expiry, tag of the endpoint that answered it)
Entry = tuple[float, float, bytes]


class ScoreCache:
    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        capacity = max(0, min(max_entries, max_bytes // ENTRY_BYTES))
        self._capacity = capacity
        # Each generation holds at most this many (its most recent entries).
        self._generation = max(1, capacity // 2)
        self._ttl_s = ttl_s
        self._clock = clock
        self._young: dict[PairKey, Entry] = {}
        self._old: dict[PairKey, Entry] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    @property
    def size_bytes(self) -> int:
        return len(self) * ENTRY_BYTES

    def get_many(self, keys: Sequence[PairKey]) -> list[Entry | None]:
        """The entry of each key, or None; expired entries are misses. Hits are counted by
        the reader (``count``), which may not be allowed to read every entry it finds."""
        young, old = self._young, self._old
        found: list[Entry | None] = list(map(young.get, keys))
        if old and not all(found):
            from_old = list(map(old.get, keys))
            if any(from_old):
                for index, entry in enumerate(from_old):
                    if entry is not None and found[index] is None:
                        key = keys[index]
                        found[index] = young[key] = old.pop(key)
                if len(young) > self._generation:
                    self._turn()
        if not any(found):
            return found
        now = self._clock()
        for index, entry in enumerate(found):
            if entry is not None and entry[1] <= now:
                young.pop(keys[index], None)
                found[index] = None
        return found

    def count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def put_many(self, keys: Sequence[PairKey], logits: Sequence[float], tag: bytes) -> None:
        """Scores the endpoint ``tag`` answered, into the young generation."""
        if not self._capacity:
            return
        expires = self._clock() + self._ttl_s
        if len(self._young) + len(keys) > self._generation:
            self._turn()
        young = self._young
        young.update(zip(keys, zip(logits, repeat(expires), repeat(tag)), strict=True))
        if len(young) > self._generation:  # one request with more pairs than a generation
            _keep_last(young, self._generation)

    def _turn(self) -> None:
        """The young generation becomes the old one; the old one is dropped."""
        young = self._young
        _keep_last(young, self._generation)
        self._old, self._young = young, {}


def _keep_last(entries: dict[PairKey, Entry], count: int) -> None:
    """Drops all but the ``count`` most recently inserted entries."""
    excess = len(entries) - count
    if excess > 0:
        for key in list(islice(entries, excess)):
            del entries[key]
