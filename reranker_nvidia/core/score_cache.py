"""Pair-level score cache: (where, model, truncate, query, passage) -> logit.

A logit depends only on the model, the truncation and the two texts, so it can be reused
across requests and callers; who may read it is the core's decision (``RERANKER_CACHE_SCOPE``).
Keys are 16-byte BLAKE2b digests, so the cache holds no text and no API key.
Bounded by entries and by bytes (least recently used goes first) and by age (TTL).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

# What one entry costs: the 48-byte key object, the float, and the OrderedDict link.
ENTRY_BYTES = 240


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def scope_digest(endpoint: str, model: str, truncate: str | None, owner: bytes = b"") -> bytes:
    """What a score depends on besides its texts; ``owner`` scopes it to one key's callers."""
    return digest(f"{endpoint}\x00{model}\x00{truncate or ''}\x00{owner.hex()}")


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
        self._entries: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
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

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """The cached logit of each key, or None; expired entries count as misses."""
        now = self._clock()
        found: list[float | None] = []
        entries = self._entries
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                found.append(None)
            elif entry[1] <= now:
                del entries[key]
                found.append(None)
            else:
                entries.move_to_end(key)
                found.append(entry[0])
        hits = sum(value is not None for value in found)
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def pass_over(self, count: int) -> None:
        """``count`` lookups the caller may not read: misses, as far as the caller sees."""
        self.misses += count

    def put_many(self, keys: Sequence[bytes], logits: Sequence[float]) -> None:
        if not self._capacity:
            return
        expires = self._clock() + self._ttl_s
        entries = self._entries
        for key, logit in zip(keys, logits, strict=True):
            entries[key] = (logit, expires)
            entries.move_to_end(key)
        while len(entries) > self._capacity:
            entries.popitem(last=False)
