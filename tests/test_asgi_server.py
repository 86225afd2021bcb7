"""The HTTP listener is set up so that responses are not held back by Nagle's algorithm."""

from __future__ import annotations

import socket

from tests.support import Emulator, Sidecar


def test_listeners_are_tcp_with_nodelay(sidecar: Sidecar, emulator: Emulator) -> None:
    for listener in (sidecar.server.http_listener, emulator.server.listener):
        # asyncio sets TCP_NODELAY on accepted connections only when the listener says TCP.
        assert listener.proto == socket.IPPROTO_TCP
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
