"""Replay the image-bearing requests real clients send (``tests/wire/multimodal/``), byte for
byte: NIM gets image passages (an image-only one without ``text``) and the scores are the
emulator's for those images; Weaviate's blobs are ranked by image with a vision-language model
and as text with a text model."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from reranker_nvidia.core.documents.images import sniff
from reranker_nvidia.emulator import image_words, lexical_logit, terms
from tests.conftest import SidecarFactory
from tests.support import Emulator
from tests.test_wire_replay import Captured, replay

MULTIMODAL = Path(__file__).parent / "wire" / "multimodal"
FIXTURES = sorted(MULTIMODAL.glob("*.http"))
VL_MODEL = "nvidia/llama-nemotron-rerank-vl-1b-v2"


def test_the_fixtures_are_here_and_described() -> None:
    assert len(FIXTURES) == 4
    index = (MULTIMODAL.parent / "INDEX.md").read_text()
    for fixture in FIXTURES:
        assert f"multimodal/{fixture.name}" in index


def passage_words(text: str, image: bytes | None) -> list[str]:
    words = terms(text)
    if image is not None:
        media_type = sniff(image)
        assert media_type is not None
        words += list(image_words(image, media_type))
    return words


def image_of(value: str | None) -> bytes | None:
    """The bytes of a data URL or of bare base64; None for text."""
    if value is None:
        return None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return base64.b64decode(value)


def sent(body: dict[str, Any], blobs: bool) -> list[tuple[str, bytes | None]]:
    """What each document of the request is: (text, image bytes), as the sidecar reads it."""
    documents: list[tuple[str, bytes | None]]
    if "documents" in body:
        documents = [(document, None) for document in body["documents"]]
    else:
        documents = [(p.get("text") or "", image_of(p.get("image"))) for p in body["passages"]]
    if not blobs:
        return documents
    read: list[tuple[str, bytes | None]] = []
    for text, image in documents:
        try:
            decoded = base64.b64decode(text, validate=True) if text else b""
        except ValueError:
            decoded = b""
        read.append(("", decoded) if decoded and sniff(decoded) else (text, image))
    return read


@pytest.mark.parametrize("fixture", FIXTURES, ids=[fixture.stem for fixture in FIXTURES])
@pytest.mark.parametrize("model", [VL_MODEL, "nvidia/llama-3.2-nv-rerankqa-1b-v2"])
def test_an_image_request_is_ranked_as_its_client_expects(
    make_sidecar: SidecarFactory, emulator: Emulator, fixture: Path, model: str
) -> None:
    sidecar = make_sidecar(model=model)
    request = Captured.read(fixture)
    body = request.json()
    carries_images = "passages" in body and any("image" in p for p in body["passages"])
    answer = replay(sidecar.server.http_port, request.raw)
    model = body.get("model") or model
    text_only = model != VL_MODEL
    if text_only and carries_images:
        # A text-only model takes no images: refused before anything is sent.
        assert answer.status == 400 or answer.status == 422, answer.body[:300]
        assert b"takes no images" in answer.body
        assert emulator.state.calls == []
        return
    assert 200 <= answer.status < 300, f"{answer.status}: {answer.body[:300]!r}"
    blobs = model == VL_MODEL and request.route in ("/rerank", "/v1/retrieval/nvidia/reranking")
    documents = sent(body, blobs)
    query = body["query"] if isinstance(body["query"], str) else body["query"]["text"]
    expected = [
        lexical_logit(terms(query), passage_words(text, image)) for text, image in documents
    ]
    reply = answer.json()
    if "scores" in reply:
        scores = [entry["score"] for entry in reply["scores"]]
    else:
        scores = [0.0] * len(documents)
        for ranking in reply["rankings"]:
            scores[ranking["index"]] = ranking["logit"]
    assert scores == pytest.approx(expected)
    [call] = emulator.state.calls
    assert call.images == sum(image is not None for _, image in documents)
    assert not call.image_only_with_text, "an image-only passage went to NIM with a text"
    if any(image is not None for _, image in documents):
        best = max(range(len(scores)), key=scores.__getitem__)
        assert documents[best][1] is not None, "the red square ranks first"
