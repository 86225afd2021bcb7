"""The second level of the pair cache, in the shared store: what one replica paid NIM for,
every replica serves.

The store is untrusted storage: other programs may share it, and anyone who can write to it
could plant entries. So every name is a keyed digest under ``RERANKER_CACHE_SECRET`` (nobody
without the secret can compute which name a pair or a key would have), and every value
carries a MAC over its name, its content and its expiry (a value copied to another name,
truncated, made up or kept past its time by someone who can write to the store is a miss).
Scores are stored with the tag of the endpoint that answered them; the keys an
endpoint accepted are shared the same way, so a key verified at an endpoint through one
replica may read that endpoint's scores through any. A request costs at most one round trip
to read (one pipeline: its missing pairs and, when needed, its key's verifications) and one to
write, sent without waiting for it.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable, Sequence

from redis.asyncio.client import Pipeline

from reranker_nvidia.core.cache.store import NAMESPACE, SharedStore
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.trust.digests import DIGEST_BYTES, TAG_BYTES, Digests

_SCORE = NAMESPACE + b"score:"
_VERIFIED = NAMESPACE + b"verified:"
_LOGIT = struct.Struct("<d")
# When a value stops being true: milliseconds since the epoch (replicas share a wall clock to
# well within a TTL).
_EXPIRY = struct.Struct("<q")
_VALUE_BYTES = _LOGIT.size + TAG_BYTES + _EXPIRY.size + DIGEST_BYTES
_GRANT_BYTES = _EXPIRY.size + DIGEST_BYTES
# Writes in flight at once; past this a write is dropped (the pair is paid again later).
MAX_PENDING_WRITES = 64

# (endpoint tag, key digest)
Grant = tuple[bytes, bytes]


def verified_name(digests: Digests, grant: Grant) -> bytes:
    """Where the store records that an endpoint accepted a key."""
    return _VERIFIED + digests.mac(b"verified", *grant)


class SharedScores:
    def __init__(
        self,
        store: SharedStore,
        *,
        ttl_s: float,
        metrics: Metrics,
        digests: Digests,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._metrics = metrics
        self._digests = digests
        self._wall_clock = wall_clock
        self._writes: set[asyncio.Task[None]] = set()

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _expiry(self) -> bytes:
        return _EXPIRY.pack(self._now_ms() + self._ttl_ms)

    def _current(self, expiry: bytes) -> bool:
        return bool(_EXPIRY.unpack(expiry)[0] > self._now_ms())

    async def lookup(
        self, keys: Sequence[bytes], grants: Sequence[Grant]
    ) -> tuple[list[tuple[float, bytes] | None], set[Grant]]:
        """The stored (logit, endpoint tag) of each key (None if absent or not authentic), and
        which of ``grants`` some replica saw the endpoint accept (none when the store did not
        answer)."""
        client = self._store.client
        names = [_SCORE + key for key in keys]
        grant_names = [verified_name(self._digests, grant) for grant in grants]

        async def read() -> list[object]:
            pipe = client.pipeline(transaction=False)
            pipe.mget(names)
            if grant_names:
                pipe.mget(grant_names)
            return await pipe.execute()

        answer = await self._store.run("read", read, keys=len(keys)) or []
        values = answer[0] if answer else None
        if not isinstance(values, list) or len(values) != len(keys):
            return [None] * len(keys), set()
        found = [self._score(name, value) for name, value in zip(names, values, strict=True)]
        self._metrics.store_hits.inc(sum(entry is not None for entry in found))
        verified: set[Grant] = set()
        if grant_names and len(answer) > 1 and isinstance(answer[1], list):
            for grant, name, value in zip(grants, grant_names, answer[1], strict=False):
                if self._grant_holds(name, value):
                    verified.add(grant)
        return found, verified

    def _grant_holds(self, name: bytes, value: object) -> bool:
        if not isinstance(value, bytes) or len(value) != _GRANT_BYTES:
            return False
        expiry, mac = value[: _EXPIRY.size], value[_EXPIRY.size :]
        return self._digests.verify(mac, name, expiry) and self._current(expiry)

    def _score(self, name: bytes, value: object) -> tuple[float, bytes] | None:
        """A stored score; anything else (another program's value, damage, a forgery) is a
        miss."""
        if not isinstance(value, bytes) or len(value) != _VALUE_BYTES:
            return None
        body, mac = value[:-DIGEST_BYTES], value[-DIGEST_BYTES:]
        if not self._digests.verify(mac, name, body) or not self._current(body[-_EXPIRY.size :]):
            return None
        logit: float = _LOGIT.unpack_from(body)[0]
        tag = body[_LOGIT.size : _LOGIT.size + TAG_BYTES]
        return (logit, tag) if math.isfinite(logit) else None

    def store_scores(self, keys: Sequence[bytes], logits: Sequence[float], tag: bytes) -> None:
        mac = self._digests.mac
        suffix = tag + self._expiry()

        def fill(pipe: Pipeline) -> None:
            for key, logit in zip(keys, logits, strict=True):
                name = _SCORE + key
                body = _LOGIT.pack(logit) + suffix
                pipe.set(name, body + mac(name, body), px=self._ttl_ms)

        self._write("write", fill, len(keys))

    def verified(self, tag: bytes, key_id: bytes) -> None:
        name = verified_name(self._digests, (tag, key_id))
        expiry = self._expiry()
        value = expiry + self._digests.mac(name, expiry)
        self._write("verify", lambda pipe: pipe.set(name, value, px=self._ttl_ms))

    def rejected(self, tag: bytes, key_id: bytes) -> None:
        name = verified_name(self._digests, (tag, key_id))
        self._write("verify", lambda pipe: pipe.delete(name))

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
