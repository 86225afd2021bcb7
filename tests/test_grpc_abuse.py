"""What an attacker on the gRPC port tries with HTTP/2 itself, and what the sidecar must do.

Each attack runs against a real sidecar on loopback: in this process where only its gRPC
answers are watched, in a process of its own where its open files, memory or CPU time are.
The attacker (bench/abuse.py, which the soak's attacks share) speaks HTTP/2 frame by frame
so that it can do what a well-behaved client never would: open more streams than it is
allowed, never open its flow-control window, reset every stream it opens, flood pings. No
bound here is tighter than seconds.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.abuse import (
    ENHANCE_YOUR_CALM,
    HEALTH_CHECK,
    Peer,
    closed_by_server,
    ping_flood,
    rapid_reset,
    zero_window,
)
from bench.processes import rss_mib, stop
from reranker_nvidia.server import grpc_limits
from reranker_nvidia.server.grpc_calls import CallBounds
from reranker_nvidia.server.grpc_limits import grpc_server_options
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import SERVE, SERVING, BackgroundLoop, clean_environment, sidecar_settings

# max_in_flight=8: a call pool of 8 + 64 = 72, of which one connection may hold 8 + 32 = 40.
SMALL_POOL = 8


def get_meta(target: str, timeout_s: float = 5) -> grpc.StatusCode:
    try:
        with grpc.insecure_channel(target) as channel:
            pb_grpc.RerankerServiceStub(channel).GetMeta(pb.GetMetaRequest(), timeout=timeout_s)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def health_check(target: str, timeout_s: float = 5) -> grpc.StatusCode:
    try:
        with grpc.insecure_channel(target) as channel:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def eventually_served(call: Callable[[], grpc.StatusCode], timeout_s: float) -> grpc.StatusCode:
    """The first OK within ``timeout_s``, else the last failure."""
    deadline = time.monotonic() + timeout_s
    code = call()
    while code is not grpc.StatusCode.OK and time.monotonic() < deadline:
        time.sleep(0.2)
        code = call()
    return code


def within(timeout_s: float, condition: Callable[[], bool]) -> bool:
    """Whether ``condition()`` holds within ``timeout_s`` (checked every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@contextmanager
def reading(peers: list[Peer]) -> Iterator[None]:
    """The peers read (and acknowledge pings) in the background, as live clients do."""
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.is_set() and not all(peer.closed for peer in peers):
            for peer in peers:
                if not peer.closed:
                    peer.read(0.02)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stopped.set()
        worker.join(5)


@dataclass
class SidecarProcess:
    pid: int
    http_port: int
    grpc_port: int

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAUNCH = (
    "import resource, sys\n"
    "files = int(sys.argv[1])\n"
    "if files: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))\n"
    "from reranker_nvidia.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@contextmanager
def sidecar_process(file_limit: int = 0, **settings: str) -> Iterator[SidecarProcess]:
    """``reranker-nvidia serve`` in a process of its own, with at most ``file_limit`` open
    files (0: as this process) and ``RERANKER_*`` settings from ``settings``."""
    env = clean_environment()
    env.update({f"RERANKER_{name.upper()}": value for name, value in settings.items()})
    child = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(file_limit), *SERVE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    lines: deque[str] = deque(maxlen=50)
    try:
        match = None
        while match is None:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("the sidecar did not start:\n" + "".join(lines))
            lines.append(line)
            match = re.search(SERVING, line)
        threading.Thread(target=lambda: lines.extend(child.stdout or ()), daemon=True).start()
        yield SidecarProcess(child.pid, int(match[1]), int(match[2]))
    finally:
        stop(child)
        child.stdout.close()


# 1. Connections: silent ones neither take the files the HTTP server needs nor hold the port.


def test_silent_connections_leave_the_http_probe_its_files_and_are_closed() -> None:
    # 256 open files: 300 silent connections would take them all (today's failure: the
    # readiness probe on the HTTP port times out, as every accept fails).
    with sidecar_process(file_limit=256, header_timeout_s="1") as sidecar:
        silent = [
            socket.create_connection(("127.0.0.1", sidecar.grpc_port), timeout=5)
            for _ in range(300)
        ]
        try:
            ready = httpx.get(f"http://127.0.0.1:{sidecar.http_port}/.well-known/ready", timeout=5)
            assert ready.status_code == 204
            # Past the cap closed at once, below it within the handshake timeout.
            assert all(closed_by_server(connection, 5) for connection in silent)
            assert eventually_served(lambda: get_meta(sidecar.grpc_target), 5) is grpc.StatusCode.OK
        finally:
            for connection in silent:
                connection.close()


def test_connections_that_go_quiet_after_the_handshake_are_closed(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(keep_alive_timeout_s=0.1)  # idle gRPC connections: 1.2 s
    peers = [Peer(sidecar.server.grpc_port) for _ in range(5)]
    try:
        for peer in peers:
            assert peer.read_until(lambda peer: peer.goaway is not None, 5)
            assert closed_by_server(peer.sock, 5)
    finally:
        for peer in peers:
            peer.close()


# 2. Streams: one connection cannot hold every call; connections that hold calls end.


def test_one_connection_that_takes_no_answer_cannot_hold_every_call(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(max_in_flight=SMALL_POOL)
    peer = Peer(sidecar.server.grpc_port, window=0)
    try:
        # 200 calls at once, before the server's SETTINGS (and its stream limit) are read.
        peer.send(b"".join(peer.request() for _ in range(200)))
        peer.read_until(lambda peer: peer.refused > 0, 5)
        assert peer.refused > 0, "the server did not refuse streams past its limit"
        assert get_meta(sidecar.grpc_target) is grpc.StatusCode.OK
    finally:
        peer.close()


def test_answers_nobody_takes_give_their_places_to_other_callers(
    make_sidecar: SidecarFactory,
) -> None:
    """Connections that stay alive (they answer pings) but never open their window hold more
    calls than the pool has; every other caller, health checks included, is served once
    those answers have waited EVICTABLE_AFTER_S, and the connections are not cut off."""
    sidecar = make_sidecar(max_in_flight=SMALL_POOL)  # keepalive 10 s, connection age 300 s
    target = sidecar.grpc_target
    peers = [Peer(sidecar.server.grpc_port, window=0) for _ in range(3)]
    try:
        for peer in peers:
            peer.send(b"".join(peer.request() for _ in range(40)))
        with reading(peers):
            served = eventually_served(lambda: get_meta(target, timeout_s=2), 10)
            assert served is grpc.StatusCode.OK
            assert [get_meta(target) for _ in range(20)] == [grpc.StatusCode.OK] * 20
            assert [health_check(target) for _ in range(5)] == [grpc.StatusCode.OK] * 5
        assert not any(peer.closed for peer in peers)
    finally:
        for peer in peers:
            peer.close()


def test_calls_whose_request_never_comes_give_their_places_to_other_callers(
    make_sidecar: SidecarFactory,
) -> None:
    """More calls than the pool has, none of them ever sending its request: every other
    caller is served once they have waited EVICTABLE_AFTER_S, long before the body timeout
    (30 s) would end them."""
    sidecar = make_sidecar(max_in_flight=SMALL_POOL)
    target = sidecar.grpc_target
    peers = [Peer(sidecar.server.grpc_port) for _ in range(3)]
    try:
        for peer in peers:
            peer.send(b"".join(peer.request(HEALTH_CHECK, body=None) for _ in range(40)))
        with reading(peers):
            served = eventually_served(lambda: health_check(target, timeout_s=2), 10)
            assert served is grpc.StatusCode.OK
            assert [health_check(target) for _ in range(5)] == [grpc.StatusCode.OK] * 5
            assert [get_meta(target) for _ in range(5)] == [grpc.StatusCode.OK] * 5
    finally:
        for peer in peers:
            peer.close()


def test_connections_that_stop_reading_are_closed_with_their_calls(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(max_in_flight=SMALL_POOL, header_timeout_s=1)
    # Together more calls than the pool has; never read again.
    peers = zero_window(sidecar.server.grpc_port, connections=3, calls=40)
    try:
        code = eventually_served(lambda: get_meta(sidecar.grpc_target, timeout_s=2), 10)
        assert code is grpc.StatusCode.OK
        assert all(closed_by_server(peer.sock, 5) for peer in peers)
    finally:
        for peer in peers:
            peer.close()


def test_connections_that_answer_pings_but_take_no_answer_end_at_their_age(
    make_sidecar: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_limits, "MAX_CONNECTION_AGE_S", 1.0)
    # Grace: RERANKER_REQUEST_TIMEOUT_S + RERANKER_HEADER_TIMEOUT_S = 2 s.
    sidecar = make_sidecar(max_in_flight=SMALL_POOL, header_timeout_s=1, request_timeout_s=1)
    peers = [Peer(sidecar.server.grpc_port, window=0) for _ in range(3)]
    try:
        for peer in peers:
            peer.send(b"".join(peer.request() for _ in range(40)))
        with reading(peers):
            code = eventually_served(lambda: get_meta(sidecar.grpc_target, timeout_s=2), 10)
            # Their calls may give way to others sooner (answers nobody takes); the
            # connections themselves still end at their age.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(peer.goaway is None for peer in peers):
                time.sleep(0.05)
        assert code is grpc.StatusCode.OK
        assert all(peer.goaway is not None for peer in peers)
    finally:
        for peer in peers:
            peer.close()


@pytest.fixture
def health_server(background: BackgroundLoop) -> Iterator[grpc_aio.Server]:
    """A gRPC server as the sidecar builds it (options, pool, call bounds of 1 s),
    serving the health service; port in ``server.port``."""
    settings = sidecar_settings("http://127.0.0.1:9", max_in_flight=SMALL_POOL)
    pool = SMALL_POOL + 64

    async def start() -> tuple[grpc_aio.Server, int]:
        server = grpc_aio.server(
            interceptors=[CallBounds(1.0, pool)],
            maximum_concurrent_rpcs=2 * pool,
            options=grpc_server_options(settings, max_concurrent_rpcs=pool),
        )
        servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = background.run(start())
    server.port = port  # type: ignore[attr-defined]
    yield server
    background.run(server.stop(None))


def test_calls_whose_request_never_arrives_end_at_the_body_timeout(
    health_server: Any,
) -> None:
    port = health_server.port
    peers = [Peer(port) for _ in range(3)]

    def check() -> grpc.StatusCode:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.OK

    try:
        for peer in peers:  # together more calls than the pool has, none with its request
            peer.send(b"".join(peer.request(HEALTH_CHECK, body=None) for _ in range(40)))
        with reading(peers):
            assert eventually_served(check, 5) is grpc.StatusCode.OK
            deadline_exceeded = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
            assert within(5, lambda: any(deadline_exceeded in peer.statuses for peer in peers))
    finally:
        for peer in peers:
            peer.close()


# 3. Rapid reset: streams opened and reset at once are refused, not piled up.


def test_rapid_reset_is_refused_streams_and_memory_stays_bounded() -> None:
    with sidecar_process() as sidecar:
        before = rss_mib(sidecar.pid)
        flooding = threading.Event()
        floods = []
        attacker = threading.Thread(
            target=lambda: floods.append(rapid_reset(sidecar.grpc_port, 2, flooding)),
            daemon=True,
        )
        attacker.start()
        try:
            assert flooding.wait(5)
            assert get_meta(sidecar.grpc_target) is grpc.StatusCode.OK
        finally:
            attacker.join(10)
        (flood,) = floods
        flood.peer.read_until(lambda peer: peer.refused > 0, 2)
        grown = rss_mib(sidecar.pid) - before
        flood.peer.close()
    assert flood.peer.refused > 0, "no stream was refused: nothing bounds the streams being reset"
    assert grown < 64, f"memory grew by {grown:.0f} MiB in a 2 s rapid reset"


# 4. Pings: a flood is sent GOAWAY (ENHANCE_YOUR_CALM) and closed at once.


def test_a_ping_flood_is_sent_goaway_and_closed() -> None:
    with sidecar_process() as sidecar:
        cpu_before = sidecar.cpu_s()
        flood = ping_flood(sidecar.grpc_port, timeout_s=5)
        goaway = flood.peer.goaway
        assert goaway is not None
        assert goaway.error_code == ENHANCE_YOUR_CALM
        assert goaway.additional_data == b"too_many_pings"
        assert closed_by_server(flood.peer.sock, 5)
        assert sidecar.cpu_s() - cpu_before < 1.5
        flood.peer.close()


# 5. Header bytes: a huge header is refused with a clear error; the connection stays usable.


def test_a_huge_header_is_refused_and_the_connection_stays(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar()
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetMeta(pb.GetMetaRequest(), metadata=(("x-big", "a" * 20_000),), timeout=5)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "metadata size exceeds hard limit" in (raised.value.details() or "")
        stub.GetMeta(pb.GetMetaRequest(), timeout=5)
