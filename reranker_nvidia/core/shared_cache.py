"""The second level of the pair cache, in the shared store: what one replica paid NIM for,
every replica serves.

Keys are the in-process cache's digests under the project's namespace (no text, no key);
values are the 8-byte logit; the store expires them after the cache TTL. The keys NIM has
accepted are shared the same way (as digests), so a key verified through one replica may
read the cache through any. A request costs at most one round trip to read (one pipeline:
its missing pairs and, when needed, its key's verification) and one to write, sent without
waiting for it.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Sequence

from redis.asyncio.client import Pipeline

from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.store import NAMESPACE, SharedStore

_SCORE = NAMESPACE + b"score:"
_VERIFIED = NAMESPACE + b"verified:"
_LOGIT = struct.Struct("<d")
# Writes in flight at once; past this a write is dropped (the pair is paid again later).
MAX_PENDING_WRITES = 64


class SharedScores:
    def __init__(self, store: SharedStore, *, ttl_s: float, metrics: Metrics) -> None:
        self._store = store
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._metrics = metrics
        self._writes: set[asyncio.Task[None]] = set()

    async def lookup(
        self, keys: Sequence[bytes], key_digest: bytes | None
    ) -> tuple[list[float | None], bool]:
        """The stored logit of each key (None if absent), and whether ``key_digest`` is a key
        some replica saw NIM accept (False when not asked or the store did not answer)."""
        client = self._store.client

        async def read() -> list[object]:
            pipe = client.pipeline(transaction=False)
            pipe.mget([_SCORE + key for key in keys])
            if key_digest is not None:
                pipe.exists(_VERIFIED + key_digest)
            return await pipe.execute()

        answer = await self._store.run("read", read, keys=len(keys)) or []
        values = answer[0] if answer else None
        if not isinstance(values, list) or len(values) != len(keys):
            return [None] * len(keys), False
        found = [_logit(value) for value in values]
        self._metrics.store_hits.inc(sum(value is not None for value in found))
        return found, key_digest is not None and len(answer) > 1 and bool(answer[1])

    def store_scores(self, keys: Sequence[bytes], logits: Sequence[float]) -> None:
        def fill(pipe: Pipeline) -> None:
            for key, logit in zip(keys, logits, strict=True):
                pipe.set(_SCORE + key, _LOGIT.pack(logit), px=self._ttl_ms)

        self._write("write", fill, len(keys))

    def verified(self, key_digest: bytes) -> None:
        self._write("verify", lambda pipe: pipe.set(_VERIFIED + key_digest, b"1", px=self._ttl_ms))

    def rejected(self, key_digest: bytes) -> None:
        self._write("verify", lambda pipe: pipe.delete(_VERIFIED + key_digest))

    def _write(self, operation: str, fill: Callable[[Pipeline], object], keys: int = 1) -> None:
        if not self._store.available or len(self._writes) >= MAX_PENDING_WRITES:
            self._metrics.store_writes_dropped.inc()
            return
        client = self._store.client

        async def send() -> None:
            pipe = client.pipeline(transaction=False)
            fill(pipe)
            await pipe.execute()

        async def run() -> None:
            await self._store.run(operation, send, keys=keys)

        task = asyncio.ensure_future(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def flush(self) -> None:
        """Wait for the writes sent so far (at shutdown, and in tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)


def _logit(value: object) -> float | None:
    """A stored logit; anything else (another program's value, damage) is a miss."""
    if isinstance(value, bytes) and len(value) == _LOGIT.size:
        logit: float = _LOGIT.unpack(value)[0]
        return logit if math.isfinite(logit) else None
    return None
