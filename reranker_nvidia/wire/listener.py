"""The listening TCP socket both HTTP servers of the process bind (the sidecar's own engine
and uvicorn for the emulator)."""

from __future__ import annotations

import socket


def bind_tcp_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (port 0: any free one), not yet listening;
    closed again if binding fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on connections accepted from a
    # socket that says it is TCP, and without it a response that goes out in two writes (head,
    # then a large body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock
