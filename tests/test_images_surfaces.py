"""Images on every surface: real PNG and JPEG bytes made here, ranked with text through each HTTP
contract, gRPC and the Python client, with the emulator's scores; bad images refused with a
4xx naming the field before anything is sent; score scales per surface."""

from __future__ import annotations

import base64
import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from reranker_nvidia.client import RerankerClient
from reranker_nvidia.core.documents.images import sniff
from reranker_nvidia.emulator import Fault, image_words, lexical_logit, terms
from reranker_nvidia.errors import RerankError
from reranker_nvidia.types import Document, Hit
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.image_samples import data_url, jpeg_with_comment, pillow, png, square
from tests.support import Emulator, Sidecar

VL = "nvidia/llama-nemotron-rerank-vl-1b-v2"
NEMOTRON = "nvidia/Nemotron-3.5-Rerank-8B-BF16"
QUERY = "Which picture shows a red square?"
RED = square((255, 0, 0), 8)
BLUE_JPEG = jpeg_with_comment("a blue square")

# (text, image bytes): text with an image, an image alone, text alone, a JPEG with text.
DOCUMENTS: list[tuple[str, bytes | None]] = [
    ("a square", RED),
    ("", RED),
    ("the weather is sunny", None),
    ("a photo", BLUE_JPEG),
]


def expected(documents: list[tuple[str, bytes | None]] = DOCUMENTS) -> list[float]:
    scores = []
    for text, image in documents:
        words = terms(text)
        if image is not None:
            media_type = sniff(image)
            assert media_type is not None
            words += list(image_words(image, media_type))
        scores.append(lexical_logit(terms(QUERY), words))
    return scores


class Sender(Protocol):
    def __call__(
        self, sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = ...
    ) -> Sent: ...


@dataclass(frozen=True)
class Sent:
    status: int
    scores: list[float] | None
    message: str


def http(sidecar: Sidecar, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(sidecar.http_url + path, json=body, timeout=60)


def _nim(path: str, as_blob: bool = False) -> Sender:
    def send(sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = VL) -> Sent:
        passages = []
        for text, image in documents:
            passage: dict[str, Any] = {"text": text}
            if image is not None:
                if as_blob:
                    passage = {"text": image if isinstance(image, str) else _b64(image)}
                else:
                    passage["image"] = image if isinstance(image, str) else _data_url(image)
            passages.append(passage)
        response = http(
            sidecar, path, {"model": model, "query": {"text": QUERY}, "passages": passages}
        )
        if response.status_code != 200:
            return Sent(response.status_code, None, response.text)
        scores = [0.0] * len(documents)
        for ranking in response.json()["rankings"]:
            scores[ranking["index"]] = ranking["logit"]
        return Sent(200, scores, "")

    return send


def _cohere(bare: bool) -> Sender:
    def send(sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = VL) -> Sent:
        items: list[Any] = []
        for text, image in documents:
            if image is None:
                items.append(text)
                continue
            shown = image if isinstance(image, str) else _b64(image) if bare else _data_url(image)
            items.append({"text": text, "image": shown} if text else {"image": shown})
        body = {"model": model, "query": QUERY, "documents": items}
        response = http(sidecar, "/v2/rerank", body)
        if response.status_code != 200:
            return Sent(response.status_code, None, response.text)
        scores = [0.0] * len(documents)
        for result in response.json()["results"]:
            scores[result["index"]] = result["relevance_score"]
        return Sent(200, scores, "")

    return send


def _grpc_rank(sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = VL) -> Sent:
    request = pb.RankRequest(
        query=QUERY,
        documents=[text for text, _ in documents],
        options=pb.RankOptions(model=model),
        document_images={
            i: (image if isinstance(image, bytes) else image.encode())
            for i, (_, image) in enumerate(documents)
            if image is not None
        },
    )
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        try:
            response = pb_grpc.RerankerServiceStub(channel).Rank(request, timeout=60)
        except grpc.RpcError as error:
            return Sent(400, None, error.details() or "")
    scores = [0.0] * len(documents)
    for result in response.results:
        scores[result.index] = result.score
    return Sent(200, scores, "")


def _grpc_rerank(sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = VL) -> Sent:
    hits = []
    for index, (text, image) in enumerate(documents):
        properties = struct_pb2.Struct()
        properties.update({"caption": text} if text else {})
        hit = pb.Hit(id=str(index), properties=properties)
        if image is not None:
            hit.binary_properties["blob"] = image if isinstance(image, bytes) else image.encode()
        hits.append(hit)
    request = pb.RerankRequest(
        query=QUERY,
        hits=hits,
        properties=["caption", "blob"],
        options=pb.RankOptions(model=model),
    )
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        try:
            response = pb_grpc.RerankerServiceStub(channel).Rerank(request, timeout=60)
        except grpc.RpcError as error:
            return Sent(400, None, error.details() or "")
    scores = [0.0] * len(documents)
    for entry in response.hits:
        scores[entry.original_position] = entry.rerank_score
    return Sent(200, scores, "")


def _client(sidecar: Sidecar, documents: list[tuple[str, Any]], model: str = VL) -> Sent:
    items = [Document(text, image) if image is not None else text for text, image in documents]
    try:
        with RerankerClient(sidecar.grpc_target) as client:
            ranked = client.rank(QUERY, items, model=model)
    except RerankError as error:
        return Sent(400, None, error.message)
    scores = [0.0] * len(documents)
    for document in ranked.documents:
        scores[document.index] = document.score
    return Sent(200, scores, "")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _data_url(data: bytes) -> str:
    return data_url(data, sniff(data) or "image/png")


def noise(size: int) -> bytes:
    """A PNG that does not compress: random pixels."""
    pixels = random.Random(size).randbytes(size * size * 3)
    rows = [
        [tuple(pixels[(y * size + x) * 3 : (y * size + x) * 3 + 3]) for x in range(size)]
        for y in range(size)
    ]
    return png(rows)


SURFACES: dict[str, Sender] = {
    "nim /v1/ranking": _nim("/v1/ranking"),
    "nim model in path": _nim("/v1/retrieval/nvidia/llama-nemotron-rerank-vl-1b-v2/reranking"),
    "cohere data URL": _cohere(bare=False),
    "cohere bare base64": _cohere(bare=True),
    "grpc Rank": _grpc_rank,
    "grpc Rerank": _grpc_rerank,
    "python client": _client,
}


@pytest.mark.parametrize("surface", list(SURFACES))
def test_text_and_images_are_ranked_on_every_surface(
    sidecar: Sidecar, emulator: Emulator, surface: str
) -> None:
    sent = SURFACES[surface](sidecar, DOCUMENTS)
    assert sent.status == 200, sent.message
    assert sent.scores is not None
    assert sent.scores == pytest.approx(expected())
    assert sent.scores.index(max(sent.scores)) in (0, 1), "a red square ranks first"
    [call] = emulator.state.calls
    assert call.images == 3
    assert not call.image_only_with_text, "an image-only passage went to NIM with a text"


@pytest.mark.parametrize("path", ["/rerank", "/v1/retrieval/nvidia/reranking"])
def test_weaviate_blobs_are_images_for_a_vl_model_and_text_for_a_text_model(
    make_sidecar: SidecarFactory, emulator: Emulator, path: str
) -> None:
    documents = [_b64(RED), _b64(pillow("JPEG", (0, 0, 255))), "a photo of the sea"]
    for model, as_images in ((VL, True), ("nvidia/llama-3.2-nv-rerankqa-1b-v2", False)):
        emulator.state.calls.clear()
        sidecar = make_sidecar(model=model)
        if path == "/rerank":
            body: dict[str, Any] = {"query": QUERY, "documents": documents, "property": ""}
        else:
            body = {
                "model": model,
                "query": {"text": QUERY},
                "passages": [{"text": document} for document in documents],
            }
        response = http(sidecar, path, body)
        assert response.status_code == 200, response.text
        [call] = emulator.state.calls
        assert call.images == (2 if as_images else 0), model


def test_detection_can_be_switched_off(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(model=VL, detect_image_blobs=False)
    response = http(sidecar, "/rerank", {"query": QUERY, "documents": [_b64(RED)]})
    assert response.status_code == 200
    assert emulator.state.calls[0].images == 0


BAD_IMAGES: list[tuple[str, Any, str]] = [
    ("a URL", "https://example.com/red.png", "not fetched"),
    ("an asset id", "data:image/png;asset_id,abc123", "asset id"),
    ("bad base64", "data:image/png;base64,!!!not-base64!!!", "not valid base64"),
    ("not an image", "data:image/png;base64," + _b64(b"just some bytes, not a picture"), "not a"),
    ("over the limit", data_url(noise(64)), "RERANKER_MAX_IMAGE_BYTES"),
]


@pytest.mark.parametrize("surface", list(SURFACES))
def test_the_document_count_is_checked_before_any_image_is_read(
    make_sidecar: SidecarFactory, emulator: Emulator, surface: str
) -> None:
    """Past RERANKER_MAX_DOCUMENTS a request is refused on its count, whatever its images
    hold: none of them is decoded first (a body of many tiny images costs no image work)."""
    sidecar = make_sidecar(max_documents=3)
    broken = "data:image/png;base64,!!!not-base64!!!"
    image = broken.encode() if surface in ("grpc Rank", "grpc Rerank", "python client") else broken
    sent = SURFACES[surface](sidecar, [("a square", image)] * 4)
    assert 400 <= sent.status < 500, sent
    assert "4 given, at most 3" in sent.message, sent.message
    assert emulator.state.calls == []


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize(("name", "image", "says"), BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_a_bad_image_is_refused_naming_the_field_before_anything_is_sent(
    make_sidecar: SidecarFactory,
    emulator: Emulator,
    surface: str,
    name: str,
    image: Any,
    says: str,
) -> None:
    if surface in ("grpc Rank", "grpc Rerank", "python client"):
        # gRPC carries bytes: a data URL's text is bytes that are no image.
        image = noise(64) if name == "over the limit" else image.encode()
        says = says if name == "over the limit" else "not a"
    sidecar = make_sidecar(max_image_bytes=8192)
    sent = SURFACES[surface](sidecar, [("a square", image), ("text", None)])
    assert 400 <= sent.status < 500, sent
    assert says in sent.message, sent.message
    assert "image" in sent.message or "document_images" in sent.message or "blob" in sent.message
    assert emulator.state.calls == []


@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_format_or_an_image_the_model_does_not_take_is_refused(
    make_sidecar: SidecarFactory, emulator: Emulator, surface: str
) -> None:
    sidecar = make_sidecar()
    webp = SURFACES[surface](sidecar, [("a square", pillow("WEBP"))], NEMOTRON)
    text_model = SURFACES[surface](
        sidecar, [("a square", RED)], "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    )
    assert webp.status == 400 or webp.status == 422, webp
    assert "takes PNG or JPEG images, not WebP" in webp.message
    assert 400 <= text_model.status < 500, text_model
    assert "takes no images" in text_model.message
    assert emulator.state.calls == []


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sigmoid_scale_on_rerank_answers_probabilities(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(score_scale="sigmoid")
    documents = ["go this way", "bananas", "which way should i go"]
    response = http(sidecar, "/rerank", {"query": "which way should i go", "documents": documents})
    scores = [entry["score"] for entry in response.json()["scores"]]
    logits = [lexical_logit(terms("which way should i go"), terms(d)) for d in documents]
    assert scores == pytest.approx([sigmoid(logit) for logit in logits])
    assert all(0 < score < 1 for score in scores)


def test_a_per_surface_scale_applies_to_the_named_surfaces_only(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(score_scale="weaviate=sigmoid,cohere=sigmoid")
    query, documents = "which way should i go", ["go this way", "bananas"]
    logits = [lexical_logit(terms(query), terms(d)) for d in documents]
    weaviate = http(sidecar, "/rerank", {"query": query, "documents": documents}).json()
    assert [e["score"] for e in weaviate["scores"]] == pytest.approx([sigmoid(x) for x in logits])
    cohere = http(sidecar, "/v1/rerank", {"query": query, "documents": documents}).json()
    assert {r["index"]: r["relevance_score"] for r in cohere["results"]} == pytest.approx(
        {i: sigmoid(x) for i, x in enumerate(logits)}
    )
    nim = http(
        sidecar,
        "/v1/ranking",
        {"query": {"text": query}, "passages": [{"text": d} for d in documents]},
    ).json()
    assert {r["index"]: r["logit"] for r in nim["rankings"]} == pytest.approx(
        dict(enumerate(logits))
    )
    with RerankerClient(sidecar.grpc_target) as client:
        ranked = client.rank(query, documents)
    assert {d.index: d.score for d in ranked.documents} == pytest.approx(dict(enumerate(logits)))
    meta = httpx.get(sidecar.http_url + "/meta").json()
    assert meta["score_scales"] == {
        "weaviate": "sigmoid",
        "nim": "logit",
        "cohere": "sigmoid",
        "grpc": "logit",
    }


def test_hits_with_images_come_back_whole(sidecar: Sidecar, emulator: Emulator) -> None:
    hits = [
        Hit("red", {"caption": "a square", "blob": RED}),
        Hit("sunny", {"caption": "the weather is sunny"}),
        Hit("empty", {"caption": ""}),
    ]
    with RerankerClient(sidecar.grpc_target) as client:
        reranked = client.rerank(hits, properties=["caption", "blob"], query=QUERY, model=VL)
    assert [entry.hit.id for entry in reranked.hits] == ["red", "sunny", "empty"]
    assert reranked.hits[0].hit.properties["blob"] == RED
    assert reranked.hits[2].rerank_score is None


def test_a_scale_that_ties_far_apart_logits_keeps_their_order(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    """A sigmoid gives 1.0 to every logit above about 37 and 0.0 below about -745: the order
    stays NIM's, on every surface that orders its answer."""
    sidecar = make_sidecar(score_scale="sigmoid")
    logits = [37.0, 40.0, -800.0, -750.0]
    rankings = [{"index": i, "logit": logit} for i, logit in enumerate(logits)]
    best_first = [1, 0, 3, 2]
    query, documents = "which way should i go", ["a", "b", "c", "d"]
    for _ in range(2):
        emulator.state.faults.append(Fault(200, {"rankings": rankings, "usage": {}}))
    cohere = http(sidecar, "/v1/rerank", {"query": query, "documents": documents}).json()
    assert [result["index"] for result in cohere["results"]] == best_first
    assert [result["relevance_score"] for result in cohere["results"]] == [1.0, 1.0, 0.0, 0.0]
    with RerankerClient(sidecar.grpc_target) as client:
        ranked = client.rank(query, documents)
    assert [document.index for document in ranked.documents] == best_first
