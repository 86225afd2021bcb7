"""The NIM-compatible routes over a real HTTP server, with the emulator as the upstream."""

from __future__ import annotations

import httpx
import pytest

from reranker_nvidia.core.targets.catalog import DEFAULT_CATALOG
from reranker_nvidia.emulator import Fault, lexical_logit, terms
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "which way should i go"
PASSAGES = ["bananas", "go this way", "which way should i go north", "way"]


def nim_body(passages: list[str] = PASSAGES, **extra: object) -> dict[str, object]:
    return {"query": {"text": QUERY}, "passages": [{"text": p} for p in passages], **extra}


def expected_order(passages: list[str]) -> list[int]:
    scores = [lexical_logit(terms(QUERY), terms(p)) for p in passages]
    return sorted(range(len(passages)), key=lambda i: -scores[i])


@pytest.mark.parametrize(
    "path",
    [
        "/v1/ranking",
        "/v1/retrieval/nvidia/reranking",
        "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
    ],
)
def test_each_nim_path_answers_rankings_sorted_by_logit(sidecar: Sidecar, path: str) -> None:
    response = httpx.post(
        sidecar.http_url + path, json=nim_body(model="nvidia/rerank-qa-mistral-4b")
    )
    assert response.status_code == 200
    answer = response.json()
    assert [r["index"] for r in answer["rankings"]] == expected_order(PASSAGES)
    logits = [r["logit"] for r in answer["rankings"]]
    assert logits == sorted(logits, reverse=True)
    assert answer["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "body_model", "upstream_model"),
    [
        ("/v1/ranking", "nvidia/llama-3_2-nv-rerankqa-1b-v2", "nvidia/llama-3.2-nv-rerankqa-1b-v2"),
        ("/v1/ranking", None, "nvidia/rerank-qa-mistral-4b"),
        ("/v1/retrieval/nvidia/reranking", None, "nvidia/rerank-qa-mistral-4b"),
        (
            "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
            None,
            "nvidia/llama-3.2-nv-rerankqa-1b-v2",
        ),
        (
            "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking",
            "nvidia/nv-rerankqa-mistral-4b-v3",
            "nvidia/nv-rerankqa-mistral-4b-v3",
        ),
        ("/v1/retrieval/my-reranker/reranking", None, "my-reranker"),
    ],
)
def test_model_comes_from_body_then_path_then_default(
    sidecar: Sidecar, emulator: Emulator, path: str, body_model: str | None, upstream_model: str
) -> None:
    body = nim_body(model=body_model) if body_model else nim_body()
    response = httpx.post(sidecar.http_url + path, json=body)
    assert response.status_code == 200
    assert emulator.state.calls[-1].model == upstream_model


def test_bearer_key_wins_over_server_key_at_the_upstream(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    url = sidecar.http_url + "/v1/retrieval/nvidia/reranking"
    httpx.post(url, json=nim_body(), headers={"Authorization": f"Bearer {REQUEST_KEY}"})
    httpx.post(url, json=nim_body())
    assert [call.authorization for call in emulator.state.calls] == [
        f"Bearer {REQUEST_KEY}",
        f"Bearer {SERVER_KEY}",
    ]


def test_no_key_anywhere_is_401_naming_the_bearer_header(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(api_key=None, base_url="https://ai.api.nvidia.com")
    response = httpx.post(sidecar.http_url + "/v1/ranking", json=nim_body())
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["detail"]
    assert emulator.state.calls == []


def test_more_than_512_passages_are_chunked(sidecar: Sidecar, emulator: Emulator) -> None:
    passages = [f"way number {i}" for i in range(1300)]
    response = httpx.post(sidecar.http_url + "/v1/ranking", json=nim_body(passages))
    assert response.status_code == 200
    answer = response.json()
    assert sorted(r["index"] for r in answer["rankings"]) == list(range(1300))
    assert [r["index"] for r in answer["rankings"]] == expected_order(passages)
    assert sorted(call.passages for call in emulator.state.calls) == [276, 512, 512]
    assert answer["usage"]["total_tokens"] == sum(5 + 3 for _ in passages)


def test_top_k_and_truncate_pass_through(sidecar: Sidecar, emulator: Emulator) -> None:
    for limit in ("top_k", "top_n"):
        body = {**nim_body(truncate="END"), limit: 2}
        response = httpx.post(sidecar.http_url + "/v1/ranking", json=body)
        assert [r["index"] for r in response.json()["rankings"]] == expected_order(PASSAGES)[:2]
    assert {call.truncate for call in emulator.state.calls} == {"END"}


@pytest.mark.parametrize(
    ("fault", "status", "detail"),
    [
        (Fault(402, {"detail": "Account credits exhausted"}), 402, "Account credits exhausted"),
        (Fault(403, {"detail": "Forbidden"}), 403, "Forbidden"),
        (Fault(429, {"detail": "Slow down"}, headers={"Retry-After": "7"}), 429, "Slow down"),
        (Fault(503, raw=b"upstream down"), 503, "upstream down"),
    ],
)
def test_upstream_errors_keep_nims_status_and_string_detail(
    sidecar: Sidecar, emulator: Emulator, fault: Fault, status: int, detail: str
) -> None:
    emulator.state.faults.append(fault)
    response = httpx.post(sidecar.http_url + "/v1/ranking", json=nim_body())
    assert response.status_code == status
    assert detail in response.json()["detail"]
    if status == 429:
        assert response.headers["Retry-After"] == "7"


def test_unprocessable_errors_use_nims_list_shape(sidecar: Sidecar, emulator: Emulator) -> None:
    emulator.state.faults.append(Fault(422, {"detail": [{"msg": "passage too long"}]}))
    upstream = httpx.post(sidecar.http_url + "/v1/ranking", json=nim_body())
    assert upstream.status_code == 422
    assert "passage too long" in upstream.json()["detail"][0]["msg"]

    ours = httpx.post(sidecar.http_url + "/v1/ranking", json={"query": {"text": "q"}})
    assert ours.status_code == 422
    assert "passages: Field required" in ours.json()["detail"][0]["msg"]

    bad_truncate = httpx.post(sidecar.http_url + "/v1/ranking", json=nim_body(truncate="START"))
    assert bad_truncate.status_code == 422
    assert "truncate" in bad_truncate.json()["detail"][0]["msg"]


def test_models_lists_the_default_first_then_every_known_model(sidecar: Sidecar) -> None:
    response = httpx.get(sidecar.http_url + "/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    assert listing["data"][0] == {
        "id": "nvidia/rerank-qa-mistral-4b",
        "object": "model",
        "created": 0,
        "owned_by": "nvidia",
        "root": "nvidia/rerank-qa-mistral-4b",
    }
    ids = [card["id"] for card in listing["data"]]
    assert ids == list(dict.fromkeys(ids)), "each model once"
    assert set(DEFAULT_CATALOG.ids) <= set(ids)


def test_models_adds_the_operators_models(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(
        model="acme/rerank-x", models=("acme/rerank-y", "nvidia/llama-3_2-nv-rerankqa-1b-v2")
    )
    ids = [card["id"] for card in httpx.get(sidecar.http_url + "/v1/models").json()["data"]]
    assert ids[:2] == ["acme/rerank-x", "acme/rerank-y"]
    assert ids.count("nvidia/llama-3.2-nv-rerankqa-1b-v2") == 1
