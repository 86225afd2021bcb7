"""Pair-level score cache: (route, model, truncate, query, passage) -> logit, and the endpoint
that answered it.

A logit depends only on the model, the truncation and the two texts, so it can be reused
across requests and callers; who may read it is the core's decision (``RERANKER_CACHE_SCOPE``),
made per entry from the endpoint that paid for it. Keys are keyed digests (``trust/digests.py``:
16-byte BLAKE2b where replicas share a store, the process's keyed string hash otherwise), so
the cache holds no text and no API key. Bounded by entries and by bytes (least recently
used goes first) and by age (TTL).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

# What one entry costs: the 48-byte key object, the entry tuple, the tag, the OrderedDict link.
ENTRY_BYTES = 280

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
        self._capacity = max(0, min(max_entries, max_bytes // ENTRY_BYTES))
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[PairKey, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return len(self._entries) * ENTRY_BYTES

    def get_many(self, keys: Sequence[PairKey]) -> list[Entry | None]:
        """The entry of each key, or None; expired entries are misses. Hits are counted by
        the reader (``count``), which may not be allowed to read every entry it finds."""
        entries = self._entries
        found: list[Entry | None] = list(map(entries.get, keys))
        if not any(found):
            return found
        now = self._clock()
        for index, entry in enumerate(found):
            if entry is not None:
                key = keys[index]
                if entry[1] <= now:
                    del entries[key]
                    found[index] = None
                else:
                    entries.move_to_end(key)
        return found

    def count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def put_many(self, keys: Sequence[PairKey], logits: Sequence[float], tag: bytes) -> None:
        """Scores the endpoint ``tag`` answered: new entries go last (most recent)."""
        if not self._capacity:
            return
        expires = self._clock() + self._ttl_s
        entries = self._entries
        entries.update(zip(keys, ((logit, expires, tag) for logit in logits), strict=True))
        while len(entries) > self._capacity:
            entries.popitem(last=False)
