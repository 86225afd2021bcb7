"""Names for what the sidecar must not hold or show: keys, texts, endpoints, as keyed BLAKE2b
digests under one secret.

The secret is random per process unless replicas share a store; then it is
``RERANKER_CACHE_SECRET``, the same in every replica, so that replicas name a pair, a key and
an endpoint alike, and nobody without it can compute a name or forge a value in the store
(``shared_cache.py``). An API key is long and random, so its digest cannot be turned back into
it; without the secret, not even a guess can be checked against a digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from collections.abc import Hashable, Sequence

# Whether str and bytes hashes are keyed at random for this process (PYTHONHASHSEED unset or
# "random"), so that nobody can make two texts that hash alike.
_HASHES_ARE_RANDOM = bool(sys.flags.hash_randomization) and os.environ.get(
    "PYTHONHASHSEED", "random"
) in ("", "random")
SECRET_BYTES = 32
DIGEST_BYTES = 16
TAG_BYTES = 8


def derive_secret(text: str | None) -> bytes:
    """The digest key from a configured secret, or a random one for this process."""
    if text is None:
        return os.urandom(SECRET_BYTES)
    return hashlib.blake2b(
        text.encode(), digest_size=SECRET_BYTES, person=b"reranker-secret"
    ).digest()


class Digests:
    """Keyed digests, each kind under its own personalisation so no two kinds collide."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def key(self, api_key: str | None) -> bytes:
        """Who a key is (no key is a key too: "")."""
        return hashlib.blake2b(
            (api_key or "").encode(),
            digest_size=DIGEST_BYTES,
            key=self._secret,
            person=b"api-key",
        ).digest()

    def text(self, text: str) -> bytes:
        return hashlib.blake2b(
            text.encode("utf-8", "surrogatepass"),
            digest_size=DIGEST_BYTES,
            key=self._secret,
            person=b"text",
        ).digest()

    def pairs(self, prefix: bytes, items: Sequence[bytes], kind: bytes = b"pair") -> list[bytes]:
        """One name per (``prefix``, item) pair: the pair cache's keys for one request; each
        ``kind`` of item (text, image) is named under its own personalisation. The keyed state
        after ``prefix`` is made once and copied for each item, which costs a third less than
        keying a new hash for each."""
        seeded = hashlib.blake2b(
            prefix, digest_size=DIGEST_BYTES, key=self._secret, person=kind
        ).copy
        names = []
        for item in items:
            state = seeded()
            state.update(item)
            names.append(state.digest())
        return names

    def local_pairs(self, prefix: str, items: Sequence[Hashable]) -> list[int] | None:
        """Names for (``prefix``, item) pairs that only this process reads (no store): the
        interpreter's own string hash, SipHash under a key random per process, mixed with the
        secret; a fifth of the cost of ``pairs``. None where that hash is not keyed at random
        (``PYTHONHASHSEED`` fixed), as then pairs that collide could be made on purpose."""
        if not _HASHES_ARE_RANDOM:
            return None
        seed = hash((self._secret, prefix))
        return [hash((seed, item)) for item in items]

    def tag(self, identity: str) -> bytes:
        """A short name for an endpoint (scheme, host, port, path), the unit of trust."""
        return hashlib.blake2b(
            identity.encode(), digest_size=TAG_BYTES, key=self._secret, person=b"endpoint"
        ).digest()

    def mac(self, *parts: bytes) -> bytes:
        """Authenticates a value kept where others can write (the shared store)."""
        return hashlib.blake2b(
            b"".join(parts), digest_size=DIGEST_BYTES, key=self._secret, person=b"store-value"
        ).digest()

    def verify(self, mac: bytes, *parts: bytes) -> bool:
        return hmac.compare_digest(mac, self.mac(*parts))
