"""The transport bounds every connection of the HTTP server holds, set in one place.

Each bound is enforced by the engine (server_connection.py) before the app sees a request, and a
refusal names the bound and the setting it comes from (``RERANKER_<FIELD>`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# How long a connection refused mid-request stays half-closed before it is reset: long enough for
# the client to read the answer, which closing at once with its unread bytes pending would lose.
LINGER_S = 2.0
# What is read (and dropped) meanwhile: past it, the rest is left unread.
LINGER_DISCARD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts in seconds, sizes in bytes; every one must be positive."""

    header_timeout_s: float = 10.0
    """From accept (TLS handshake included), or from the first byte of a kept-alive connection's
    next request, to the end of that request's headers; past it the connection is closed."""
    keep_alive_timeout_s: float = 5.0
    """Idle time allowed between requests on a kept-alive connection."""
    body_timeout_s: float = 30.0
    """From the end of the headers to the end of the body (past it: 408); also the time a client
    is given to take an answer it has stopped reading (past it the connection is reset)."""
    max_connections: int = 10_000
    """Open connections, counted from accept (TLS handshake included). Past it a new connection
    displaces the one that has waited longest for request headers (handshaking, idle between
    requests, or closing count as waiting); with none waiting, it is closed at once."""
    max_header_bytes: int = 32 * 1024
    """The request line and header block (431 past it); also bounds a run of chunk framing or
    trailers without data in a chunked body."""
    max_url_bytes: int = 8 * 1024
    """The request target (414 past it)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """A request body, declared or received (413 past it)."""
    max_buffered_body_bytes: int = 128 * 1024 * 1024
    """Request bodies held in memory across all connections, each charged ``body_charge`` of
    what has arrived, from its first byte until the request's handler returns. A body that
    would pass it is refused 503 with Retry-After: at once when its declared length could not
    fit, else when what arrives crosses the line. It must hold one body of ``max_body_bytes``."""
    settings_prefix: str = "RERANKER_"
    """How the settings are named in refusals: the prefix, then the field's name in capitals."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not value > 0:
                raise ValueError(f"{self.setting(field.name)} must be positive, not {value!r}")
        if self.max_buffered_body_bytes < body_charge(self.max_body_bytes):
            raise ValueError(
                f"{self.setting('max_buffered_body_bytes')} ({self.max_buffered_body_bytes}) "
                f"must hold one body of {self.setting('max_body_bytes')} "
                f"({self.max_body_bytes}): at least {body_charge(self.max_body_bytes)}"
            )

    def setting(self, name: str) -> str:
        """The name of the setting ``name`` comes from, as refusals and errors cite it."""
        return f"{self.settings_prefix}{name.upper()}"


# A body arrives in pieces (what each read from the socket gave). Pieces of at least
# SMALL_PIECE_BYTES are held as they came, each never copied or grown; smaller ones are gathered
# in a staging buffer, flushed as one piece once it holds STAGING_BYTES, so a body sent a few
# bytes per chunk costs no object per chunk, and no large buffer is ever grown in place.
SMALL_PIECE_BYTES = 4096
STAGING_BYTES = 16 * 1024
# A held piece's object header and its slot in the list of pieces.
PIECE_OVERHEAD_BYTES = 64
# The staging buffer at its largest (it may pass STAGING_BYTES by one small piece), with the
# eighth a growing bytearray may hold beyond that, and its object.
_STAGING_CHARGE = (STAGING_BYTES + SMALL_PIECE_BYTES) * 9 // 8 + PIECE_OVERHEAD_BYTES


def body_charge(size: int) -> int:
    """What holding a body of ``size`` bytes received so far is charged against
    ``max_buffered_body_bytes``: its bytes; an object for each held piece (at most two per
    SMALL_PIECE_BYTES, as a small piece is flushed from staging by a large one at worst); and
    the staging buffer. A function of the size alone, whatever the pieces."""
    if not size:
        return 0
    return size + size // 32 + PIECE_OVERHEAD_BYTES + _STAGING_CHARGE
