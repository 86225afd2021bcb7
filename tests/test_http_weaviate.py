"""Weaviate's reranker sidecar contract over a real HTTP server, with the emulator upstream."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from reranker_nvidia.emulator import Fault, lexical_logit, terms
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "which way should i go"


def score(text: str) -> float:
    return lexical_logit(terms(QUERY), terms(text))


def test_live_and_ready_are_204(sidecar: Sidecar) -> None:
    for path in ("/.well-known/live", "/.well-known/ready"):
        response = httpx.get(sidecar.http_url + path)
        assert response.status_code == 204
        assert response.content == b""


def test_meta_is_a_json_object_without_the_key(sidecar: Sidecar, emulator: Emulator) -> None:
    response = httpx.get(sidecar.http_url + "/meta")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == "reranker-nvidia"
    assert meta["model"] == "nvidia/rerank-qa-mistral-4b"
    assert meta["base_url"] == emulator.url
    assert meta["server_key_configured"] is True
    assert SERVER_KEY not in response.text


def test_batch_mode_scores_in_document_order(sidecar: Sidecar) -> None:
    documents = ["turn left", "which way: go north, you should", "", "way"]
    response = httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": QUERY, "documents": documents, "property": ""},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == QUERY
    assert body["property"] is None and body["score"] is None
    assert [entry["document"] for entry in body["scores"]] == documents
    assert [entry["score"] for entry in body["scores"]] == pytest.approx(
        [score(document) for document in documents]
    )
    assert all(entry["score"] != 0 for entry in body["scores"])


def test_single_mode_echoes_query_and_property(sidecar: Sidecar) -> None:
    response = httpx.post(
        sidecar.http_url + "/rerank", json={"query": QUERY, "property": "go this way"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == QUERY
    assert body["property"] == "go this way"
    assert body["score"] == pytest.approx(score("go this way"))
    assert body["score"] != 0


async def test_weaviates_parallel_chunks_of_32_each_get_their_own_scores(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    documents = [f"{'way ' * (i % 7)}document number {i}" for i in range(100)]
    chunks = [documents[start : start + 32] for start in range(0, 100, 32)]
    async with httpx.AsyncClient(base_url=sidecar.http_url) as client:
        responses = await asyncio.gather(
            *(
                client.post("/rerank", json={"query": QUERY, "documents": chunk, "property": ""})
                for chunk in chunks
            )
        )
    for chunk, response in zip(chunks, responses, strict=True):
        assert response.status_code == 200
        scores = response.json()["scores"]
        assert [entry["document"] for entry in scores] == chunk
        assert [entry["score"] for entry in scores] == pytest.approx([score(d) for d in chunk])
    assert sum(call.passages for call in emulator.state.calls) == 100


def test_header_key_wins_over_server_key(sidecar: Sidecar, emulator: Emulator) -> None:
    httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": QUERY, "documents": ["a"]},
        headers={"X-Nvidia-Api-Key": REQUEST_KEY},
    )
    httpx.post(sidecar.http_url + "/rerank", json={"query": QUERY, "documents": ["a"]})
    assert [call.authorization for call in emulator.state.calls] == [
        f"Bearer {REQUEST_KEY}",
        f"Bearer {SERVER_KEY}",
    ]


def test_more_than_512_documents_are_chunked(sidecar: Sidecar, emulator: Emulator) -> None:
    documents = [f"way {i}" for i in range(1200)]
    response = httpx.post(
        sidecar.http_url + "/rerank", json={"query": QUERY, "documents": documents}
    )
    assert response.status_code == 200
    assert len(response.json()["scores"]) == 1200
    assert sorted(call.passages for call in emulator.state.calls) == [176, 512, 512]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"query": QUERY}, 400, "documents: required"),
        ({"query": "", "documents": ["a"]}, 400, "query must not be empty"),
        ({"query": QUERY, "documents": [1, 2]}, 400, "documents.0"),
        ({"documents": ["a"]}, 400, "query: Field required"),
        ("not json", 400, "body: not valid JSON"),
    ],
)
def test_bad_requests_answer_an_error_object(
    sidecar: Sidecar, body: object, status: int, says: str
) -> None:
    if isinstance(body, str):
        response = httpx.post(
            sidecar.http_url + "/rerank",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    else:
        response = httpx.post(sidecar.http_url + "/rerank", json=body)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_upstream_error_is_an_error_object_with_nims_detail(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    emulator.state.faults.append(Fault(402, {"detail": "Account credits exhausted"}))
    response = httpx.post(sidecar.http_url + "/rerank", json={"query": QUERY, "documents": ["a"]})
    assert response.status_code == 402
    assert "Account credits exhausted" in response.json()["error"]


def test_no_key_error_names_header_and_variable(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(api_key=None, base_url="https://ai.api.nvidia.com")
    response = httpx.post(sidecar.http_url + "/rerank", json={"query": QUERY, "documents": ["a"]})
    assert response.status_code == 401
    error = response.json()["error"]
    assert "X-Nvidia-Api-Key" in error and "NVIDIA_APIKEY" in error
    assert emulator.state.calls == []


def test_openapi_lists_the_weaviate_routes(sidecar: Sidecar) -> None:
    paths = httpx.get(sidecar.http_url + "/openapi.json").json()["paths"]
    assert {"/rerank", "/meta", "/.well-known/live", "/.well-known/ready"} <= set(paths)


def test_a_placeholder_bearer_does_not_hide_a_real_x_nvidia_api_key(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    response = httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": QUERY, "documents": ["go"]},
        headers={"Authorization": "Bearer NO_API_KEY_PROVIDED", "X-Nvidia-Api-Key": REQUEST_KEY},
    )
    assert response.status_code == 200
    assert emulator.state.calls[-1].authorization == f"Bearer {REQUEST_KEY}"


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain; charset=utf-8"])
def test_an_unlabelled_json_body_is_read_as_json(
    sidecar: Sidecar, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = httpx.Request(
        "POST",
        sidecar.http_url + "//rerank",
        content=b'{"query":"which way","documents":["go this way"],"property":""}',
        headers=headers,
    )
    assert request.headers.get("Content-Type") == content_type
    response = httpx.Client().send(request)
    assert response.status_code == 200, response.text
    assert response.json()["scores"][0]["document"] == "go this way"


@pytest.mark.parametrize(
    "path", ["//.well-known/ready", "//meta", "///v1/models", "//v1//retrieval/nvidia/reranking"]
)
def test_repeated_slashes_route_like_one(sidecar: Sidecar, path: str) -> None:
    if path.endswith("reranking"):
        response = httpx.post(
            sidecar.http_url + path,
            json={"query": {"text": "which way"}, "passages": [{"text": "this way"}]},
        )
    else:
        response = httpx.get(sidecar.http_url + path)
    assert 200 <= response.status_code < 300
