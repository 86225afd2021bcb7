"""``make demo``: the NIM emulator and the sidecar on loopback, one set of hybrid-search hits
reranked through gRPC and through every HTTP surface, then pictures and text ranked together
by a vision-language model. Needs no key and no network."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Sequence

import httpx

from reranker_nvidia.client import AsyncRerankerClient
from reranker_nvidia.emulator import EmulatorState, create_emulator_app
from reranker_nvidia.server.asgi import AsgiServer
from reranker_nvidia.server.sidecar import SidecarServer
from reranker_nvidia.settings import Settings
from reranker_nvidia.types import Document, Hit, SearchType

QUERY = "which trail leads to the summit lake"

# What a hybrid search (bm25 + near_text) might return, in its own order.
HITS = [
    Hit(
        "h1",
        {"title": "Parking", "content": "The car park fills early on summer weekends."},
        score=0.91,
        search_type=SearchType.HYBRID,
    ),
    Hit(
        "h2",
        {"title": "North trail", "content": "The north trail climbs to the summit lake."},
        score=0.88,
        search_type=SearchType.HYBRID,
    ),
    Hit(
        "h3",
        {"title": "Lake fishing", "content": "Fishing at the lake needs a permit."},
        score=0.85,
        search_type=SearchType.HYBRID,
    ),
    Hit("h4", {"title": "Photo", "content": ""}, score=0.80, search_type=SearchType.HYBRID),
    Hit(
        "h5",
        {"title": "Summit", "content": "Which trail? Take the ridge trail to the summit."},
        score=0.77,
        search_type=SearchType.HYBRID,
    ),
]
TEXTS = [str(hit.properties["content"]) for hit in HITS]

VL_MODEL = "nvidia/llama-nemotron-rerank-vl-1b-v2"
PICTURE_QUERY = "which picture shows a red square"


def square_png(rgb: tuple[int, int, int], size: int = 8) -> bytes:
    """A PNG of one colour, made here so the demo needs no image file."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PICTURES = [
    ("a blue square", Document(image=square_png((0, 0, 255)))),
    ("a sunny beach (text only)", Document("A photo of a sunny beach.")),
    ("a red square", Document(image=square_png((255, 0, 0)))),
]


def _print(surface: str, ranked: Sequence[tuple[int, float | None]]) -> None:
    print(f"\n{surface}")
    for place, (index, score) in enumerate(ranked, 1):
        shown = "   (no text)" if score is None else f"{score:8.3f}"
        print(f"  {place}. {shown}  {HITS[index].id} {HITS[index].properties['title']}")


async def _through_every_surface(grpc_target: str, http_url: str) -> None:
    print(f'query: "{QUERY}"')
    _print("hybrid search order", [(i, HITS[i].score) for i in range(len(HITS))])

    async with AsyncRerankerClient(grpc_target) as client:
        reranked = await client.rerank(HITS, properties=["content"], query=QUERY)
    _print("gRPC Rerank", [(entry.position, entry.rerank_score) for entry in reranked.hits])

    async with httpx.AsyncClient(base_url=http_url) as http:
        weaviate = await http.post("/rerank", json={"query": QUERY, "documents": TEXTS})
        scores = [entry["score"] for entry in weaviate.raise_for_status().json()["scores"]]
        by_score = sorted(range(len(scores)), key=lambda i: -scores[i])
        _print("HTTP POST /rerank (Weaviate sidecar)", [(i, scores[i]) for i in by_score])

        passages = [{"text": text} for text in TEXTS]
        for path in ("/v1/ranking", "/v1/retrieval/nvidia/reranking"):
            nim = await http.post(path, json={"query": {"text": QUERY}, "passages": passages})
            rankings = nim.raise_for_status().json()["rankings"]
            _print(f"HTTP POST {path} (NIM)", [(r["index"], r["logit"]) for r in rankings])

        cohere = await http.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS})
        results = cohere.raise_for_status().json()["results"]
        _print(
            "HTTP POST /v1/rerank (Cohere/Jina)",
            [(r["index"], r["relevance_score"]) for r in results],
        )


async def _pictures(grpc_target: str) -> None:
    """Images and text ranked together by a vision-language model (gRPC ``Rank``)."""
    async with AsyncRerankerClient(grpc_target) as client:
        ranked = await client.rank(
            PICTURE_QUERY, [document for _, document in PICTURES], model=VL_MODEL
        )
    print(f'\nImages and text, {VL_MODEL}, query "{PICTURE_QUERY}" (gRPC Rank)')
    for place, document in enumerate(ranked.documents, 1):
        print(f"  {place}. {document.score:8.3f}  {PICTURES[document.index][0]}")


async def run() -> None:
    emulator = AsgiServer(create_emulator_app(EmulatorState()), "127.0.0.1", 0)
    await emulator.start()
    sidecar = SidecarServer(
        Settings(
            api_key=None,
            base_url=f"http://127.0.0.1:{emulator.port}",
            host="127.0.0.1",
            http_port=0,
            grpc_port=0,
            log_level="WARNING",
        )
    )
    await sidecar.start()
    print(
        f"NIM emulator on 127.0.0.1:{emulator.port}; sidecar HTTP on 127.0.0.1:"
        f"{sidecar.http_port}, gRPC on 127.0.0.1:{sidecar.grpc_port}"
    )
    try:
        await _through_every_surface(
            f"127.0.0.1:{sidecar.grpc_port}", f"http://127.0.0.1:{sidecar.http_port}"
        )
        await _pictures(f"127.0.0.1:{sidecar.grpc_port}")
    finally:
        await sidecar.stop(grace_s=1)
        await emulator.stop()
    print("\nstopped both")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
