"""Back-pressure past RERANKER_MAX_IN_FLIGHT, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest

from reranker_nvidia.client import AsyncRerankerClient, RerankerClient
from reranker_nvidia.errors import ErrorCode, RerankError
from tests.conftest import SidecarFactory
from tests.support import SERVE, SERVING, Emulator, running

BODY = {"query": "which way", "documents": ["this way", "that way"]}


async def test_requests_past_the_limit_are_refused_at_once(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(max_in_flight=2)
    # The admitted calls take seconds upstream: a refusal that waited for a place would come
    # back after them, not before.
    emulator.state.delay_s = 2

    async def send(client: httpx.AsyncClient, number: int) -> httpx.Response:
        body = {**BODY, "query": f"which way {number}"}  # distinct, so none share a call
        return await client.post("/rerank", json=body)

    async with httpx.AsyncClient(base_url=sidecar.http_url, timeout=30) as client:
        requests = [asyncio.ensure_future(send(client, number)) for number in range(6)]
        first_four: list[httpx.Response] = []
        for finished in asyncio.as_completed(requests):
            first_four.append(await finished)
            if len(first_four) == 4:
                assert sum(request.done() for request in requests) == 4, "refused, not queued"
                break
        results = await asyncio.gather(*requests)
    assert sorted(response.status_code for response in results) == [200, 200, 503, 503, 503, 503]
    for response in first_four:
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "RERANKER_MAX_IN_FLIGHT" in response.json()["error"]
    assert len(emulator.state.calls) == 2

    async with AsyncRerankerClient(sidecar.grpc_target) as grpc_client:
        outcomes = await asyncio.gather(
            *(grpc_client.rank(f"q{number}", ["a"]) for number in range(5)),
            return_exceptions=True,
        )
    refused = [o for o in outcomes if isinstance(o, RerankError)]
    assert len(refused) == 3
    assert {error.code for error in refused} == {ErrorCode.RESOURCE_EXHAUSTED}


def start_request_reaching_upstream(
    url: str, emulator: Emulator, answers: list[httpx.Response]
) -> threading.Thread:
    """POST /rerank from a thread, once it is waiting on the upstream; its answer lands in
    ``answers``."""
    worker = threading.Thread(
        target=lambda: answers.append(httpx.post(url + "/rerank", json=BODY, timeout=10)),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + 5
    while emulator.state.in_flight == 0:
        assert time.monotonic() < deadline, "the request never reached the upstream"
        time.sleep(0.01)
    return worker


def test_sigterm_drains_in_flight_requests_then_exits_zero(
    emulator: Emulator, clean_env: dict[str, str]
) -> None:
    emulator.state.delay_s = 1.5
    env = {**clean_env, "RERANKER_BASE_URL": emulator.url, "RERANKER_SHUTDOWN_GRACE_S": "10"}
    with running(SERVE, env, SERVING) as (process, ports):
        url = f"http://127.0.0.1:{ports[1]}"
        in_flight: list[httpx.Response] = []
        worker = start_request_reaching_upstream(url, emulator, in_flight)

        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while httpx.get(url + "/.well-known/ready").status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503"
            time.sleep(0.01)
        refused = httpx.post(url + "/rerank", json=BODY)
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "1"
        client = RerankerClient(f"127.0.0.1:{ports[2]}")
        with client, pytest.raises(RerankError) as raised:
            client.rank("q", ["a"])
        assert raised.value.code is ErrorCode.UNAVAILABLE

        worker.join(10)
        assert in_flight and in_flight[0].status_code == 200, "the in-flight request finished"
        assert process.wait(10) == 0
        assert len(emulator.state.calls) == 1


def test_sigterm_stops_after_the_grace_period_even_if_requests_remain(
    emulator: Emulator, clean_env: dict[str, str]
) -> None:
    emulator.state.delay_s = 5
    env = {**clean_env, "RERANKER_BASE_URL": emulator.url, "RERANKER_SHUTDOWN_GRACE_S": "0.5"}
    with running(SERVE, env, SERVING) as (process, ports):
        start_request_reaching_upstream(f"http://127.0.0.1:{ports[1]}", emulator, [])
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - start < 4
