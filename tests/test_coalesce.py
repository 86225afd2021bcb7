"""Coalescing: who shares an upstream call, and that each caller gets exactly its own answer."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from reranker_nvidia.emulator import Fault, lexical_logit, terms
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator, Sidecar

QUERY = "which way should i go"
WINDOW_MS = 300  # long, so that requests sent together surely meet


def expected(query: str, documents: list[str]) -> list[float]:
    return [lexical_logit(terms(query), terms(document)) for document in documents]


async def post_all(
    sidecar: Sidecar, bodies: list[dict[str, object]], headers: list[dict[str, str]] | None = None
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=sidecar.http_url, timeout=10) as client:
        return await asyncio.gather(
            *(
                client.post("/rerank", json=body, headers=(headers or [{}] * len(bodies))[i])
                for i, body in enumerate(bodies)
            )
        )


async def test_parallel_chunks_share_one_call_and_each_gets_its_own_scores(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=WINDOW_MS)
    documents = [f"{'way ' * (i % 5)}document {i}" for i in range(100)]
    chunks = [documents[start : start + 32] for start in range(0, 100, 32)]
    responses = await post_all(sidecar, [{"query": QUERY, "documents": c} for c in chunks])
    for chunk, response in zip(chunks, responses, strict=True):
        scores = response.json()["scores"]
        assert [entry["document"] for entry in scores] == chunk
        assert [entry["score"] for entry in scores] == pytest.approx(expected(QUERY, chunk))
    assert [call.passages for call in emulator.state.calls] == [100]
    assert sidecar.server.core.coalescer.coalesced_requests == 3


async def test_identical_requests_share_one_call(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=0)
    emulator.state.delay_s = 0.2
    body: dict[str, object] = {"query": QUERY, "documents": ["a way", "b", "a way"]}
    responses = await post_all(sidecar, [body] * 3)
    for response in responses:
        assert [e["score"] for e in response.json()["scores"]] == pytest.approx(
            expected(QUERY, ["a way", "b", "a way"])
        )
    assert [call.passages for call in emulator.state.calls] == [2], "one call, duplicates once"


async def test_different_queries_or_keys_never_share_a_call(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=WINDOW_MS)
    bodies: list[dict[str, object]] = [
        {"query": QUERY, "documents": ["a"]},
        {"query": "another question", "documents": ["b"]},
        {"query": QUERY, "documents": ["c"]},
    ]
    headers = [{}, {}, {"X-Nvidia-Api-Key": REQUEST_KEY}]
    responses = await post_all(sidecar, bodies, headers)
    assert all(response.status_code == 200 for response in responses)
    sent = sorted((call.passages, call.authorization) for call in emulator.state.calls)
    assert sent == [
        (1, f"Bearer {REQUEST_KEY}"),
        (1, f"Bearer {SERVER_KEY}"),
        (1, f"Bearer {SERVER_KEY}"),
    ]


async def test_a_failing_call_fails_exactly_the_callers_that_shared_it(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    # Full Weaviate chunks of 32 wait for their siblings, so chunks sent together share a call
    # however their bodies trickle in.
    sidecar = make_sidecar(coalesce_window_ms=WINDOW_MS)
    emulator.state.faults.append(Fault(500, {"detail": "boom"}, for_query="doomed"))
    bodies: list[dict[str, object]] = [
        {"query": query, "documents": [f"{query} {part} {i}" for i in range(32)]}
        for query, part in [("doomed", "a"), ("fine", "b"), ("doomed", "c"), ("fine", "d")]
    ]
    responses = await post_all(sidecar, bodies)
    assert [response.status_code for response in responses] == [502, 200, 502, 200]
    assert all("boom" in responses[i].json()["error"] for i in (0, 2))
    assert sorted(call.passages for call in emulator.state.calls) == [64, 64]


async def test_a_lone_request_does_not_wait_for_the_window(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=20000)
    start = time.monotonic()
    responses = await post_all(sidecar, [{"query": QUERY, "documents": ["a", "b"]}])
    assert responses[0].status_code == 200
    assert time.monotonic() - start < 10, "it waited for the window"


async def test_a_caller_that_leaves_does_not_cancel_a_shared_call(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=WINDOW_MS)
    emulator.state.delay_s = 1.0
    bodies: list[dict[str, object]] = [
        {"query": QUERY, "documents": [f"{part} {i}" for i in range(32)]} for part in "ab"
    ]
    responses = await post_all(sidecar, bodies, [{"X-Request-Timeout": "0.5"}, {}])
    assert [response.status_code for response in responses] == [504, 200]
    assert [call.passages for call in emulator.state.calls] == [64]


async def test_weaviate_chunks_arriving_one_by_one_still_share_a_call(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    """Full chunks of 32 announce siblings: each one keeps the batch open a window longer.
    The window is long against the 100 ms between chunks, so a loaded machine cannot split
    them; the window's own arithmetic is tested with a fake clock in test_coalescer.py."""
    sidecar = make_sidecar(coalesce_window_ms=2000)
    documents = [f"way document {i}" for i in range(100)]
    chunks = [documents[start : start + 32] for start in range(0, 100, 32)]

    async with httpx.AsyncClient(base_url=sidecar.http_url, timeout=10) as client:

        async def send(delay_s: float, chunk: list[str]) -> httpx.Response:
            await asyncio.sleep(delay_s)
            return await client.post("/rerank", json={"query": QUERY, "documents": chunk})

        # 100 ms apart: more than the time one request takes, far less than one window.
        responses = await asyncio.gather(*(send(0.1 * i, chunk) for i, chunk in enumerate(chunks)))
    for chunk, response in zip(chunks, responses, strict=True):
        scores = [entry["score"] for entry in response.json()["scores"]]
        assert scores == pytest.approx(expected(QUERY, chunk))
    assert [call.passages for call in emulator.state.calls] == [100]
