"""What one gRPC peer may hold: connections, streams, time, pings and header bytes.

The gRPC server (grpc.aio over gRPC's C core) shares the process, its open files and its
``maximum_concurrent_rpcs`` pool with everything else, and the core bounds little of it by
default: a connection may stay silent for two minutes before its handshake times out, there
is no cap on connections, a connection may open as many streams as it likes and keep each
one's slot in the pool for as long as it does not take the answer (a flow-control window
that never opens), or does not finish sending the request. ``grpc_server_options`` sets the
channel arguments that bound each of these, from the sidecar's settings;
``grpc_calls.CallBounds`` adds what channel arguments cannot give: a request that never
finishes arriving, an answer nobody takes, and a pool such calls cannot lock others out of.
tests/test_grpc_abuse.py attacks a real sidecar with each.

What the core offers no bound for stays open: frames that need no answer or only an
acknowledgement (SETTINGS, WINDOW_UPDATE, PRIORITY, PING acknowledgements, unknown types)
cost CPU in proportion to the peer's bandwidth for as long as it reads; a PING flood is sent
GOAWAY at its third ping, but the pings already on their way are still read and answered;
and streaming calls (the health service's Watch) that many connections keep open can fill
``maximum_concurrent_rpcs`` until the keepalive (if they stop reading) or the connection age
ends them. None of these stops the HTTP server or its readiness probe.
"""

from __future__ import annotations

import resource

from reranker_nvidia.server.files import RESERVED_FILES
from reranker_nvidia.settings import Settings

# Calls queued in gRPC's core before the service asks for them; past it they are cancelled.
GRPC_MAX_PENDING_CALLS = 10_000
# gRPC's share of the open files left after the reserved ones (the HTTP server's cap takes the
# rest), between these bounds: gRPC clients multiplex calls over few long-lived connections.
GRPC_CONNECTION_SHARE = 8
MIN_GRPC_CONNECTIONS = 16
MAX_GRPC_CONNECTIONS = 1024
# Every connection is asked to go away after this long (with a tenth of jitter, gRPC's own),
# so that one holding streams it never lets finish is closed in the end; clients reconnect
# on their own, which also spreads them again over replicas behind a TCP load balancer.
MAX_CONNECTION_AGE_S = 300.0
# A connection without calls is closed after this many RERANKER_KEEP_ALIVE_TIMEOUT_S: longer
# than an HTTP connection's, as a gRPC client pays a new handshake on its next call.
IDLE_TIMEOUT_PER_KEEP_ALIVE = 12
# Pings a client may send while no data flows before it is sent GOAWAY (ENHANCE_YOUR_CALM,
# "too_many_pings"), and the interval that makes a ping one of them. gRPC's own defaults,
# set here so that a PING flood is closed at its third ping whatever the core's defaults.
MAX_PING_STRIKES = 2
MIN_PING_INTERVAL_S = 300.0
# Header bytes per call: past the soft limit some calls, past the hard one every call, is
# refused with RESOURCE_EXHAUSTED; the connection stays. gRPC's defaults, set explicitly.
METADATA_SOFT_LIMIT = 8 * 1024
METADATA_HARD_LIMIT = 16 * 1024
_MAX_MS = 2**31 - 1  # channel arguments are C ints


def streams_per_connection(max_in_flight: int, max_concurrent_rpcs: int) -> int:
    """The HTTP/2 MAX_CONCURRENT_STREAMS the server advertises and enforces: past
    RERANKER_MAX_IN_FLIGHT by half the headroom of the call pool (``max_concurrent_rpcs``),
    so that one connection's calls past the limit are still refused by admission at once
    rather than queued by the client, while the other half of the headroom stays free for
    every other connection (health checks among them) whatever one connection holds."""
    headroom = max(0, max_concurrent_rpcs - max_in_flight)
    return max(1, min(max_concurrent_rpcs - 1, max_in_flight + headroom // 2))


def grpc_connection_cap(file_limit: int | None = None) -> int:
    """gRPC connections at once: a share of the open-file limit (the process's own by default).

    The HTTP server's default cap should leave these free: ``default_max_connections()``
    minus this.
    """
    if file_limit is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_GRPC_CONNECTIONS
        file_limit = soft
    share = (file_limit - RESERVED_FILES) // GRPC_CONNECTION_SHARE
    return max(MIN_GRPC_CONNECTIONS, min(MAX_GRPC_CONNECTIONS, share))


def _ms(seconds: float) -> int:
    return max(1, min(_MAX_MS, round(seconds * 1000)))


def grpc_server_options(
    settings: Settings, *, max_concurrent_rpcs: int, file_limit: int | None = None
) -> list[tuple[str, int | str]]:
    """Every channel argument the gRPC server is created with.

    ``max_concurrent_rpcs``: the server's call pool (its ``maximum_concurrent_rpcs``), of
    which one connection may hold a part only. ``file_limit``: the open-file limit the
    connection cap is a share of (default: the process's soft limit).
    """
    header_s = settings.header_timeout_s
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # gRPC cancels calls queued beyond its pending-call limit before they reach the
        # service; raised so that a burst is answered by admission instead.
        ("grpc.server.max_pending_requests", GRPC_MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * GRPC_MAX_PENDING_CALLS),
        # A second sidecar on a taken port must fail, not share it and split calls.
        ("grpc.so_reuseport", 0),
        # Connections: a connection has RERANKER_HEADER_TIMEOUT_S to finish TLS and send the
        # HTTP/2 preface and SETTINGS (gRPC's default: 120 s), and the connections at once are
        # capped below the open-file limit, so that silent connections neither hold the port
        # nor take the files the HTTP server (and its readiness probe) needs: past the cap a
        # new connection is closed at once.
        ("grpc.server_handshake_timeout_ms", _ms(header_s)),
        ("grpc.max_allowed_incoming_connections", grpc_connection_cap(file_limit)),
        # Streams: one connection may not hold more than its share of
        # maximum_concurrent_rpcs, whether its calls wait for a request that never finishes
        # or for a window that never opens (gRPC's default: no limit). Overload protection
        # counts a stream until gRPC has freed it, not until it is reset, so that a rapid
        # reset (HEADERS then RST_STREAM, over and over) is refused streams instead of
        # piling calls up in memory; without it the limit does not hold against that. Its
        # price: a client keeping the whole limit open may have a few calls refused
        # (UNAVAILABLE, never processed, safe to retry) while its previous ones are freed.
        (
            "grpc.max_concurrent_streams",
            streams_per_connection(settings.max_in_flight, max_concurrent_rpcs),
        ),
        ("grpc.http.overload_protection", 1),
        # Time: a connection that has sent nothing for RERANKER_HEADER_TIMEOUT_S while it has
        # calls is pinged, and one that does not answer a ping within that long is closed,
        # with its calls (the ping timeout also covers the pings gRPC sends by itself, which
        # otherwise wait a minute); a connection without calls is closed when idle; every
        # connection is asked to go away at its age, and closed after a grace long enough
        # for any call it has in flight (RERANKER_REQUEST_TIMEOUT_S bounds them).
        ("grpc.keepalive_time_ms", _ms(header_s)),
        ("grpc.keepalive_timeout_ms", _ms(header_s)),
        ("grpc.http2.ping_timeout_ms", _ms(header_s)),
        (
            "grpc.max_connection_idle_ms",
            _ms(IDLE_TIMEOUT_PER_KEEP_ALIVE * settings.keep_alive_timeout_s),
        ),
        ("grpc.max_connection_age_ms", _ms(MAX_CONNECTION_AGE_S)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.request_timeout_s + header_s)),
        # Pings: see MAX_PING_STRIKES. A client's pings while it has no calls count as well.
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_PING_INTERVAL_S)),
        ("grpc.keepalive_permit_without_calls", 0),
        # Header bytes: see METADATA_SOFT_LIMIT.
        ("grpc.max_metadata_size", METADATA_SOFT_LIMIT),
        ("grpc.absolute_max_metadata_size", METADATA_HARD_LIMIT),
    ]
