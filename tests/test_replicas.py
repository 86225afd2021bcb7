"""Three sidecar processes sharing one real Redis server on loopback: one pair cache, one NIM
budget, and no request lost when the store goes away.

The store is Debian's ``redis-server`` (``make test`` installs it; see the Makefile), started
here on a free port with no persistence. The emulator counts every call that reaches NIM.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from bench.processes import SERVE, SIDECAR_READY, RedisServer, running
from reranker_nvidia.core.cache.shared_cache import verified_name
from reranker_nvidia.core.targets.endpoints import identity_text
from reranker_nvidia.core.trust.digests import Digests, derive_secret
from tests.support import SERVER_KEY, Emulator, clean_environment

pytestmark = pytest.mark.slow

DOCUMENTS = ["the mill by the river", "a road going north", "turn left at the mill"]
CACHE_SECRET = "replicas-share-this-secret-0123456789"


def start_replicas(
    stack: ExitStack, emulator: Emulator, store_url: str | None, **settings: str
) -> list[str]:
    """Three sidecar processes in front of the emulator: their HTTP base URLs."""
    env = {
        **clean_environment(),
        "PYTHONUNBUFFERED": "1",
        "NVIDIA_APIKEY": SERVER_KEY,
        "RERANKER_BASE_URL": emulator.url,
        "RERANKER_MAX_RETRIES": "0",
        **{f"RERANKER_{name.upper()}": value for name, value in settings.items()},
    }
    if store_url is not None:
        env["RERANKER_CACHE_URL"] = store_url
        env["RERANKER_CACHE_SECRET"] = CACHE_SECRET
        # A loaded test machine can take longer than the default 25 ms to answer, and a store
        # that times out is skipped for a while.
        env.setdefault("RERANKER_CACHE_TIMEOUT_MS", "2000")
    urls = []
    for _ in range(3):
        _, ready = stack.enter_context(running(SERVE, env, SIDECAR_READY))
        urls.append(f"http://127.0.0.1:{ready[1]}")
    return urls


def rerank(url: str, query: str, documents: list[str], **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/rerank", json={"query": query, "documents": documents}, headers=headers, timeout=30
    )


def scores(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [entry["score"] for entry in response.json()["scores"]]


def is_verified(store: RedisServer, emulator: Emulator, key: str) -> bool:
    """Whether the store holds ``key`` as one the emulator has accepted."""
    digests = Digests(derive_secret(CACHE_SECRET))
    grant = (digests.tag(identity_text(emulator.url + "/v1/ranking")), digests.key(key))
    return store.command(b"EXISTS", verified_name(digests, grant)).startswith(b":1")


def wait_until_stored(store: RedisServer, before: int, added: int) -> None:
    """Until the store holds ``added`` keys more than ``before``: the writes a replica sends
    after its answer have landed."""
    deadline = time.monotonic() + 10
    while store.key_count() < before + added:
        assert time.monotonic() < deadline, "the replica's writes never reached the store"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def replicas(store: RedisServer, _emulator: Emulator) -> Iterator[list[str]]:
    with ExitStack() as stack:
        yield start_replicas(stack, _emulator, store.url)


def test_a_pair_scored_through_one_replica_is_a_hit_on_the_others(
    replicas: list[str], emulator: Emulator, store: RedisServer
) -> None:
    query = f"which way to the mill {uuid.uuid4()}"
    before, new_key = store.key_count(), not is_verified(store, emulator, SERVER_KEY)
    first = scores(rerank(replicas[0], query, DOCUMENTS))
    assert len(emulator.state.calls) == 1
    wait_until_stored(store, before, len(DOCUMENTS) + new_key)
    for url in replicas[1:]:
        assert scores(rerank(url, query, DOCUMENTS)) == first
    assert len(emulator.state.calls) == 1, "replicas 2 and 3 called NIM for cached pairs"


def test_without_the_store_each_replica_pays_for_the_pair(emulator: Emulator) -> None:
    with ExitStack() as stack:
        replicas = start_replicas(stack, emulator, None)
        first = scores(rerank(replicas[0], "which way to the mill", DOCUMENTS))
        assert scores(rerank(replicas[1], "which way to the mill", DOCUMENTS)) == first
    assert len(emulator.state.calls) == 2


def test_a_key_verified_through_one_replica_reads_the_cache_through_another(
    replicas: list[str], emulator: Emulator, store: RedisServer
) -> None:
    query = f"verified elsewhere {uuid.uuid4()}"
    tenant = "nvapi-tenant-a-123"
    before, new_key = store.key_count(), not is_verified(store, emulator, tenant)
    scores(rerank(replicas[0], query, DOCUMENTS, **{"X-Nvidia-Api-Key": tenant}))
    wait_until_stored(store, before, len(DOCUMENTS) + new_key)
    calls = len(emulator.state.calls)
    # A key no replica has seen NIM accept gets no cached score: NIM is asked.
    scores(rerank(replicas[1], query, DOCUMENTS, **{"X-Nvidia-Api-Key": "nvapi-stranger-99"}))
    assert len(emulator.state.calls) == calls + 1
    # The tenant's key, accepted through replica 1, reads the cache through replica 3.
    scores(rerank(replicas[2], query, DOCUMENTS, **{"X-Nvidia-Api-Key": tenant}))
    assert len(emulator.state.calls) == calls + 1


def test_losing_the_store_loses_no_request_and_the_replicas_recover(
    replicas: list[str], store: RedisServer, emulator: Emulator
) -> None:
    reference = {text: scores(rerank(replicas[0], "reference", [text]))[0] for text in DOCUMENTS}
    answered = 0
    for round_number in range(30):
        if round_number == 10:
            store.stop()
        url = replicas[round_number % 3]
        documents = DOCUMENTS[round_number % 3 :] + DOCUMENTS[: round_number % 3]
        got = scores(rerank(url, "reference", documents))
        assert got == [reference[text] for text in documents]
        answered += 1
    assert answered == 30
    store.start()
    time.sleep(1.5)  # past the second a replica leaves a failed store alone
    query = f"after the outage {uuid.uuid4()}"
    scores(rerank(replicas[0], query, DOCUMENTS))
    # The restarted store is empty; replica 1 writes the scores (each replica already knows
    # the server's key is accepted, so that is not written again before half its TTL).
    wait_until_stored(store, 0, len(DOCUMENTS))
    calls = len(emulator.state.calls)
    scores(rerank(replicas[1], query, DOCUMENTS))
    assert len(emulator.state.calls) == calls, "replica 2 did not read replica 1's scores"


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-replica"])
def test_the_budget_holds_across_replicas_under_a_burst(
    store: RedisServer, emulator: Emulator, shared: bool
) -> None:
    budget = 5
    with ExitStack() as stack:
        urls = start_replicas(
            stack,
            emulator,
            store.url if shared else None,
            upstream_rpm=str(budget),
            cache_size="0",
        )
        key = {"X-Nvidia-Api-Key": f"nvapi-burst-{uuid.uuid4().hex}", "X-Request-Timeout": "2"}
        statuses: list[int] = []
        refusals: list[dict[str, Any]] = []
        for number in range(24):
            response = rerank(urls[number % 3], f"burst {number}", ["a passage"], **key)
            statuses.append(response.status_code)
            if response.status_code != 200:
                refusals.append({"retry": response.headers.get("Retry-After"), **response.json()})
    calls = len(emulator.state.calls)
    if shared:
        assert calls == budget, f"{calls} calls reached NIM within a minute, budget {budget}"
        assert statuses.count(200) == budget
        assert set(statuses) == {200, 429}
        assert all(
            refusal["retry"] and "RERANKER_UPSTREAM_RPM" in refusal["error"] for refusal in refusals
        )
    else:
        # Without the store each replica counts alone: three times the budget gets through.
        assert calls == 3 * budget
