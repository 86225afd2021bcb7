"""Upstream faults: retries, deadlines and cancellation, against the emulator's fault modes."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import pytest

from reranker_nvidia.client import RerankerClient
from reranker_nvidia.emulator import Fault
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import CaptureServer, Emulator, Sidecar

BODY = {"query": "which way", "documents": ["this way", "that way"]}


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Returns once ``condition()`` holds; fails after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.01)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_until_success(
    make_sidecar: SidecarFactory, emulator: Emulator, status: int
) -> None:
    sidecar = make_sidecar(max_retries=2, retry_base_delay_s=0.01)
    emulator.state.faults.extend([Fault(status, {"detail": "transient"})] * 2)
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == 200
    assert len(emulator.state.calls) == 3


def test_retries_stop_at_the_limit_with_the_last_error(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(max_retries=2, retry_base_delay_s=0.01)
    emulator.state.faults.extend([Fault(503, {"detail": f"down {i}"}) for i in range(5)])
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == 502
    assert "answered 503: down 2" in response.json()["error"]
    assert len(emulator.state.calls) == 3


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 422])
def test_other_client_errors_are_never_retried(
    make_sidecar: SidecarFactory, emulator: Emulator, status: int
) -> None:
    sidecar = make_sidecar(max_retries=3, retry_base_delay_s=0.01)
    emulator.state.faults.extend([Fault(status, {"detail": "no"})] * 4)
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == status
    assert len(emulator.state.calls) == 1


def test_retry_after_is_honoured(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(max_retries=1, retry_base_delay_s=0.0)
    emulator.state.faults.append(Fault(429, {"detail": "slow"}, headers={"Retry-After": "0.5"}))
    start = time.monotonic()
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == 200
    assert time.monotonic() - start >= 0.5


def test_retry_after_beyond_the_budget_fails_at_once(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(max_retries=2, request_timeout_s=2.0)
    emulator.state.faults.append(Fault(429, {"detail": "slow"}, headers={"Retry-After": "30"}))
    start = time.monotonic()
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert time.monotonic() - start < 10, "it did not wait for the Retry-After"


def test_connection_errors_are_retried_but_invalid_answers_are_not(
    make_sidecar: SidecarFactory, capture: CaptureServer
) -> None:
    upstream = f"http://127.0.0.1:{capture.port}"
    sidecar = make_sidecar(base_url=upstream, max_retries=2, retry_base_delay_s=0.01)
    capture.hang_up = True
    dropped = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert dropped.status_code == 502
    assert "could not reach NIM" in dropped.json()["error"]
    assert capture.connections == 3

    capture.hang_up = False
    invalid = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert invalid.status_code == 502
    assert "0 rankings for 2 passages" in invalid.json()["error"]
    assert capture.connections == 4


def test_unreachable_upstream_is_retried_then_unavailable(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(base_url="http://127.0.0.1:9", max_retries=2, retry_base_delay_s=0.05)
    start = time.monotonic()
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rank("q", ["a"])
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert "could not reach NIM" in raised.value.message
    assert time.monotonic() - start < 5


def test_request_budget_bounds_the_whole_request(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(request_timeout_s=0.5, upstream_timeout_s=10, max_retries=5)
    emulator.state.faults.extend([Fault(200, {"rankings": []}, delay_s=5)] * 6)
    start = time.monotonic()
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY, timeout=10)
    elapsed = time.monotonic() - start
    assert response.status_code == 504
    assert "budget of 0.5 s" in response.json()["error"]
    assert elapsed < 4, "the slow attempts (5 s each) were not waited for"


def test_per_attempt_timeout_then_retry_succeeds(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(upstream_timeout_s=0.3, max_retries=1, retry_base_delay_s=0.01)
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=3))
    start = time.monotonic()
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY, timeout=10)
    assert response.status_code == 200
    assert 0.3 <= time.monotonic() - start < 2.5, "the 3 s attempt was not waited for"


def test_caller_timeout_header_shrinks_the_budget(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar()
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=5))
    start = time.monotonic()
    response = httpx.post(
        sidecar.http_url + "/v1/ranking",
        json={"query": {"text": "q"}, "passages": [{"text": "a"}]},
        headers={"X-Request-Timeout": "0.3"},
        timeout=10,
    )
    assert response.status_code == 504
    assert time.monotonic() - start < 4, "the 5 s answer was not waited for"
    bad = httpx.post(sidecar.http_url + "/rerank", json=BODY, headers={"X-Request-Timeout": "-1"})
    assert bad.status_code == 400
    assert "X-Request-Timeout" in bad.json()["error"]


def test_grpc_deadline_shrinks_the_budget_and_cancels_upstream(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=5))
    start = time.monotonic()
    client = RerankerClient(sidecar.grpc_target, timeout_s=0.3)
    with client, pytest.raises(RerankError) as raised:
        client.rank("q", ["a"])
    assert raised.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 4, "the 5 s answer was not waited for"
    core = sidecar.server.core
    # The upstream call is cancelled first; the request itself lets go a moment later.
    wait_until(lambda: core.caller.in_flight == 0 and core.admission.in_flight == 0, 1.0)


def test_http_caller_that_gives_up_cancels_its_upstream_call(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    emulator.state.faults.append(Fault(200, {"rankings": []}, delay_s=5))
    core = sidecar.server.core
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sidecar.http_url + "/rerank", json=BODY, timeout=0.3)
    wait_until(lambda: core.caller.in_flight == 0 and core.admission.in_flight == 0, 2.0)


def test_invalid_upstream_answers_are_502_naming_the_problem(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    emulator.state.faults.append(Fault(200, {"rankings": [{"index": 7, "logit": 1.0}] * 2}))
    response = httpx.post(sidecar.http_url + "/rerank", json=BODY)
    assert response.status_code == 502
    assert "index 7 is out of range for 2 passages" in response.json()["error"]
    emulator.state.faults.append(Fault(200, raw=b"not json"))
    request = pb.RankRequest(query="q", documents=["a"])
    channel = grpc.insecure_channel(sidecar.grpc_target)
    with channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.RerankerServiceStub(channel).Rank(request)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the body is not JSON" in str(raised.value.details())
