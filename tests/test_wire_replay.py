"""Replay what real clients put on the socket, byte for byte, and read the answer as they do.

``tests/wire/`` holds requests captured from real clients (Weaviate's Go module clients,
LangChain, LlamaIndex, Haystack, LiteLLM, the Cohere SDK); ``INDEX.md`` there says which is
which. Each is sent over a raw socket with only the ``Host`` value changed. The checks are
derived from the request itself (its route, body and key), so a fixture dropped into the
folder is replayed with no code change.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reranker_nvidia.core.targets.catalog import DEFAULT_CATALOG
from reranker_nvidia.emulator import lexical_logit, terms
from reranker_nvidia.settings import DEFAULT_MODEL
from tests.support import SERVER_KEY, Emulator, Sidecar

WIRE = Path(__file__).parent / "wire"
FIXTURES = sorted(WIRE.glob("*.http"))
# What clients without a key send in its place (tests/wire/INDEX.md): not keys.
NO_KEY_PLACEHOLDERS = {"", "**********", "NO_API_KEY_PROVIDED", "None", "null"}
# The emulator's limit on a query+passage pair, in its word tokens.
MAX_PAIR_TOKENS = 512


@dataclass(frozen=True)
class Captured:
    """One captured request: its request line, headers in order, and body."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    @classmethod
    def read(cls, path: Path) -> Captured:
        raw = path.read_bytes()
        head, _, body = raw.partition(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = [(name, value.strip()) for name, _, value in (x.partition(":") for x in lines)]
        return cls(method, target, headers, body, raw)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def route(self) -> str:
        return re.sub("/+", "/", self.path)

    def json(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        assert isinstance(payload, dict)
        return payload

    def key_sent(self) -> str | None:
        """The NIM key this request carries, placeholders being no key."""
        authorization = self.header("Authorization") or ""
        scheme, _, token = authorization.partition(" ")
        candidates = [token.strip() if scheme.lower() == "bearer" else None]
        candidates.append(self.header("X-Nvidia-Api-Key"))
        return next((k for k in candidates if k and k not in NO_KEY_PLACEHOLDERS), None)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def replay(port: int, raw: bytes) -> Answer:
    """Send ``raw`` with its Host value set to the target; one request per connection."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    target = f"127.0.0.1:{port}".encode()
    head = re.sub(rb"(?im)^(host:[ \t]*)[^\r\n]*", lambda m: m.group(1) + target, head, count=1)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + separator + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return Answer(response.status, response.read())


def expected_logit(query: str, passage: str, truncate: str | None) -> float:
    query_terms, passage_terms = terms(query), terms(passage)
    if truncate == "END":
        passage_terms = passage_terms[: MAX_PAIR_TOKENS - len(query_terms)]
    return lexical_logit(query_terms, passage_terms)


def check_best_first(scores: list[float]) -> None:
    assert scores == sorted(scores, reverse=True)


def test_the_fixtures_are_here() -> None:
    assert len(FIXTURES) >= 24, "tests/wire/ should hold every captured request"
    index = (WIRE / "INDEX.md").read_text()
    for fixture in FIXTURES:
        assert fixture.name in index, f"{fixture.name} is not described in INDEX.md"


@pytest.mark.parametrize("fixture", FIXTURES, ids=[fixture.stem for fixture in FIXTURES])
def test_replayed_request_is_answered_as_its_client_expects(
    fixture: Path, sidecar: Sidecar, emulator: Emulator
) -> None:
    request = Captured.read(fixture)
    answer = replay(sidecar.server.http_port, request.raw)
    assert 200 <= answer.status < 300, f"{answer.status}: {answer.body[:300]!r}"
    route = request.route
    if request.method == "GET":
        check_get(route, answer)
        assert emulator.state.calls == []
        return
    body = request.json()
    truncate: str | None
    if route == "/rerank":
        truncate, model = "END", DEFAULT_MODEL
        check_weaviate(body, answer, truncate)
    elif route in ("/v1/rerank", "/v2/rerank"):
        truncate, model = "END", cohere_model(body)
        check_cohere(body, answer, truncate)
    else:
        truncate, model = body.get("truncate"), nim_model(route, body)
        check_nim(body, answer, truncate)
    [call] = emulator.state.calls
    assert call.authorization == f"Bearer {request.key_sent() or SERVER_KEY}"
    assert call.truncate == truncate
    assert call.model == model


def check_get(route: str, answer: Answer) -> None:
    if route.startswith("/.well-known/"):
        assert answer.status == 204
    elif route == "/meta":
        assert isinstance(answer.json(), dict) and answer.json()["name"] == "reranker-nvidia"
    elif route == "/v1/models":
        listing = answer.json()
        assert listing["object"] == "list"
        ids = [card["id"] for card in listing["data"]]
        assert ids[0] == DEFAULT_MODEL
        assert set(DEFAULT_CATALOG.ids) <= set(ids)
    else:
        raise AssertionError(f"no check for GET {route}")


def check_weaviate(body: dict[str, Any], answer: Answer, truncate: str) -> None:
    """Weaviate assigns scores by position and reads nothing else."""
    reply = answer.json()
    query = body["query"]
    assert reply["query"] == query
    if "documents" in body:
        assert reply["property"] is None and reply["score"] is None
        assert [entry["document"] for entry in reply["scores"]] == body["documents"]
        assert [entry["score"] for entry in reply["scores"]] == pytest.approx(
            [expected_logit(query, document, truncate) for document in body["documents"]]
        )
    else:
        assert reply["property"] == body["property"]
        assert reply["score"] == pytest.approx(expected_logit(query, body["property"], truncate))


def check_nim(body: dict[str, Any], answer: Answer, truncate: str | None) -> None:
    reply = answer.json()
    query = body["query"]["text"]
    passages = [passage["text"] for passage in body["passages"]]
    limit = body.get("top_k", body.get("top_n")) or len(passages)
    rankings = reply["rankings"]
    assert len(rankings) == min(limit, len(passages))
    check_best_first([ranking["logit"] for ranking in rankings])
    for ranking in rankings:
        assert ranking["logit"] == pytest.approx(
            expected_logit(query, passages[ranking["index"]], truncate)
        )
    assert reply["usage"]["total_tokens"] > 0


def check_cohere(body: dict[str, Any], answer: Answer, truncate: str) -> None:
    reply = answer.json()
    documents = [doc if isinstance(doc, str) else doc["text"] for doc in body["documents"]]
    results = reply["results"]
    assert len(results) == min(body.get("top_n") or len(documents), len(documents))
    check_best_first([result["relevance_score"] for result in results])
    for result in results:
        text = documents[result["index"]]
        assert result["relevance_score"] == pytest.approx(
            expected_logit(body["query"], text, truncate)
        )
        if body.get("return_documents"):
            assert result["document"] == {"text": text}
        else:
            assert "document" not in result, "Cohere returns documents only when asked"


def nim_model(route: str, body: dict[str, Any]) -> str:
    model = body.get("model")
    if model:
        return str(model)
    match = re.fullmatch(r"/v1/retrieval/([^/]+)/([^/]+)/reranking", route)
    return f"{match[1]}/{match[2]}" if match else DEFAULT_MODEL


def cohere_model(body: dict[str, Any]) -> str:
    model = str(body.get("model") or "")
    return DEFAULT_MODEL if not model or model.startswith("rerank-") else model


LONG_PASSAGE = " ".join(["the trail climbs past the mill to the summit lake"] * 300)


def with_body(raw: bytes, body: dict[str, Any]) -> bytes:
    """``raw`` carrying ``body`` instead, its Content-Length fixed and nothing else changed."""
    head = raw.partition(b"\r\n\r\n")[0]
    content = json.dumps(body, separators=(",", ":")).encode()
    head = re.sub(
        rb"(?im)^(content-length:[ \t]*)\d+", lambda m: m.group(1) + b"%d" % len(content), head
    )
    return head + b"\r\n\r\n" + content


@pytest.mark.parametrize("name", ["weaviate-transformers-rerank", "cohere-v1", "cohere-v2"])
def test_a_3000_word_passage_is_scored_not_refused(
    name: str, sidecar: Sidecar, emulator: Emulator
) -> None:
    request = Captured.read(WIRE / f"{name}.http")
    body = request.json()
    body["documents"] = [LONG_PASSAGE, *body["documents"][1:]]
    assert len(terms(LONG_PASSAGE)) == 3000
    answer = replay(sidecar.server.http_port, with_body(request.raw, body))
    assert answer.status == 200, answer.body[:300]
    if request.route == "/rerank":
        check_weaviate(body, answer, "END")
    else:
        check_cohere(body, answer, "END")
    assert [call.truncate for call in emulator.state.calls] == ["END"]


def test_an_operator_can_keep_nims_refusal_of_long_passages(
    make_sidecar: Any, emulator: Emulator
) -> None:
    sidecar = make_sidecar(truncate="NONE")
    request = Captured.read(WIRE / "weaviate-transformers-rerank.http")
    body = request.json()
    body["documents"] = [LONG_PASSAGE]
    answer = replay(sidecar.server.http_port, with_body(request.raw, body))
    assert answer.status == 422
    assert "exceeds maximum allowed token size" in answer.json()["error"]


def test_cohere_max_tokens_per_doc_truncates_even_when_the_operator_does_not(
    make_sidecar: Any, emulator: Emulator
) -> None:
    sidecar = make_sidecar(truncate="NONE")
    request = Captured.read(WIRE / "cohere-v2.http")
    body = {**request.json(), "max_tokens_per_doc": 4096}
    body["documents"] = [LONG_PASSAGE]
    answer = replay(sidecar.server.http_port, with_body(request.raw, body))
    assert answer.status == 200, answer.body[:300]
    assert [call.truncate for call in emulator.state.calls] == ["END"]


def test_a_body_that_is_not_json_is_still_a_clear_400(sidecar: Sidecar) -> None:
    request = Captured.read(WIRE / "weaviate-transformers-rerank.http")
    head = request.raw.partition(b"\r\n\r\n")[0]
    garbage = b"query=which+way"
    head = re.sub(rb"(?im)^(content-length:[ \t]*)\d+", b"\\g<1>%d" % len(garbage), head)
    answer = replay(sidecar.server.http_port, head + b"\r\n\r\n" + garbage)
    assert answer.status == 400
    assert answer.json() == {"error": "body: not valid JSON"}
