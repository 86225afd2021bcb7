"""Bad input on every surface: a 4xx or INVALID_ARGUMENT naming the field, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reranker_nvidia.client import RerankerClient
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import Sidecar

# (path, a valid body, the field errors come in)
ROUTES: list[tuple[str, dict[str, Any], str]] = [
    ("/rerank", {"query": "q", "documents": ["a", "b"]}, "error"),
    ("/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "a"}]}, "detail"),
    (
        "/v1/retrieval/nvidia/reranking",
        {"query": {"text": "q"}, "passages": [{"text": "a"}]},
        "detail",
    ),
    ("/v1/rerank", {"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1}, "message"),
    ("/v2/rerank", {"query": "q", "documents": ["a"]}, "message"),
]


def message(response: httpx.Response, field: str) -> str:
    return str(response.json()[field])


@pytest.fixture
def limited(make_sidecar: SidecarFactory) -> Sidecar:
    return make_sidecar(max_body_bytes=2048, max_documents=5)


@pytest.mark.parametrize(("path", "body", "field"), ROUTES)
def test_oversized_bodies_are_413(
    limited: Sidecar, path: str, body: dict[str, Any], field: str
) -> None:
    big = (
        {**body, "query": "x" * 4096}
        if path != "/v1/ranking"
        else {**body, "query": {"text": "x" * 4096}}
    )
    response = httpx.post(limited.http_url + path, json=big)
    assert response.status_code == 413
    assert "RERANKER_MAX_BODY_BYTES" in message(response, field)

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(10):
            yield b"x" * 512

    streamed = httpx.post(limited.http_url + path, content=chunks())
    assert streamed.status_code == 413


@pytest.mark.parametrize(("path", "body", "field"), ROUTES)
def test_too_many_documents(limited: Sidecar, path: str, body: dict[str, Any], field: str) -> None:
    many = {key: (value * 6 if isinstance(value, list) else value) for key, value in body.items()}
    response = httpx.post(limited.http_url + path, json=many)
    assert response.status_code in (400, 422)
    assert "at most 5 allowed" in message(response, field)


def bad_field_cases() -> Iterator[tuple[str, dict[str, Any], str, dict[str, Any], str]]:
    """Each route with each bad field its contract has: (path, body, field, change, says)."""
    for path, body, field in ROUTES:
        nim = field == "detail"
        for query in ("", 42):
            change = {"query": {"text": query}} if nim else {"query": query}
            yield path, body, field, change, "query"
        if field != "error":  # Weaviate's contract has no top_n
            yield path, body, field, {"top_n": -1}, "top_n"
        if nim:  # only NIM's contract has truncate
            yield path, body, field, {"truncate": "MIDDLE"}, "truncate"


@pytest.mark.parametrize(("path", "body", "field", "change", "says"), list(bad_field_cases()))
def test_bad_fields_are_named(
    sidecar: Sidecar,
    path: str,
    body: dict[str, Any],
    field: str,
    change: dict[str, Any],
    says: str,
) -> None:
    response = httpx.post(sidecar.http_url + path, json={**body, **change})
    assert response.status_code in (400, 422)
    assert says in message(response, field)


@pytest.mark.parametrize(("path", "body", "field"), ROUTES)
def test_non_utf8_and_non_json_bodies(
    sidecar: Sidecar, path: str, body: dict[str, Any], field: str
) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in (b'{"query": "\xff\xfe"}', b"\x00\x01", b"[1, 2", b""):
        response = httpx.post(sidecar.http_url + path, content=raw, headers=headers)
        assert response.status_code in (400, 422), raw
        assert "body" in message(response, field)
    surrogate = json.dumps(body).replace('"q"', '"q\\ud800"').encode()
    response = httpx.post(sidecar.http_url + path, content=surrogate, headers=headers)
    assert response.status_code in (400, 422)
    assert "query: not valid Unicode" in message(response, field)


def test_grpc_bad_input_is_invalid_argument(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(max_body_bytes=2048, max_documents=5)
    with RerankerClient(sidecar.grpc_target) as client:
        cases: list[tuple[str, list[str], int | None, str]] = [
            ("q", ["a"] * 6, None, "at most 5 allowed"),
            (" ", ["a"], None, "query must not be empty"),
            ("q", ["a"], 0, "top_n"),
        ]
        for query, documents, top_n, says in cases:
            with pytest.raises(RerankError) as raised:
                client.rank(query, documents, top_n=top_n)
            assert raised.value.code is ErrorCode.INVALID_ARGUMENT
            assert says in raised.value.message
        with pytest.raises(RerankError) as too_big:
            client.rank("q", ["x" * 4096])
        assert too_big.value.code is ErrorCode.RESOURCE_EXHAUSTED
    raw = grpc.insecure_channel(sidecar.grpc_target)
    rank: grpc.UnaryUnaryMultiCallable[bytes, pb.RankResponse] = raw.unary_unary(
        "/reranker_nvidia.v1.RerankerService/Rank",
        request_serializer=lambda data: data,
        response_deserializer=pb.RankResponse.FromString,
    )
    with raw, pytest.raises(grpc.RpcError) as undecodable:
        rank(b"\x0a\x02\xff\xfe", timeout=5)  # field 1 (query) holding bad UTF-8
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad UTF-8" in str(undecodable.value.details())
    unknown_truncate = pb.RankRequest(
        query="q",
        documents=["a"],
        options=pb.RankOptions(truncate=7),  # type: ignore[arg-type]
    )
    channel = grpc.insecure_channel(sidecar.grpc_target)
    with channel, pytest.raises(grpc.RpcError) as unknown:
        pb_grpc.RerankerServiceStub(channel).Rank(unknown_truncate, timeout=5)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.truncate: unknown Truncate value 7" in str(unknown.value.details())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    replace_with=st.one_of(
        json_values.map(lambda value: ("whole", value)),
        st.tuples(st.text(max_size=12), json_values).map(lambda pair: ("field", pair)),
    ),
    headers=st.dictionaries(
        st.sampled_from(
            ["X-Request-Timeout", "X-Nvidia-Baseurl", "Authorization", "X-Nvidia-Api-Key"]
        ),
        # Values a client can send at all: visible ASCII, no surrounding spaces.
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).filter(
            lambda value: value == value.strip()
        ),
        max_size=2,
    ),
)
@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx(
    sidecar: Sidecar,
    route: tuple[str, dict[str, Any], str],
    replace_with: tuple[str, Any],
    headers: dict[str, str],
) -> None:
    path, body, _ = route
    kind, value = replace_with
    if kind == "whole":
        payload: Any = value
    else:
        key, field_value = value
        payload = {**body, (key if key else next(iter(body))): field_value}
    response = httpx.post(
        sidecar.http_url + path,
        # As text: json= refuses NaN and Infinity, which a careless client may still send.
        content=json.dumps(payload),
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    assert response.status_code < 500, (path, payload, headers, response.text)
    response.json()
