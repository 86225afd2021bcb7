"""The pair-level score cache: hits, partial hits, eviction, TTL, off, and no cached errors."""

from __future__ import annotations

import httpx
import pytest

from reranker_nvidia.core import RankOptions
from reranker_nvidia.core.cache.score_cache import ENTRY_BYTES, ScoreCache
from reranker_nvidia.emulator import Fault, lexical_logit, terms
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.server.assembly import build_core
from reranker_nvidia.settings import Settings
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, Emulator

QUERY = "which way should i go"


def rerank(url: str, documents: list[str], **headers: str) -> list[float]:
    response = httpx.post(
        url + "/rerank", json={"query": QUERY, "documents": documents}, headers=headers
    )
    assert response.status_code == 200, response.text
    return [entry["score"] for entry in response.json()["scores"]]


def expected(documents: list[str]) -> list[float]:
    return [lexical_logit(terms(QUERY), terms(document)) for document in documents]


def test_a_repeated_request_is_served_from_the_cache(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    documents = ["go this way", "bananas", "which way"]
    first = rerank(sidecar.http_url, documents)
    second = rerank(sidecar.http_url, documents)
    assert first == second == pytest.approx(expected(documents))
    assert len(emulator.state.calls) == 1
    cache = sidecar.server.core.cache
    assert (cache.hits, cache.misses) == (3, 3)


def test_only_the_misses_of_a_request_go_upstream(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    rerank(sidecar.http_url, ["a way", "b way", "c"])
    documents = ["new way", "b way", "another", "a way"]
    scores = rerank(sidecar.http_url, documents)
    assert scores == pytest.approx(expected(documents))
    assert [call.passages for call in emulator.state.calls] == [3, 2]


def test_scores_are_shared_across_keys_nim_has_accepted(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    rerank(sidecar.http_url, ["a way"])
    # A key NIM has not accepted yet is not served from the cache: NIM checks it first.
    rerank(sidecar.http_url, ["a way"], **{"X-Nvidia-Api-Key": REQUEST_KEY})
    rerank(sidecar.http_url, ["a way"], **{"X-Nvidia-Api-Key": REQUEST_KEY})
    rerank(sidecar.http_url, ["a way"])
    assert len(emulator.state.calls) == 2


def test_the_cache_is_scoped_by_model_and_query(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    body = {"query": {"text": QUERY}, "passages": [{"text": "a way"}]}
    url = sidecar.http_url + "/v1/ranking"
    httpx.post(url, json=body)
    httpx.post(url, json={**body, "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2"})
    httpx.post(url, json={**body, "query": {"text": "another query"}})
    httpx.post(url, json={**body, "truncate": "END"})
    httpx.post(url, json=body)
    assert len(emulator.state.calls) == 4


def test_errors_are_never_cached(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(cache_size=1000)
    emulator.state.faults.append(Fault(500, {"detail": "down"}))
    failed = httpx.post(sidecar.http_url + "/rerank", json={"query": QUERY, "documents": ["a"]})
    assert failed.status_code == 502
    assert rerank(sidecar.http_url, ["a"]) == pytest.approx(expected(["a"]))
    assert len(emulator.state.calls) == 2
    assert len(sidecar.server.core.cache) == 1


def test_a_cache_of_size_zero_is_off(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(cache_size=0)
    rerank(sidecar.http_url, ["a way"])
    rerank(sidecar.http_url, ["a way"])
    assert len(emulator.state.calls) == 2
    assert not sidecar.server.core.cache.enabled


TAG = b"endpoint"


def logits(cache: ScoreCache, keys: list[bytes]) -> list[float | None]:
    return [None if entry is None else entry[0] for entry in cache.get_many(keys)]


def keys(name: str, count: int) -> list[bytes]:
    return [f"{name}{index}".encode() for index in range(count)]


def test_scores_in_use_outlive_those_not_used() -> None:
    cache = ScoreCache(max_entries=100, max_bytes=10**9, ttl_s=60)  # generations of 50
    first, used = keys("a", 50), keys("a", 10)
    cache.put_many(first, [1.0] * 50, TAG)
    cache.put_many(keys("b", 30), [2.0] * 30, TAG)  # the first 50 are now the old generation
    assert logits(cache, used) == [1.0] * 10  # read: back to the young generation
    cache.put_many(keys("c", 20), [3.0] * 20, TAG)  # the old generation is dropped
    everything = used + first[10:] + keys("b", 30) + keys("c", 20)
    assert logits(cache, everything) == [1.0] * 10 + [None] * 40 + [2.0] * 30 + [3.0] * 20
    assert len(cache) <= 100


def test_the_entry_bound_holds_whatever_the_requests() -> None:
    cache = ScoreCache(max_entries=100, max_bytes=10**9, ttl_s=60)
    for size in (1, 7, 49, 50, 51, 99, 100, 101, 250, 3):
        cache.put_many(keys(f"r{size}-", size), [1.0] * size, TAG)
        assert len(cache) <= 100
        logits(cache, keys("r1-", 1) + keys("r49-", 49))
        assert len(cache) <= 100
    # A request larger than a generation keeps its most recent pairs.
    assert logits(cache, keys("r3-", 3)) == [1.0] * 3


def test_an_entry_remembers_the_endpoint_that_answered_it() -> None:
    cache = ScoreCache(max_entries=10, max_bytes=10**9, ttl_s=60)
    cache.put_many([b"a"], [1.0], b"one")
    cache.put_many([b"b"], [2.0], b"two")
    assert [entry[2] if entry else None for entry in cache.get_many([b"a", b"b"])] == [
        b"one",
        b"two",
    ]


def test_the_byte_bound_limits_entries() -> None:
    cache = ScoreCache(max_entries=1000, max_bytes=3 * ENTRY_BYTES, ttl_s=60)
    cache.put_many([bytes([i]) for i in range(10)], [float(i) for i in range(10)], TAG)
    assert 0 < len(cache) <= 3
    assert cache.size_bytes <= 3 * ENTRY_BYTES
    assert logits(cache, [b"\x09", b"\x00"]) == [9.0, None]


def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    cache = ScoreCache(max_entries=10, max_bytes=10**6, ttl_s=5, clock=lambda: now[0])
    cache.put_many([b"k"], [1.5], TAG)
    now[0] = 4.9
    assert logits(cache, [b"k"]) == [1.5]
    now[0] = 5.0
    assert logits(cache, [b"k"]) == [None]
    assert len(cache) == 0


async def test_no_usable_key_is_refused_before_the_cache_is_read() -> None:
    settings = Settings(
        api_key=None, base_url="https://ai.api.nvidia.com", cache_size=100, cache_scope="shared"
    )
    core = build_core(settings)
    ranker = core.ranker
    try:
        target = ranker.resolve(RankOptions(api_key=REQUEST_KEY))
        keys = ranker.pair_keys(target, QUERY, ["a"])
        ranker.cache.put_many(keys, [1.0], target.endpoints[0].tag)
        assert (
            await ranker.rank(QUERY, ["a"], RankOptions(api_key=REQUEST_KEY), surface="grpc")
        ).scores == [1.0]
        with pytest.raises(RerankError) as raised:
            await ranker.rank(QUERY, ["a"], surface="grpc")
        assert raised.value.code is ErrorCode.UNAUTHENTICATED
        assert ranker.cache.hits == 1
    finally:
        await core.aclose()
