"""The Cohere/Jina-style rerank routes over a real HTTP server, with the emulator upstream."""

from __future__ import annotations

import httpx
import pytest

from reranker_nvidia.emulator import Fault, lexical_logit, terms
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "which way should i go"
DOCUMENTS: list[object] = ["bananas", {"text": "go this way"}, "which way should i go north"]


def scores() -> list[float]:
    texts = ["bananas", "go this way", "which way should i go north"]
    return [lexical_logit(terms(QUERY), terms(text)) for text in texts]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_results_best_first_with_documents(sidecar: Sidecar, path: str) -> None:
    response = httpx.post(
        sidecar.http_url + path,
        json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True},
    )
    assert response.status_code == 200
    answer = response.json()
    assert [r["index"] for r in answer["results"]] == [2, 1]
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx(
        [scores()[2], scores()[1]]
    )
    assert answer["results"][1]["document"] == {"text": "go this way"}
    assert answer["meta"] == {"billed_units": {"search_units": 1}}
    assert answer["id"] and answer["model"] == "nvidia/rerank-qa-mistral-4b"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
@pytest.mark.parametrize("asked", [{}, {"return_documents": False}])
def test_documents_are_omitted_unless_asked_for(
    sidecar: Sidecar, path: str, asked: dict[str, bool]
) -> None:
    response = httpx.post(
        sidecar.http_url + path, json={"query": QUERY, "documents": DOCUMENTS, **asked}
    )
    assert [set(r) for r in response.json()["results"]] == [{"index", "relevance_score"}] * 3


def test_cohere_model_ids_mean_the_servers_model(sidecar: Sidecar, emulator: Emulator) -> None:
    response = httpx.post(
        sidecar.http_url + "/v2/rerank",
        json={"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCUMENTS},
    )
    assert response.json()["model"] == "nvidia/rerank-qa-mistral-4b"
    assert [call.model for call in emulator.state.calls] == ["nvidia/rerank-qa-mistral-4b"]


def test_bearer_key_and_model_reach_the_upstream(sidecar: Sidecar, emulator: Emulator) -> None:
    body = {"query": QUERY, "documents": ["a"], "model": "nvidia/llama-3_2-nv-rerankqa-1b-v2"}
    httpx.post(
        sidecar.http_url + "/v1/rerank",
        json=body,
        headers={"Authorization": f"Bearer {REQUEST_KEY}"},
    )
    httpx.post(sidecar.http_url + "/v1/rerank", json=body)
    assert [(c.authorization, c.model) for c in emulator.state.calls] == [
        (f"Bearer {REQUEST_KEY}", "nvidia/llama-3.2-nv-rerankqa-1b-v2"),
        (f"Bearer {SERVER_KEY}", "nvidia/llama-3.2-nv-rerankqa-1b-v2"),
    ]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"query": QUERY}, "documents: Field required"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "", "documents": ["a"]}, "query must not be empty"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents.0"),
    ],
)
def test_bad_requests_are_400_with_a_message(sidecar: Sidecar, body: object, says: str) -> None:
    response = httpx.post(sidecar.http_url + "/v1/rerank", json=body)
    assert response.status_code == 400
    assert says in response.json()["message"]


def test_upstream_errors_carry_the_detail(sidecar: Sidecar, emulator: Emulator) -> None:
    emulator.state.faults.append(Fault(429, {"detail": "Slow down"}, headers={"Retry-After": "2"}))
    response = httpx.post(
        sidecar.http_url + "/v1/rerank", json={"query": QUERY, "documents": ["a"]}
    )
    assert response.status_code == 429
    assert "Slow down" in response.json()["message"]
    assert response.headers["Retry-After"] == "2"
