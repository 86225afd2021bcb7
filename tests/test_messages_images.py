"""Images through the Python client and the gRPC messages, converted both ways without a
server: documents with images fill ``document_images``, bytes properties travel in
``binary_properties``, and what carried no image is exactly what it was."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

import reranker_nvidia
from reranker_nvidia.client import AsyncRerankerClient, RerankerClient
from reranker_nvidia.errors import RerankError
from reranker_nvidia.messages import (
    document_images_from_proto,
    documents_to_proto,
    hit_from_proto,
    hit_to_proto,
)
from reranker_nvidia.types import Document, Hit, ScoredDocument, SearchType
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from tests.image_samples import BLUE_SQUARE, RED_SQUARE, RED_SQUARE_B64

RED_URL = "data:image/png;base64," + RED_SQUARE_B64


def test_documents_become_texts_and_images_by_position() -> None:
    texts, images = documents_to_proto(
        [
            "plain text",
            RED_SQUARE,
            Document("A red square.", RED_URL),
            Document(image=BLUE_SQUARE),
            Document("text only"),
            RED_URL,
        ]
    )
    assert texts == ["plain text", "", "A red square.", "", "text only", RED_URL]
    assert images == {1: RED_SQUARE, 2: RED_SQUARE, 3: BLUE_SQUARE}
    assert documents_to_proto(["a", "b"]) == (["a", "b"], {})


def test_the_server_reads_images_only_of_documents_there_are() -> None:
    request = pb.RankRequest(documents=["", "b"], document_images={0: RED_SQUARE})
    assert document_images_from_proto(request) == {0: RED_SQUARE}
    assert document_images_from_proto(pb.RankRequest(documents=["a"])) == {}
    request.document_images[2] = BLUE_SQUARE
    with pytest.raises(RerankError, match=re.escape("document_images[2]: no such document (2 ")):
        document_images_from_proto(request)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("https://example.com/a.png", "documents[0].image: not a data URL"),
        ("data:image/png;asset_id,abc", "documents[0].image: not a data URL"),
        ("data:image/png;base64,!!!", "documents[0].image: not valid base64"),
    ],
)
def test_an_image_string_must_be_a_base64_data_url(image: str, message: str) -> None:
    with pytest.raises(RerankError, match=re.escape(message)):
        documents_to_proto([Document(image=image)])


def test_documents_of_other_types_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"documents\[1\]: expected str, bytes or Document"):
        documents_to_proto(["a", 42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"documents\[0\].image: expected bytes or a data URL"):
        documents_to_proto([Document(image=42)])  # type: ignore[arg-type]


def test_bytes_properties_travel_as_binary_properties_and_come_back_as_bytes() -> None:
    hit = Hit(
        "h1",
        {"title": "A red square", "blob": RED_SQUARE, "thumb": bytearray(BLUE_SQUARE), "n": 3.0},
        score=0.5,
        search_type=SearchType.HYBRID,
    )
    message = pb.Hit.FromString(hit_to_proto(hit).SerializeToString())
    assert dict(message.binary_properties) == {"blob": RED_SQUARE, "thumb": BLUE_SQUARE}
    assert set(message.properties.fields) == {"title", "n"}
    back = hit_from_proto(message)
    assert back == Hit(
        "h1",
        {"title": "A red square", "n": 3.0, "blob": RED_SQUARE, "thumb": BLUE_SQUARE},
        score=0.5,
        search_type=SearchType.HYBRID,
    )
    assert hit_from_proto(message, ["blob", "title"]).properties == {
        "title": "A red square",
        "blob": RED_SQUARE,
    }
    assert hit_from_proto(message, ["title"]).properties == {"title": "A red square"}


def test_a_hit_without_bytes_is_converted_as_before() -> None:
    hit = Hit("h2", {"title": "text", "tags": ["a", "b"]}, distance=0.1)
    message = hit_to_proto(hit)
    assert len(message.binary_properties) == 0
    assert hit_from_proto(message) == hit


def test_a_property_in_both_maps_is_refused() -> None:
    message = hit_to_proto(Hit("h3", {"blob": "text"}))
    message.binary_properties["blob"] = RED_SQUARE
    with pytest.raises(RerankError, match=r"property 'blob' is in both properties and binary"):
        hit_from_proto(message, ["blob"])


class FakeMethod:
    """A unary method as grpc's channel gives it: callable, and ``with_call`` for the answer
    with its call (no trailing metadata here)."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call

    def __call__(self, request: Any, **options: Any) -> Any:
        return self.call(request, **options)

    def with_call(self, request: Any, **options: Any) -> tuple[Any, Any]:
        return self.call(request, **options), self

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class FakeChannel:
    """A channel whose calls serialise the request, record it, and answer ``respond(request)``."""

    def __init__(self, respond: Callable[[pb.RankRequest], pb.RankResponse]) -> None:
        self.respond = respond
        self.sent: list[pb.RankRequest] = []

    def unary_unary(
        self, method: str, request_serializer: Any, response_deserializer: Any, **_: Any
    ) -> Any:
        def call(request: Any, metadata: Any = None, timeout: Any = None) -> Any:
            sent = pb.RankRequest.FromString(request_serializer(request))
            self.sent.append(sent)
            return response_deserializer(self.respond(sent).SerializeToString())

        return FakeMethod(call)

    def close(self) -> None:
        pass


def best_images_first(request: pb.RankRequest) -> pb.RankResponse:
    scores = [2.0 if i in request.document_images else 1.0 for i in range(len(request.documents))]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return pb.RankResponse(
        results=[pb.RankedDocument(index=i, score=scores[i]) for i in order], model="m"
    )


def test_the_client_sends_document_images_and_shows_each_scored_documents_image() -> None:
    channel = FakeChannel(best_images_first)
    documents: list[str | bytes | Document] = [
        "sea",
        Document("A red square.", RED_URL),
        BLUE_SQUARE,
    ]
    with RerankerClient(channel=channel) as client:
        answer = client.rank("red?", documents, model="nvidia/llama-nemotron-rerank-vl-1b-v2")
    (sent,) = channel.sent
    assert list(sent.documents) == ["sea", "A red square.", ""]
    assert dict(sent.document_images) == {1: RED_SQUARE, 2: BLUE_SQUARE}
    assert answer.documents == [
        ScoredDocument(1, 2.0, "A red square.", RED_SQUARE),
        ScoredDocument(2, 2.0, "", BLUE_SQUARE),
        ScoredDocument(0, 1.0, "sea"),
    ]


def test_text_only_calls_send_what_they_always_sent() -> None:
    channel = FakeChannel(best_images_first)
    with RerankerClient(channel=channel) as client:
        answer = client.rank("q", ["a", "b"])
    (sent,) = channel.sent
    assert sent == pb.RankRequest(query="q", documents=["a", "b"], options=pb.RankOptions())
    assert [doc.image for doc in answer.documents] == [None, None]


def test_the_async_client_sends_images_alike() -> None:
    class AsyncChannel(FakeChannel):
        def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
            method = super().unary_unary(*args, **kwargs)

            class AsyncCall:
                """What grpc.aio's method returns: awaitable, with trailing metadata."""

                def __init__(self, request: Any, options: Any) -> None:
                    self.answer = method(request, **options)

                def __await__(self) -> Any:
                    async def answer() -> Any:
                        return self.answer

                    return answer().__await__()

                async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
                    return ()

            return lambda request, **options: AsyncCall(request, options)

        async def close(self, grace: float | None = None) -> None:  # type: ignore[override]
            pass

    channel = AsyncChannel(best_images_first)

    async def run() -> list[ScoredDocument]:
        async with AsyncRerankerClient(channel=channel) as client:
            return (await client.rank("q", [RED_SQUARE, "text"])).documents

    assert asyncio.run(run())[0] == ScoredDocument(0, 2.0, "", RED_SQUARE)


def test_document_is_public() -> None:
    assert reranker_nvidia.Document is Document and "Document" in reranker_nvidia.__all__
    assert ScoredDocument(0, 1.0, "text").image is None
