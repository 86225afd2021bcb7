"""The core against the NIM emulator as a real upstream on loopback."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from reranker_nvidia.core import Ranker, RankOptions
from reranker_nvidia.core.targets.target import NO_KEY_MESSAGE
from reranker_nvidia.emulator import Fault, lexical_logit, terms
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.server.assembly import Core, build_core
from reranker_nvidia.web.errors import http_status
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, sidecar_settings

QUERY = "how do reranking models order passages"
WORDS = ["rerank", "model", "passage", "order", "query", "score", "vector", "keyword"]

RankerFactory = Callable[..., Ranker]


def corpus(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + f" doc{i}" for i in range(count)]


def expected_scores(query: str, documents: list[str]) -> list[float]:
    return [lexical_logit(terms(query), terms(document)) for document in documents]


@pytest.fixture
async def make_ranker(emulator: Emulator) -> AsyncIterator[RankerFactory]:
    made: list[Core] = []

    def make(**overrides: object) -> Ranker:
        core = build_core(sidecar_settings(emulator.url, **overrides))
        made.append(core)
        return core.ranker

    yield make
    for core in made:
        await core.aclose()


@pytest.mark.parametrize("count", [1, 512, 513, 5000])
async def test_chunking_keeps_every_score_at_its_document(
    make_ranker: RankerFactory, emulator: Emulator, count: int
) -> None:
    documents = corpus(count)
    emulator.state.delay_s = 0.02
    ranking = await make_ranker(upstream_concurrency=4).rank(QUERY, documents, surface="grpc")

    assert ranking.scores == pytest.approx(expected_scores(QUERY, documents))
    calls = emulator.state.calls
    assert len(calls) == -(-count // 512)
    assert all(call.passages <= 512 for call in calls)
    assert sum(call.passages for call in calls) == count
    if len(calls) > 1:
        assert emulator.state.peak_in_flight > 1, "chunks were sent one after another"
    assert emulator.state.peak_in_flight <= 4


async def test_usage_is_summed_over_chunks(make_ranker: RankerFactory) -> None:
    documents = [f"alpha beta {i}" if i % 2 else f"gamma {i}" for i in range(600)]
    ranking = await make_ranker(max_passages_per_call=100).rank("alpha", documents, surface="grpc")
    pair_tokens = sum(1 + len(terms(document)) for document in documents)
    assert ranking.usage.prompt_tokens == pair_tokens
    assert ranking.usage.total_tokens == pair_tokens


async def test_order_is_best_first_and_ties_keep_input_order(make_ranker: RankerFactory) -> None:
    documents = ["nothing here", "order of passages", "also nothing", "order"]
    ranker = make_ranker()
    ranking = await ranker.rank("order passages", documents, surface="grpc")
    assert ranking.order() == [1, 3, 0, 2]
    top = await ranker.rank("order passages", documents, top_n=1, surface="grpc")
    assert top.order() == [1]
    assert top.scores == ranking.scores


async def test_request_key_wins_over_server_key_at_the_upstream(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    ranker = make_ranker()
    await ranker.rank(QUERY, ["a"], RankOptions(api_key=REQUEST_KEY), surface="grpc")
    await ranker.rank(QUERY, ["a"], surface="grpc")
    await ranker.rank(QUERY, ["a"], RankOptions(api_key="  "), surface="grpc")
    placeholders = ["**********", "NO_API_KEY_PROVIDED", "None", "null", ""]
    for placeholder in placeholders:
        await ranker.rank(QUERY, ["a"], RankOptions(api_key=placeholder), surface="grpc")
    assert [call.authorization for call in emulator.state.calls] == [
        f"Bearer {REQUEST_KEY}",
        f"Bearer {SERVER_KEY}",
        f"Bearer {SERVER_KEY}",
        *[f"Bearer {SERVER_KEY}"] * len(placeholders),
    ]


async def test_no_key_for_the_hosted_endpoint_names_both_places_and_calls_nothing(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    ranker = make_ranker(api_key=None)
    with pytest.raises(RerankError) as raised:
        await ranker.rank(
            QUERY, ["a"], RankOptions(base_url="https://ai.api.nvidia.com"), surface="grpc"
        )
    assert raised.value.code is ErrorCode.UNAUTHENTICATED
    assert raised.value.message == NO_KEY_MESSAGE
    assert "X-Nvidia-Api-Key" in NO_KEY_MESSAGE and "NVIDIA_APIKEY" in NO_KEY_MESSAGE
    assert emulator.state.calls == []


async def test_self_hosted_without_any_key_sends_no_authorization(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    ranking = await make_ranker(api_key=None).rank(QUERY, ["a passage"], surface="grpc")
    assert len(ranking.scores) == 1
    assert emulator.state.calls[0].authorization is None


async def test_upstream_key_rejection_is_permission_denied(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    emulator.state.api_key = "nvapi-the-right-one"
    with pytest.raises(RerankError) as raised:
        await make_ranker().rank(QUERY, ["a"], surface="grpc")
    assert raised.value.code is ErrorCode.PERMISSION_DENIED
    assert raised.value.upstream_status == 401
    assert "Authentication failed" in raised.value.message


@pytest.mark.parametrize(
    ("fault", "code", "status", "says"),
    [
        (
            Fault(402, {"detail": "Account credits exhausted"}),
            ErrorCode.FAILED_PRECONDITION,
            402,
            "Account credits exhausted",
        ),
        (
            Fault(403, {"detail": "Forbidden model"}),
            ErrorCode.PERMISSION_DENIED,
            403,
            "Forbidden model",
        ),
        (
            Fault(422, {"detail": [{"msg": "bad passages", "loc": ["body"]}]}),
            ErrorCode.INVALID_ARGUMENT,
            422,
            "bad passages",
        ),
        (
            Fault(429, {"detail": "Too many requests"}, headers={"Retry-After": "3"}),
            ErrorCode.RESOURCE_EXHAUSTED,
            429,
            "Too many requests",
        ),
        (Fault(500, {"detail": "boom"}), ErrorCode.UNAVAILABLE, 502, "answered 500: boom"),
        (
            Fault(503, raw=b"<html>Service Unavailable</html>"),
            ErrorCode.UNAVAILABLE,
            502,
            "<html>Service Unavailable</html>",
        ),
    ],
)
async def test_upstream_errors_carry_nims_detail(
    make_ranker: RankerFactory,
    emulator: Emulator,
    fault: Fault,
    code: ErrorCode,
    status: int,
    says: str,
) -> None:
    emulator.state.faults.append(fault)
    with pytest.raises(RerankError) as raised:
        await make_ranker().rank(QUERY, ["a"], surface="grpc")
    assert raised.value.code is code
    assert http_status(raised.value) == status
    assert says in raised.value.message
    assert raised.value.upstream_status == fault.status
    if "Retry-After" in fault.headers:
        assert raised.value.retry_after_s == 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"rankings": [{"index": 0, "logit": 1.0}]}, "1 rankings for 2 passages"),
        ({"nope": []}, "no 'rankings' list"),
        ({"rankings": [{"index": 0, "logit": 1}, {"index": 0, "logit": 2}]}, "appears twice"),
        ({"rankings": [{"index": 0, "logit": 1}, {"index": 2, "logit": 2}]}, "out of range"),
        ({"rankings": [{"index": 0, "logit": 1}, {"index": 1, "logit": "x"}]}, "not a number"),
        ({"rankings": [{"index": 0, "logit": 1}, {"index": "1", "logit": 2}]}, "not an integer"),
    ],
)
async def test_invalid_upstream_rankings_are_unavailable(
    make_ranker: RankerFactory, emulator: Emulator, body: object, reason: str
) -> None:
    emulator.state.faults.append(Fault(200, body))
    with pytest.raises(RerankError) as raised:
        await make_ranker().rank(QUERY, ["a", "b"], surface="grpc")
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert http_status(raised.value) == 502
    assert reason in raised.value.message


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"rankings": [{"index": 0, "logit": NaN}]}', "not finite"),
        (b"<html>ok</html>", "not JSON"),
    ],
)
async def test_non_finite_or_non_json_answers_are_unavailable(
    make_ranker: RankerFactory, emulator: Emulator, raw: bytes, reason: str
) -> None:
    emulator.state.faults.append(Fault(200, raw=raw))
    with pytest.raises(RerankError) as raised:
        await make_ranker().rank(QUERY, ["a"], surface="grpc")
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert reason in raised.value.message


async def test_one_failing_chunk_fails_the_request(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    emulator.state.faults.append(Fault(500, {"detail": "chunk failed"}))
    with pytest.raises(RerankError, match="chunk failed"):
        await make_ranker().rank(QUERY, corpus(1500), surface="grpc")


async def test_unreachable_upstream_is_unavailable(make_ranker: RankerFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    ranker = make_ranker(base_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(RerankError) as raised:
        await ranker.rank(QUERY, ["a"], surface="grpc")
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert f"127.0.0.1:{closed_port}/v1/ranking" in raised.value.message


async def test_slow_upstream_is_deadline_exceeded(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    # A query of its own: a late call of an earlier test must not take this fault.
    query = "which way is slow"
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=2.0, for_query=query))
    with pytest.raises(RerankError) as raised:
        await make_ranker(upstream_timeout_s=0.2).rank(query, ["a"], surface="grpc")
    assert raised.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert "within 0.2 s" in raised.value.message


@pytest.mark.parametrize(
    ("query", "documents", "options", "says"),
    [
        ("  ", ["a"], RankOptions(), "query must not be empty"),
        ("q", ["a"] * 11, RankOptions(), "documents: 11 given, at most 10 allowed"),
        ("q", ["a"], RankOptions(truncate="START"), "truncate must be NONE or END"),
        ("q", ["a"], RankOptions(base_url="ftp://nim"), "base_url: must start with http"),
    ],
)
async def test_bad_input_is_invalid_argument_before_any_upstream_call(
    make_ranker: RankerFactory,
    emulator: Emulator,
    query: str,
    documents: list[str],
    options: RankOptions,
    says: str,
) -> None:
    with pytest.raises(RerankError) as raised:
        await make_ranker(max_documents=10).rank(query, documents, options, surface="grpc")
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert says in raised.value.message
    assert emulator.state.calls == []


async def test_truncate_and_model_reach_the_upstream(
    make_ranker: RankerFactory, emulator: Emulator
) -> None:
    long_passage = "word " * 600
    with pytest.raises(RerankError) as raised:
        await make_ranker().rank("word", [long_passage], surface="grpc")
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert "exceeds maximum allowed token size" in raised.value.message

    ranking = await make_ranker(truncate="END").rank(
        "word",
        [long_passage],
        RankOptions(model="nvidia/llama-3_2-nv-rerankqa-1b-v2"),
        surface="grpc",
    )
    assert len(ranking.scores) == 1
    assert ranking.model == "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    last = emulator.state.calls[-1]
    assert (last.truncate, last.model) == ("END", "nvidia/llama-3.2-nv-rerankqa-1b-v2")


async def test_keys_never_reach_logs_or_error_messages(
    make_ranker: RankerFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.state.faults.append(Fault(403, {"detail": f"key {REQUEST_KEY} is not allowed"}))
    ranker = make_ranker()
    with pytest.raises(RerankError) as raised:
        await ranker.rank(QUERY, ["a"], RankOptions(api_key=REQUEST_KEY), surface="grpc")
    assert REQUEST_KEY not in raised.value.message
    assert "***" in raised.value.message
    assert SERVER_KEY not in repr(sidecar_settings(emulator.url))
    assert SERVER_KEY not in repr(ranker), "the ranker holds the key as a secret"
    assert REQUEST_KEY not in repr(RankOptions(api_key=REQUEST_KEY))
    assert REQUEST_KEY not in caplog.text and SERVER_KEY not in caplog.text
