"""The NIM emulator speaks NIM's ranking API faithfully enough to stand in for it."""

from __future__ import annotations

import httpx
import pytest

from reranker_nvidia.emulator import lexical_logit, terms
from tests.support import Emulator


def body(passages: int | list[str], **extra: object) -> dict[str, object]:
    texts = passages if isinstance(passages, list) else [f"passage {i}" for i in range(passages)]
    return {
        "model": "nvidia/rerank-qa-mistral-4b",
        "query": {"text": "passage 3"},
        "passages": [{"text": text} for text in texts],
        **extra,
    }


def test_rankings_are_sorted_by_logit_with_usage(emulator: Emulator) -> None:
    passages = ["nothing", "passage three", "passage 3", "3"]
    response = httpx.post(emulator.url + "/v1/ranking", json=body(passages))
    assert response.status_code == 200
    answer = response.json()
    logits = [entry["logit"] for entry in answer["rankings"]]
    assert logits == sorted(logits, reverse=True)
    assert answer["rankings"][0]["index"] == 2
    assert sorted(entry["index"] for entry in answer["rankings"]) == [0, 1, 2, 3]
    expected = sum(2 + len(terms(text)) for text in passages)
    assert answer["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_a_passages_score_depends_on_nothing_but_its_pair(emulator: Emulator) -> None:
    """As a cross-encoder's: alone or among others, in any position, the same score."""

    def scores(passages: list[str]) -> dict[str, float]:
        answer = httpx.post(
            emulator.url + "/v1/ranking",
            json={
                "model": "m",
                "query": {"text": "which way north"},
                "passages": [{"text": text} for text in passages],
            },
        ).json()
        return {passages[r["index"]]: r["logit"] for r in answer["rankings"]}

    alone = scores(["go north this way"])
    among = scores(["bananas", "the way", "go north this way", "north north north"])
    assert among["go north this way"] == alone["go north this way"]
    assert among["go north this way"] > among["the way"] > among["bananas"]
    assert lexical_logit(["a"], ["a"]) > lexical_logit(["a"], ["b"]) == -5.0
    assert lexical_logit([], ["a"]) == -5.0


def test_more_than_512_passages_is_422_in_fastapi_shape(emulator: Emulator) -> None:
    response = httpx.post(emulator.url + "/v1/ranking", json=body(513))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "passages"]
    assert httpx.post(emulator.url + "/v1/ranking", json=body(512)).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "m", "query": "not an object", "passages": [{"text": "a"}]},
        {"model": "m", "query": {"text": "q"}, "passages": ["a"]},
        {"query": {"text": "q"}, "passages": [{"text": "a"}]},
        {"model": "m", "query": {"text": "q"}, "passages": [{"text": "a"}], "truncate": "START"},
    ],
)
def test_malformed_requests_are_422(emulator: Emulator, bad: dict[str, object]) -> None:
    response = httpx.post(emulator.url + "/v1/ranking", json=bad)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_key_is_checked_when_configured(emulator: Emulator) -> None:
    emulator.state.api_key = "nvapi-x"
    assert httpx.post(emulator.url + "/v1/ranking", json=body(1)).status_code == 401
    ok = httpx.post(
        emulator.url + "/v1/ranking", json=body(1), headers={"Authorization": "Bearer nvapi-x"}
    )
    assert ok.status_code == 200


def test_truncate_end_cuts_and_none_refuses(emulator: Emulator) -> None:
    emulator.state.max_pair_tokens = 10
    long_text = ["word " * 20]
    refused = httpx.post(emulator.url + "/v1/ranking", json=body(long_text, truncate="NONE"))
    assert refused.status_code == 422
    assert "exceeds maximum allowed token size 10" in refused.json()["detail"][0]["msg"]
    cut = httpx.post(emulator.url + "/v1/ranking", json=body(long_text, truncate="END"))
    assert cut.status_code == 200
    assert cut.json()["usage"]["prompt_tokens"] == 10


def test_hosted_paths(emulator: Emulator) -> None:
    legacy = httpx.post(emulator.url + "/v1/retrieval/nvidia/reranking", json=body(2))
    assert legacy.status_code == 200
    llama = body(2, model="nvidia/llama-3.2-nv-rerankqa-1b-v2")
    path = "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking"
    assert httpx.post(emulator.url + path, json=llama).status_code == 200
    wrong = httpx.post(emulator.url + path, json=body(2))
    assert wrong.status_code == 404
    assert "is not served at" in wrong.json()["detail"]
