"""The shared store and the NIM budget, piece by piece: the budget's rule on a fake clock, a
store that is down from the start or goes down, and NIM's 429 pausing a key everywhere."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import grpc
import httpx
import pytest
from pydantic import SecretStr

from bench.processes import RedisServer
from reranker_nvidia.client import RerankerClient
from reranker_nvidia.core.cache.shared_cache import SharedScores, verified_name
from reranker_nvidia.core.cache.store import NAMESPACE, RETRY_AFTER_FAILURE_S, SharedStore
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.trust.digests import Digests, derive_secret
from reranker_nvidia.core.trust.verified_keys import SHARED_RECHECK_S, VerifiedKeys
from reranker_nvidia.core.upstream.budget import LocalBudget, NimBudget, Room
from reranker_nvidia.emulator import Fault
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, BackgroundLoop, Emulator


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_calls_per_minute_are_counted_over_a_sliding_window() -> None:
    clock = FakeClock()
    budget = LocalBudget(3, None, clock=clock)
    assert [budget.admit(b"k", 1) for _ in range(3)] == [Room(0)] * 3
    clock.now += 20
    assert budget.admit(b"k", 1) == Room(40.0)  # the first call leaves the window at 60
    assert budget.admit(b"other key", 1) == Room(0)  # per key
    clock.now += 40
    assert budget.admit(b"k", 1) == Room(0)


def test_passages_per_minute_wait_for_enough_room_and_a_too_big_call_never_fits() -> None:
    clock = FakeClock()
    budget = LocalBudget(None, 100, clock=clock)
    assert budget.admit(b"k", 60) == Room(0)
    clock.now += 10
    assert budget.admit(b"k", 30) == Room(0)
    assert budget.admit(b"k", 50) == Room(50.0)  # room once the 60 leave, at 60 s
    assert budget.admit(b"k", 101) is None
    budget.pause(b"k", 5)
    assert budget.admit(b"k", 1) == Room(5.0, paused=True)
    clock.now += 60
    assert budget.admit(b"k", 50) == Room(0)


async def test_over_budget_waits_when_the_deadline_allows_and_is_refused_otherwise() -> None:
    clock = FakeClock()
    budget = NimBudget(1, None, metrics=Metrics(), clock=clock)
    await budget.admit(b"endpoint+key", 1, deadline=clock.now + 5)
    with pytest.raises(RerankError) as refused:
        await budget.admit(b"endpoint+key", 1, deadline=clock.now + 5)
    assert refused.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert refused.value.rate_limited
    assert refused.value.retry_after_s == pytest.approx(60)
    assert "RERANKER_UPSTREAM_RPM" in refused.value.message


async def test_a_store_that_is_down_is_reported_once_and_left_alone_for_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    metrics = Metrics()
    store = SharedStore(
        f"redis://:hunter22@127.0.0.1:{closed_port()}/0",
        password=None,
        timeout_s=0.5,
        metrics=metrics,
        clock=clock,
    )
    caplog.set_level(logging.WARNING, "reranker_nvidia.store")
    try:
        assert not await store.check()
        assert not store.available  # asked again only after RETRY_AFTER_FAILURE_S
        assert await store.run("read", store.client.dbsize) is None
        clock.now += RETRY_AFTER_FAILURE_S
        assert not await store.check()
    finally:
        await store.aclose()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "failed" in warnings[0] and "hunter22" not in warnings[0]
    assert 'reranker_store_errors_total{operation="ping"} 2.0' in metrics.render().decode()


def test_the_sidecar_starts_and_serves_with_the_store_unreachable(
    make_sidecar: SidecarFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sidecar = make_sidecar(
        cache_url=f"redis://127.0.0.1:{closed_port()}/0", cache_size=1000, upstream_rpm=100
    )
    for _ in range(2):
        response = httpx.post(
            sidecar.http_url + "/rerank", json={"query": "mill", "documents": ["the mill", "a"]}
        )
        assert response.status_code == 200
    assert len(emulator.state.calls) == 1, "the replica's own cache still answers"
    assert any("is not reachable" in record.getMessage() for record in caplog.records)
    metrics = httpx.get(sidecar.http_url + "/metrics").text
    assert "reranker_store_errors_total" in metrics


def test_a_bad_store_url_is_a_settings_error_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="redis://"):
        Settings(cache_url=SecretStr("http://cache:6379"))


def test_a_429_from_nim_pauses_the_key_on_every_replica(
    make_sidecar: SidecarFactory, emulator: Emulator, store: RedisServer
) -> None:
    replicas = [make_sidecar(cache_url=store.url, upstream_rpm=1000) for _ in range(2)]
    key = f"nvapi-paused-{uuid.uuid4().hex}"
    emulator.state.faults.append(
        Fault(status=429, body={"detail": "slow down"}, headers={"Retry-After": "30"})
    )
    # Five seconds to spare: too few to wait out the pause, so the refusal comes at once.
    headers = {"Authorization": f"Bearer {key}", "X-Request-Timeout": "5"}
    first = httpx.post(
        replicas[0].http_url + "/rerank", json={"query": "q", "documents": ["a"]}, headers=headers
    )
    assert first.status_code == 429
    calls = len(emulator.state.calls)
    second = httpx.post(
        replicas[1].http_url + "/rerank", json={"query": "q", "documents": ["a"]}, headers=headers
    )
    assert second.status_code == 429
    assert "NIM answered 429" in second.json()["error"]
    assert len(emulator.state.calls) == calls, "the other replica called NIM during the pause"
    assert 25 <= int(second.headers["Retry-After"]) <= 30
    # Another key is not paused.
    other = httpx.post(
        replicas[1].http_url + "/rerank",
        json={"query": "q", "documents": ["a"]},
        headers={"Authorization": f"Bearer {REQUEST_KEY}"},
    )
    assert other.status_code == 200


def test_grpc_says_when_to_come_back_over_budget(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(upstream_rpm=1)
    with RerankerClient(sidecar.grpc_target) as client:
        client.rank("first", ["a"])
        channel = grpc.insecure_channel(sidecar.grpc_target)
        stub = pb_grpc.RerankerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Rank(pb.RankRequest(query="second", documents=["a"]), timeout=5)
        channel.close()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    error = refused.value
    assert isinstance(error, grpc.Call)
    trailing = {item.key: item.value for item in error.trailing_metadata() or ()}
    assert 55 <= int(trailing["retry-after"]) <= 60


def test_a_store_that_never_answers_costs_a_request_its_timeout_only(
    make_sidecar: SidecarFactory, emulator: Emulator, background: BackgroundLoop
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # reads every command and answers none
            pass
        writer.close()

    server = background.run(asyncio.start_server(silent, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    sidecar = make_sidecar(
        cache_url=f"redis://127.0.0.1:{port}/0", cache_size=1000, cache_timeout_ms=50
    )
    time.sleep(RETRY_AFTER_FAILURE_S)  # past the pause after the start-up check timed out
    started = time.monotonic()
    response = httpx.post(
        sidecar.http_url + "/rerank", json={"query": "mill", "documents": ["the mill"]}
    )
    assert response.status_code == 200
    assert time.monotonic() - started < 5, "the request waited on the store"
    assert len(emulator.state.calls) == 1
    metrics = httpx.get(sidecar.http_url + "/metrics").text
    assert 'reranker_store_errors_total{operation="read"} 1.0' in metrics
    server.close()


def test_the_store_password_comes_from_the_url_or_its_own_setting(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    store = RedisServer(password="s3cret-store-pw")
    store.start()
    try:
        for settings in (
            {"cache_url": f"redis://:s3cret-store-pw@127.0.0.1:{store.port}/0"},
            {"cache_url": store.url, "cache_password": "s3cret-store-pw"},
        ):
            # A generous store timeout: what is tested is the password, not the store's speed
            # on a loaded machine (a first connection's AUTH takes a round trip more).
            sidecar = make_sidecar(cache_size=1000, cache_timeout_ms=2000, **settings)
            query = f"password {uuid.uuid4()}"
            for _ in range(2):
                response = httpx.post(
                    sidecar.http_url + "/rerank", json={"query": query, "documents": ["a"]}
                )
                assert response.status_code == 200
            metrics = httpx.get(sidecar.http_url + "/metrics").text
            assert "reranker_store_errors_total{" not in metrics, metrics
            assert "s3cret-store-pw" not in metrics
    finally:
        store.stop()


# What someone who can write to the store can and cannot do.


class WallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_replayed_grant_or_score_is_honoured_only_until_its_own_expiry(
    store: RedisServer,
) -> None:
    """Values carry their expiry under their MAC: one saved and written back later, with no
    expiry of the store's own, is a miss once its time is up."""
    metrics, wall = Metrics(), WallClock()
    shared_store = SharedStore(store.url, password=None, timeout_s=2, metrics=metrics)
    digests = Digests(derive_secret("a-secret-the-replicas-share-0123456"))
    shared = SharedScores(shared_store, ttl_s=10, metrics=metrics, digests=digests, wall_clock=wall)
    grant, pair = (b"endpoint", b"k" * 16), uuid.uuid4().bytes
    try:
        assert await shared_store.check()
        shared.verified(*grant)
        shared.store_scores([pair], [1.5], b"endpoint")
        await shared.flush()
        client = shared_store.client
        grant_name = verified_name(digests, grant)
        saved = {
            name: await client.get(name) for name in (grant_name, NAMESPACE + b"score:" + pair)
        }
        assert all(saved.values()), saved
        shared.rejected(*grant)  # a 401: the grant is deleted ...
        await shared.flush()
        for name, value in saved.items():  # ... and written back, never to expire
            await client.set(name, value)
        wall.now += 5
        found, verified = await shared.lookup([pair], [grant])
        assert found == [(1.5, b"endpoint")] and verified == {grant}  # still in its time
        wall.now += 6
        found, verified = await shared.lookup([pair], [grant])
        assert found == [None] and verified == set()
    finally:
        await shared_store.aclose()


def test_a_grant_is_held_by_a_replica_for_a_while_only_before_it_asks_the_store() -> None:
    """So a 401 that one replica saw (and deleted from the store) reaches the others."""
    clock = FakeClock()

    class Store:
        def verified(self, tag: bytes, key_id: bytes) -> None:
            pass

        def rejected(self, tag: bytes, key_id: bytes) -> None:
            pass

    shared = VerifiedKeys(ttl_s=3600, clock=clock, shared=Store())  # type: ignore[arg-type]
    alone = VerifiedKeys(ttl_s=3600, clock=clock)
    for keys in (shared, alone):
        keys.learned(b"endpoint", b"key")
    clock.now += SHARED_RECHECK_S + 1
    assert not shared.holds(b"endpoint", b"key")
    assert alone.holds(b"endpoint", b"key")


async def test_a_forged_pause_in_the_store_holds_calls_back_no_longer_than_the_cap(
    store: RedisServer,
) -> None:
    metrics = Metrics()
    shared_store = SharedStore(store.url, password=None, timeout_s=2, metrics=metrics)
    budget = NimBudget(100, None, metrics=metrics, store=shared_store, max_pause_s=3)
    key_id = uuid.uuid4().bytes
    try:
        assert await shared_store.check()
        await shared_store.client.set(NAMESPACE + b"pause:" + key_id, b"1", px=3_600_000)
        with pytest.raises(RerankError) as refused:
            await budget.admit(key_id, 1, time.monotonic() + 1)
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s <= 3
    finally:
        await shared_store.aclose()


async def test_a_closed_store_leaves_no_connection_open_on_the_server(store: RedisServer) -> None:
    """A replica that stops hangs up on the store rather than leaving its connections to the
    server's client limit and to the garbage collector."""
    shared_store = SharedStore(store.url, password=None, timeout_s=2, metrics=Metrics())
    watcher = SharedStore(store.url, password=None, timeout_s=2, metrics=Metrics())
    name = f"closing-{uuid.uuid4().hex}"

    async def names() -> list[str]:
        return [client["name"] for client in await watcher.client.client_list()]

    try:
        assert await shared_store.run("name", lambda: shared_store.client.client_setname(name))
        assert name in await names()
        await shared_store.aclose()
        assert name not in await names()
    finally:
        await watcher.aclose()
