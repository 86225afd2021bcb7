"""SSRF guard, where the server's key may go, caller tokens, TLS, and keys kept out of logs."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reranker_nvidia.client import RerankerClient
from reranker_nvidia.emulator import Fault
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.server.logs import configure as configure_logs
from reranker_nvidia.types import Hit
from tests.conftest import SidecarFactory
from tests.support import REQUEST_KEY, SCRIPT, SERVER_KEY, CaptureServer, Emulator

TOKEN = "caller-token-5f0c2a"


def rerank(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        url + "/rerank", json={"query": "q", "documents": ["a"]}, headers=headers or {}
    )


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("http://127.0.0.1:{port}", "only https"),
        ("https://127.0.0.1:{port}", "127.0.0.1 is not a public address"),
        ("https://[::1]:{port}", "::1 is not a public address"),
        ("https://localhost:{port}", "local or internal name"),
        ("https://10.1.2.3", "10.1.2.3 is not a public address"),
        ("https://192.168.0.10:8443", "not a public address"),
        ("https://169.254.169.254", "169.254.169.254 is not a public address"),
        ("https://metadata.google.internal", "local or internal name"),
        ("https://[::ffff:127.0.0.1]:{port}", "not a public address"),
        ("https://0.0.0.0:{port}", "not a public address"),
        ("https://rebinding.test:{port}", "rebinding.test resolves to 127.0.0.1"),
    ],
)
def test_caller_chosen_base_urls_cannot_reach_internal_addresses(
    make_sidecar: SidecarFactory, capture: CaptureServer, base_url: str, says: str
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        assert host == "rebinding.test", f"no lookup expected for {host}"
        return ["127.0.0.1"]

    sidecar = make_sidecar(resolver=resolve)
    url = base_url.format(port=capture.port)
    response = rerank(sidecar.http_url, {"X-Nvidia-Baseurl": url, "X-Nvidia-Api-Key": REQUEST_KEY})
    assert response.status_code == 403
    assert says in response.json()["error"]
    assert capture.connections == 0


def test_every_way_of_choosing_a_base_url_is_guarded(
    make_sidecar: SidecarFactory, capture: CaptureServer
) -> None:
    sidecar = make_sidecar()
    internal = f"https://127.0.0.1:{capture.port}"
    with RerankerClient(sidecar.grpc_target, api_key=REQUEST_KEY) as client:
        for call in (
            lambda: client.rank("q", ["a"], base_url=internal),
            lambda: client.rerank(
                [Hit("1", {"p": "a"})],
                properties=["p"],
                query="q",
                module_config={"reranker-nvidia": {"baseURL": internal}},
            ),
        ):
            with pytest.raises(RerankError) as raised:
                call()
            assert raised.value.code is ErrorCode.PERMISSION_DENIED
    nim = httpx.post(
        sidecar.http_url + "/v1/ranking",
        json={"query": {"text": "q"}, "passages": [{"text": "a"}]},
        headers={"X-Nvidia-Baseurl": internal, "Authorization": f"Bearer {REQUEST_KEY}"},
    )
    assert nim.status_code == 403
    assert capture.connections == 0


def test_allow_listed_base_urls_pass_and_the_capture_would_see_a_request(
    make_sidecar: SidecarFactory, capture: CaptureServer
) -> None:
    allowed = f"http://127.0.0.1:{capture.port}"
    sidecar = make_sidecar(allowed_base_urls=(allowed,))
    response = rerank(sidecar.http_url, {"X-Nvidia-Baseurl": allowed})
    assert response.status_code == 502, "the capture answers an empty ranking"
    assert capture.connections == 1
    head = capture.received[0].partition(b"\r\n\r\n")[0].decode()
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    }
    assert headers["authorization"] == f"Bearer {SERVER_KEY}"


def test_the_server_key_never_goes_to_a_base_url_it_was_not_configured_for(
    make_sidecar: SidecarFactory, capture: CaptureServer, emulator: Emulator
) -> None:
    sidecar = make_sidecar()
    other = "https://nim.elsewhere.example"
    response = rerank(sidecar.http_url, {"X-Nvidia-Baseurl": other})
    assert response.status_code == 403
    assert "send the request's own key" in response.json()["error"]
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rank("q", ["a"], base_url=other)
    assert raised.value.code is ErrorCode.PERMISSION_DENIED
    assert capture.connections == 0 and emulator.state.calls == []


def test_caller_token_guards_every_route_but_liveness_and_readiness(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(auth_token=TOKEN)
    url = sidecar.http_url
    for path in ("/.well-known/live", "/.well-known/ready"):
        assert httpx.get(url + path).status_code == 204
    refused = {
        "/meta": ("get", None, "error"),
        "/openapi.json": ("get", None, "error"),
        "/rerank": ("post", {"query": "q", "documents": ["a"]}, "error"),
        "/v1/ranking": ("post", {"query": {"text": "q"}, "passages": [{"text": "a"}]}, "detail"),
        "/v1/rerank": ("post", {"query": "q", "documents": ["a"]}, "message"),
    }
    for path, (method, body, field) in refused.items():
        for headers in ({}, {"X-Reranker-Token": "wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
            response = httpx.request(method, url + path, json=body, headers=headers)
            assert response.status_code == 401, path
            assert "X-Reranker-Token" in str(response.json()[field])
        ok = httpx.request(method, url + path, json=body, headers={"X-Reranker-Token": TOKEN})
        assert ok.status_code == 200, path


def test_caller_token_guards_grpc_but_not_health(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(auth_token=TOKEN)
    with RerankerClient(sidecar.grpc_target) as client, pytest.raises(RerankError) as raised:
        client.rank("q", ["a"])
    assert raised.value.code is ErrorCode.UNAUTHENTICATED
    with RerankerClient(sidecar.grpc_target, token="wrong") as client, pytest.raises(RerankError):
        client.meta()
    with RerankerClient(sidecar.grpc_target, token=TOKEN) as client:
        assert len(client.rank("q", ["a"]).documents) == 1
        assert client.meta().name == "reranker-nvidia"
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def test_tls_on_both_servers(
    make_sidecar: SidecarFactory, tls_files: tuple[Path, Path, Path]
) -> None:
    cert, key, ca_file = tls_files
    sidecar = make_sidecar(tls_cert=cert, tls_key=key)
    port = sidecar.server.http_port
    verified = ssl.create_default_context(cafile=str(ca_file))
    response = httpx.post(
        f"https://127.0.0.1:{port}/rerank",
        json={"query": "q", "documents": ["a"]},
        verify=verified,
    )
    assert response.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/meta")
    with RerankerClient(sidecar.grpc_target, root_certificates=ca_file.read_bytes()) as client:
        assert len(client.rank("q", ["a"]).documents) == 1
    env = {
        **os.environ,
        "RERANKER_HTTP_PORT": str(port),
        "RERANKER_TLS_CERT": str(cert),
        "RERANKER_TLS_KEY": str(key),
    }
    probe = subprocess.run([SCRIPT, "healthcheck"], env=env, capture_output=True, text=True)
    assert (probe.returncode, probe.stdout.strip()) == (0, "ready")


def test_keys_and_token_never_reach_logs_errors_or_meta(
    make_sidecar: SidecarFactory,
    emulator: Emulator,
    capture: CaptureServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar = make_sidecar(auth_token=TOKEN, log_level="DEBUG", upstream_timeout_s=0.3)
    token = {"X-Reranker-Token": TOKEN}
    answers: list[str] = []
    faults = [
        Fault(401, {"detail": f"bad key {SERVER_KEY}"}),
        Fault(403, {"detail": f"forbidden for {REQUEST_KEY}"}),
        Fault(422, {"detail": [{"msg": "too long"}]}),
        Fault(429, {"detail": "slow down"}, headers={"Retry-After": "1"}),
        Fault(500, raw=f"trace with {SERVER_KEY}".encode()),
        Fault(200, {"rankings": "nope"}),
        Fault(200, {"rankings": []}, delay_s=1.0),
    ]
    for fault in faults:
        emulator.state.faults.append(fault)
        for headers in (token, {**token, "X-Nvidia-Api-Key": REQUEST_KEY}):
            answers.append(rerank(sidecar.http_url, headers).text)
            emulator.state.faults.appendleft(fault)
        emulator.state.faults.clear()
    answers.append(rerank(sidecar.http_url, {"X-Reranker-Token": "wrong"}).text)
    answers.append(
        rerank(
            sidecar.http_url,
            {
                **token,
                "X-Nvidia-Baseurl": f"https://127.0.0.1:{capture.port}",
                "X-Nvidia-Api-Key": REQUEST_KEY,
            },
        ).text
    )
    answers.append(httpx.get(sidecar.http_url + "/meta", headers=token).text)
    with RerankerClient(sidecar.grpc_target, api_key=REQUEST_KEY, token=TOKEN) as client:
        emulator.state.faults.append(Fault(403, {"detail": f"no {REQUEST_KEY}"}))
        with pytest.raises(RerankError) as raised:
            client.rank("q", ["a"])
        answers.append(raised.value.message)
        answers.append(repr(client.meta()))
    everything = caplog.text + "\n".join(answers)
    assert len(answers) == 2 * len(faults) + 5
    for secret in (SERVER_KEY, REQUEST_KEY, TOKEN):
        assert secret not in everything


def test_a_logged_traceback_is_masked_like_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    flush = configure_logs("INFO", "text", ["nvapi-traceback-secret-123"])
    try:
        try:
            raise RuntimeError("upstream said nvapi-traceback-secret-123 and Bearer abcdef12345")
        except RuntimeError:
            logging.getLogger("reranker_nvidia.test").exception("call failed")
        flush()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    printed = capsys.readouterr().err
    assert "call failed" in printed and "RuntimeError" in printed
    assert "nvapi-traceback-secret-123" not in printed
    assert "abcdef12345" not in printed
