"""/metrics content, request ids, and JSON log lines."""

from __future__ import annotations

import json
import logging
import re

import grpc
import httpx
import pytest

from reranker_nvidia.client import RerankerClient
from reranker_nvidia.emulator import Fault
from reranker_nvidia.server.logs import JsonFormatter
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SERVER_KEY, Emulator


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in a Prometheus exposition."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_count_requests_upstream_calls_cache_and_tokens(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=100)
    url = sidecar.http_url
    body = {"query": "which way", "documents": ["this way", "that way", "no"]}
    httpx.post(url + "/rerank", json=body)
    httpx.post(url + "/rerank", json=body)
    httpx.post(url + "/v1/rerank", json={"query": "", "documents": ["a"]})
    emulator.state.faults.append(Fault(429, {"detail": "slow"}))
    httpx.post(url + "/v1/ranking", json={"query": {"text": "q2"}, "passages": [{"text": "a"}]})
    with RerankerClient(sidecar.grpc_target, api_key=REQUEST_KEY) as client:
        client.rank("grpc query", ["a", "b"])

    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "reranker_requests_total", surface="weaviate", status="200") == 2
    assert sample(text, "reranker_requests_total", surface="cohere", status="400") == 1
    assert sample(text, "reranker_requests_total", surface="nim", status="429") == 1
    assert sample(text, "reranker_requests_total", surface="grpc", status="OK") == 1
    assert sample(text, "reranker_upstream_calls_total", status="200") == 2
    assert sample(text, "reranker_upstream_calls_total", status="429") == 1
    assert sample(text, "reranker_upstream_passages_total") == 3 + 1 + 2
    assert sample(text, "reranker_cache_hits_total") == 3
    assert sample(text, "reranker_cache_misses_total") == 3 + 1 + 2
    assert sample(text, "reranker_cache_entries") == 5
    assert sample(text, "reranker_upstream_tokens_total", kind="total") > 0
    assert sample(text, "reranker_request_duration_seconds_count", surface="weaviate") == 2
    assert sample(text, "reranker_upstream_duration_seconds_count") == 3
    assert sample(text, "reranker_coalesced_requests_total") == 0
    assert sample(text, "reranker_requests_in_flight") == 0
    for secret in (SERVER_KEY, REQUEST_KEY):
        assert secret not in text


def test_request_ids_are_echoed_and_invented(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar()
    given = httpx.get(sidecar.http_url + "/meta", headers={"X-Request-Id": "trace-123"})
    assert given.headers["X-Request-Id"] == "trace-123"
    invented = httpx.get(sidecar.http_url + "/meta", headers={"X-Request-Id": "bad id!"})
    assert re.fullmatch(r"[0-9a-f]{32}", invented.headers["X-Request-Id"])
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        _, call = stub.Rank.with_call(
            pb.RankRequest(query="q", documents=["a"]), metadata=(("x-request-id", "grpc-7"),)
        )
    assert ("x-request-id", "grpc-7") in call.initial_metadata()


def test_access_log_lines_carry_the_request_id(
    make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reranker_nvidia.access")
    sidecar = make_sidecar()
    httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": "q", "documents": ["a"]},
        headers={"X-Request-Id": "abc-1"},
    )
    httpx.get(sidecar.http_url + "/.well-known/ready")
    lines = [r for r in caplog.records if r.name == "reranker_nvidia.access"]
    assert len(lines) == 1, "probes are not logged"
    entry = json.loads(JsonFormatter().format(lines[0]))
    assert entry["request_id"] == "abc-1"
    assert (entry["method"], entry["path"], entry["status"], entry["surface"]) == (
        "POST",
        "/rerank",
        200,
        "weaviate",
    )
    assert entry["duration_ms"] > 0
