"""Every way a caller reaches the core, as one table: each HTTP contract, each gRPC method and
Weaviate's module config. A security rule is tested by running its whole class of hostile
forms through every row here, not one example through one route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import httpx
from google.protobuf import struct_pb2

from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.support import Sidecar

QUERY = "which way should i go"


@dataclass(frozen=True)
class Call:
    """One request's content, whatever the surface carries it in."""

    documents: tuple[str, ...] = ("go this way", "bananas")
    query: str = QUERY
    key: str | None = None
    base_url: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What came back, in words every surface shares."""

    kind: str
    """ok, invalid, unauthenticated, denied, exhausted, unavailable, deadline, other"""
    detail: str
    scores: list[float] | None = None
    """One per document, in the documents' order."""
    status: object = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.kind} ({self.status}): {self.detail[:300]}"


_HTTP_KINDS = {
    200: "ok",
    400: "invalid",
    422: "invalid",
    401: "unauthenticated",
    403: "denied",
    429: "exhausted",
    502: "unavailable",
    503: "unavailable",
    504: "deadline",
}
_GRPC_KINDS = {
    grpc.StatusCode.OK: "ok",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "denied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "exhausted",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
}


@dataclass(frozen=True)
class Surface:
    name: str
    send: Callable[[Sidecar, Call], Outcome]
    carries_model: bool = True

    def __str__(self) -> str:
        return self.name


def _http(
    sidecar: Sidecar,
    path: str,
    body: dict[str, Any],
    call: Call,
    read: Callable[[Any, int], list[float]],
) -> Outcome:
    headers = {}
    if call.key is not None:
        headers["Authorization"] = f"Bearer {call.key}"
    if call.base_url is not None:
        headers["X-Nvidia-Baseurl"] = call.base_url
    response = httpx.post(sidecar.http_url + path, json=body, headers=headers, timeout=60)
    kind = _HTTP_KINDS.get(response.status_code, "other")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if kind == "ok":
        return Outcome(
            kind,
            "",
            read(payload, len(call.documents)),
            response.status_code,
            dict(response.headers),
        )
    return Outcome(kind, response.text, None, response.status_code, dict(response.headers))


def _weaviate(sidecar: Sidecar, call: Call) -> Outcome:
    body = {"query": call.query, "documents": list(call.documents)}
    return _http(sidecar, "/rerank", body, call, lambda p, n: [s["score"] for s in p["scores"]])


def _nim_body(call: Call) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": {"text": call.query},
        "passages": [{"text": document} for document in call.documents],
    }
    if call.model is not None:
        body["model"] = call.model
    return body


def _nim_scores(payload: Any, count: int) -> list[float]:
    scores = [0.0] * count
    for ranking in payload["rankings"]:
        scores[ranking["index"]] = ranking["logit"]
    return scores


def _nim(path: str) -> Callable[[Sidecar, Call], Outcome]:
    def send(sidecar: Sidecar, call: Call) -> Outcome:
        return _http(sidecar, path, _nim_body(call), call, _nim_scores)

    return send


def path_segments(model: str) -> str:
    """The model as path segments, every character but ``/`` percent-encoded (periods too,
    so that no client normalises a dot segment away before the server sees it)."""
    return "/".join(quote(part, safe="").replace(".", "%2E") for part in model.split("/"))


def _nim_model_in_path(sidecar: Sidecar, call: Call) -> Outcome:
    """LiteLLM's route: the model in the path."""
    model = call.model or "nvidia/rerank-qa-mistral-4b"
    path = "/v1/retrieval/" + path_segments(model) + "/reranking"
    body = _nim_body(call)
    body.pop("model", None)
    return _http(sidecar, path, body, call, _nim_scores)


def _cohere(path: str) -> Callable[[Sidecar, Call], Outcome]:
    def send(sidecar: Sidecar, call: Call) -> Outcome:
        body: dict[str, Any] = {"query": call.query, "documents": list(call.documents)}
        if call.model is not None:
            body["model"] = call.model

        def scores(payload: Any, count: int) -> list[float]:
            found = [0.0] * count
            for result in payload["results"]:
                found[result["index"]] = result["relevance_score"]
            return found

        return _http(sidecar, path, body, call, scores)

    return send


def _grpc(
    sidecar: Sidecar,
    call: Call,
    invoke: Callable[[pb_grpc.RerankerServiceStub, Any], tuple[list[float], Any]],
) -> Outcome:
    metadata = []
    if call.key is not None:
        metadata.append(("x-nvidia-api-key", call.key))
    if call.base_url is not None:
        metadata.append(("x-nvidia-baseurl", call.base_url))
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        try:
            scores, answered = invoke(stub, tuple(metadata))
        except grpc.RpcError as raised:
            error: Any = raised
            code = error.code()
            trailers = {str(k): str(v) for k, v in error.trailing_metadata() or ()}
            return Outcome(
                _GRPC_KINDS.get(code, "other"), error.details() or "", None, code, trailers
            )
    trailers = {str(k): str(v) for k, v in answered.trailing_metadata() or ()}
    return Outcome("ok", "", scores, grpc.StatusCode.OK, trailers)


def _grpc_rank(sidecar: Sidecar, call: Call) -> Outcome:
    def invoke(stub: pb_grpc.RerankerServiceStub, metadata: Any) -> tuple[list[float], Any]:
        request = pb.RankRequest(
            query=call.query,
            documents=list(call.documents),
            options=pb.RankOptions(model=call.model or ""),
        )
        response, answered = stub.Rank.with_call(request, metadata=metadata, timeout=60)
        scores = [0.0] * len(call.documents)
        for result in response.results:
            scores[result.index] = result.score
        return scores, answered

    return _grpc(sidecar, call, invoke)


def _hits(call: Call) -> list[pb.Hit]:
    hits = []
    for index, document in enumerate(call.documents):
        properties = struct_pb2.Struct()
        properties.update({"content": document})
        hits.append(pb.Hit(id=str(index), properties=properties))
    return hits


def _reranked(response: pb.RerankResponse, count: int) -> list[float]:
    scores = [0.0] * count
    for entry in response.hits:
        scores[entry.original_position] = entry.rerank_score
    return scores


def _grpc_rerank(sidecar: Sidecar, call: Call) -> Outcome:
    def invoke(stub: pb_grpc.RerankerServiceStub, metadata: Any) -> tuple[list[float], Any]:
        request = pb.RerankRequest(
            query=call.query,
            hits=_hits(call),
            properties=["content"],
            options=pb.RankOptions(model=call.model or ""),
        )
        response, answered = stub.Rerank.with_call(request, metadata=metadata, timeout=60)
        return _reranked(response, len(call.documents)), answered

    return _grpc(sidecar, call, invoke)


def _grpc_module_config(sidecar: Sidecar, call: Call) -> Outcome:
    """Weaviate's collection config carries the model and base URL."""

    def invoke(stub: pb_grpc.RerankerServiceStub, metadata: Any) -> tuple[list[float], Any]:
        config: dict[str, str] = {}
        if call.model is not None:
            config["model"] = call.model
        if call.base_url is not None:
            config["baseURL"] = call.base_url
        module_config = struct_pb2.Struct()
        module_config.update({"reranker-nvidia": config})
        request = pb.RerankRequest(
            query=call.query, hits=_hits(call), properties=["content"], module_config=module_config
        )
        keyed = tuple(item for item in metadata if item[0] != "x-nvidia-baseurl")
        response, answered = stub.Rerank.with_call(request, metadata=keyed, timeout=60)
        return _reranked(response, len(call.documents)), answered

    return _grpc(sidecar, call, invoke)


SURFACES = [
    Surface("weaviate /rerank", _weaviate, carries_model=False),
    Surface("nim /v1/ranking", _nim("/v1/ranking")),
    Surface("nim /v1/retrieval/nvidia/reranking", _nim("/v1/retrieval/nvidia/reranking")),
    Surface("nim model in path", _nim_model_in_path),
    Surface("cohere /v1/rerank", _cohere("/v1/rerank")),
    Surface("cohere /v2/rerank", _cohere("/v2/rerank")),
    Surface("grpc Rank", _grpc_rank),
    Surface("grpc Rerank", _grpc_rerank),
    Surface("grpc Rerank module_config", _grpc_module_config),
]
MODEL_SURFACES = [surface for surface in SURFACES if surface.carries_model]
