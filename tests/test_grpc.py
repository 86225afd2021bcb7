"""The gRPC API over a real server on an ephemeral loopback port, with the emulator upstream."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reranker_nvidia.client import AsyncRerankerClient, RerankerClient
from reranker_nvidia.emulator import Fault, lexical_logit, terms
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.types import Hit, SearchType
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "hybrid search reranking"

HITS = [
    Hit(
        "a",
        {"title": "Cooking pasta", "body": "boil water"},
        distance=0.12,
        search_type=SearchType.VECTOR,
    ),
    Hit(
        "b",
        {"title": "Hybrid search", "body": "reranking hybrid search results"},
        score=3.2,
        search_type=SearchType.HYBRID,
    ),
    Hit("c", {"title": "No body here"}, score=1.1, search_type=SearchType.KEYWORD),
    Hit(
        "d",
        {"title": "Tags", "body": ["search", "reranking"]},
        score=0.7,
        search_type=SearchType.KEYWORD,
    ),
    Hit("e", {"title": "Empty", "body": "   "}, distance=0.4, search_type=SearchType.VECTOR),
    Hit("f", {"title": "Number", "body": 42}, score=0.1, search_type=SearchType.HYBRID),
]


def score(query: str, text: str) -> float:
    return lexical_logit(terms(query), terms(text))


def test_rank_returns_documents_best_first(sidecar: Sidecar) -> None:
    documents = ["cooking", "hybrid search", "search reranking hybrid", "reranking"]
    with RerankerClient(sidecar.grpc_target) as client:
        ranked = client.rank(QUERY, documents)
        top = client.rank(QUERY, documents, top_n=2)
    expected = sorted(range(4), key=lambda i: -score(QUERY, documents[i]))
    assert [doc.index for doc in ranked.documents] == expected
    assert [doc.document for doc in ranked.documents] == [documents[i] for i in expected]
    assert ranked.documents[0].score == pytest.approx(score(QUERY, documents[2]))
    assert ranked.model == "nvidia/rerank-qa-mistral-4b"
    assert ranked.usage.total_tokens > 0
    assert [doc.index for doc in top.documents] == expected[:2]


def test_five_thousand_long_documents_fit_in_one_request(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    documents = [f"document {i} " + "hybrid search text " * 50 for i in range(5000)]
    assert sum(map(len, documents)) > 4 * 1024 * 1024, "above gRPC's default message limit"
    with RerankerClient(sidecar.grpc_target) as client:
        ranked = client.rank(QUERY, documents, truncate="END")
    assert len(ranked.documents) == 5000
    assert sorted(call.passages for call in emulator.state.calls) == [392] + [512] * 9


def test_rerank_orders_hits_and_keeps_them_whole(sidecar: Sidecar) -> None:
    with RerankerClient(sidecar.grpc_target) as client:
        result = client.rerank(HITS, properties=["body"], query=QUERY)

    ids = [entry.hit.id for entry in result.hits]
    scored = ["b", "d", "a"]  # by score: b, d (string array joined) and a
    assert ids == [*scored, "c", "e", "f"], "hits without text come last, in input order"
    assert [entry.rerank_score is None for entry in result.hits] == [False] * 3 + [True] * 3
    assert result.hits[0].rerank_score == pytest.approx(
        score(QUERY, "reranking hybrid search results")
    )
    assert result.hits[1].rerank_score == pytest.approx(score(QUERY, "search\nreranking"))
    for entry in result.hits:
        assert entry.hit == HITS[entry.position], "original fields and position are kept"


def test_rerank_over_several_properties_and_top_n(sidecar: Sidecar, emulator: Emulator) -> None:
    with RerankerClient(sidecar.grpc_target) as client:
        result = client.rerank(HITS, properties=["title", "body"], query=QUERY, top_n=2)
    assert [entry.hit.id for entry in result.hits] == ["b", "d"]
    assert emulator.state.calls[-1].passages == 6, "every hit has a title, so all are ranked"


def test_rerank_keeps_original_proto_fields(sidecar: Sidecar) -> None:
    channel = grpc.insecure_channel(sidecar.grpc_target)
    stub = pb_grpc.RerankerServiceStub(channel)
    hit = pb.Hit(id="x", score=2.5, search_type=pb.SEARCH_TYPE_HYBRID)
    hit.properties.update({"body": "hybrid search", "year": 2024, "nested": {"k": [1, "v"]}})
    missing = pb.Hit(id="y", distance=0.3, search_type=pb.SEARCH_TYPE_VECTOR)
    response = stub.Rerank(pb.RerankRequest(hits=[missing, hit], properties=["body"], query=QUERY))
    channel.close()
    assert [entry.hit for entry in response.hits] == [hit, missing]
    assert [entry.original_position for entry in response.hits] == [1, 0]
    assert response.hits[0].HasField("rerank_score")
    assert not response.hits[1].HasField("rerank_score")


def test_collection_config_applies_unless_the_request_overrides(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    module_config = {
        "reranker-nvidia": {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "baseURL": emulator.url}
    }
    with RerankerClient(sidecar.grpc_target) as client:
        collection = client.rerank(
            HITS, properties=["body"], query=QUERY, module_config=module_config
        )
        overridden = client.rerank(
            HITS,
            properties=["body"],
            query=QUERY,
            module_config=module_config,
            model="nvidia/nv-rerankqa-mistral-4b-v3",
        )
    assert collection.model == "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    assert overridden.model == "nvidia/nv-rerankqa-mistral-4b-v3"
    assert [call.model for call in emulator.state.calls] == [collection.model, overridden.model]


def test_metadata_key_wins_over_server_key(sidecar: Sidecar, emulator: Emulator) -> None:
    with RerankerClient(sidecar.grpc_target) as client:
        client.rank(QUERY, ["a"], api_key=REQUEST_KEY)
        client.rank(QUERY, ["a"])
    assert [call.authorization for call in emulator.state.calls] == [
        f"Bearer {REQUEST_KEY}",
        f"Bearer {SERVER_KEY}",
    ]


def test_metadata_base_url_wins(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(
        base_url="http://127.0.0.1:9", api_key=None, allowed_base_urls=(emulator.url,)
    )
    with RerankerClient(sidecar.grpc_target, base_url=f"{emulator.url}/v1") as client:
        ranked = client.rank(QUERY, ["a"])
    assert len(ranked.documents) == 1
    assert emulator.state.calls[0].path == "/v1/ranking"


def test_get_meta_describes_without_the_key(sidecar: Sidecar, emulator: Emulator) -> None:
    with RerankerClient(sidecar.grpc_target) as client:
        meta = client.meta()
    assert meta.name == "reranker-nvidia"
    assert meta.model == "nvidia/rerank-qa-mistral-4b"
    assert meta.base_url == emulator.url
    assert meta.endpoint == f"{emulator.url}/v1/ranking"
    assert meta.server_key_configured is True
    assert SERVER_KEY not in repr(meta)


def test_health_reports_serving(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "reranker_nvidia.v1.RerankerService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {service.name for service in answer.list_services_response.service}
    assert "reranker_nvidia.v1.RerankerService" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault(401, {"detail": "Unauthorized"}), grpc.StatusCode.PERMISSION_DENIED),
        (Fault(403, {"detail": "Forbidden"}), grpc.StatusCode.PERMISSION_DENIED),
        (Fault(402, {"detail": "Payment required"}), grpc.StatusCode.FAILED_PRECONDITION),
        (Fault(422, {"detail": [{"msg": "Unprocessable"}]}), grpc.StatusCode.INVALID_ARGUMENT),
        (Fault(429, {"detail": "Slow down"}), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Fault(500, {"detail": "Broken"}), grpc.StatusCode.UNAVAILABLE),
        (Fault(200, {"rankings": "no"}), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_upstream_failures_map_to_status_codes(
    sidecar: Sidecar, emulator: Emulator, fault: Fault, code: grpc.StatusCode
) -> None:
    emulator.state.faults.append(fault)
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Rank(pb.RankRequest(query=QUERY, documents=["a"]), timeout=10)
    assert raised.value.code() == code
    details = str(raised.value.details())
    assert f"answered {fault.status}" in details or "invalid ranking" in details


def test_timeout_is_deadline_exceeded(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(upstream_timeout_s=0.2)
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=2))
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rank(QUERY, ["a"])
    assert raised.value.code is ErrorCode.DEADLINE_EXCEEDED


def test_no_key_is_unauthenticated(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(api_key=None)
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rank(QUERY, ["a"], base_url="https://ai.api.nvidia.com")
    assert raised.value.code is ErrorCode.UNAUTHENTICATED
    assert "X-Nvidia-Api-Key" in raised.value.message
    assert emulator.state.calls == []


@pytest.mark.parametrize(
    ("request_message", "says"),
    [
        (pb.RankRequest(query="", documents=["a"]), "query must not be empty"),
        (pb.RankRequest(query="q", documents=["a"], top_n=0), "top_n must be at least 1"),
        (
            pb.RankRequest(query="q", documents=["a"], options=pb.RankOptions(base_url="nim:8000")),
            "base_url: must start with http",
        ),
    ],
)
def test_bad_rank_input_is_invalid_argument(
    sidecar: Sidecar, request_message: pb.RankRequest, says: str
) -> None:
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Rank(request_message, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(raised.value.details())


def test_rerank_without_properties_is_invalid_argument(sidecar: Sidecar) -> None:
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rerank(HITS, properties=[], query=QUERY)
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert "properties" in raised.value.message


async def test_async_client_ranks_concurrently(sidecar: Sidecar, emulator: Emulator) -> None:
    emulator.state.delay_s = 0.05
    async with AsyncRerankerClient(sidecar.grpc_target) as client:
        import asyncio

        results = await asyncio.gather(
            *(client.rank(f"query {i}", [f"query {i}", "other"]) for i in range(8))
        )
        meta = await client.meta()
    assert all(result.documents[0].index == 0 for result in results)
    assert emulator.state.peak_in_flight > 1
    assert meta.name == "reranker-nvidia"


def test_the_client_refuses_unknown_and_missing_arguments(sidecar: Sidecar) -> None:
    """The call options are one typed set; untyped callers get Python's usual TypeError."""
    with RerankerClient(sidecar.grpc_target) as client:
        with pytest.raises(TypeError, match="unknown arguments: modle"):
            client.rank("q", ["a"], modle="x")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="missing keyword arguments: query"):
            client.rerank([Hit("1", {"content": "a"})], properties=["content"])  # type: ignore[call-arg]
