"""What an attacker on the network tries, and what the sidecar must do instead.

Each test is one attack family, against a real sidecar on loopback with the emulator (or a
capture server) as its upstream; none waits on a wall-clock margin tighter than seconds.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import time
from typing import Any

import grpc
import httpx
import pytest
import uvicorn

from reranker_nvidia.client import AsyncRerankerClient, RerankerClient
from reranker_nvidia.core.trust.ssrf import check_url_text, is_forbidden_address
from reranker_nvidia.emulator import Fault, lexical_logit, terms
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.server.sidecar import SidecarServer
from reranker_nvidia.types import Hit
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from tests.conftest import SidecarFactory
from tests.support import (
    REQUEST_KEY,
    SERVER_KEY,
    BackgroundLoop,
    CaptureServer,
    Emulator,
    Sidecar,
    clean_environment,
    eventually,
    running,
    sidecar_settings,
)

QUERY = "which way should i go"
SERVE = ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
SERVING = r"serving HTTP on 127\.0\.0\.1:(\d+) and gRPC on 127\.0\.0\.1:(\d+)"


def rerank(sidecar: Sidecar, documents: list[str], **headers: str) -> httpx.Response:
    return httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": QUERY, "documents": documents},
        headers=headers,
        timeout=30,
    )


# 1. Cached scores are served only to keys NIM has accepted.


def test_a_key_nim_refuses_never_gets_cached_scores(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    emulator.state.api_key = REQUEST_KEY
    key = {"X-Nvidia-Api-Key": "wrong-key-123"}
    assert rerank(sidecar, ["go this way"], **key).status_code == 401
    good = rerank(sidecar, ["go this way"], **{"X-Nvidia-Api-Key": REQUEST_KEY})
    assert good.status_code == 200
    calls = len(emulator.state.calls)
    for attempt in ("wrong-key-123", "x-key-456789"):
        assert rerank(sidecar, ["go this way"], **{"X-Nvidia-Api-Key": attempt}).status_code == 401
    assert len(emulator.state.calls) == calls + 2, "each refused key went to NIM"
    with (
        RerankerClient(sidecar.grpc_target, api_key="garbage-key") as client,
        pytest.raises(RerankError) as raised,
    ):
        client.rank(QUERY, ["go this way"])
    assert raised.value.code is ErrorCode.PERMISSION_DENIED
    # The accepted key is served from the cache.
    rerank(sidecar, ["go this way"], **{"X-Nvidia-Api-Key": REQUEST_KEY})
    assert len(emulator.state.calls) == calls + 3


def test_a_key_nim_stops_accepting_loses_the_cache(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000)
    key = {"X-Nvidia-Api-Key": REQUEST_KEY}
    assert rerank(sidecar, ["a way"], **key).status_code == 200
    emulator.state.api_key = "rotated-key-000"
    assert rerank(sidecar, ["b way"], **key).status_code == 401
    assert rerank(sidecar, ["a way"], **key).status_code == 401, "revoked: not from the cache"


def test_cache_scope_shared_serves_any_caller(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000, cache_scope="shared")
    emulator.state.api_key = REQUEST_KEY
    assert rerank(sidecar, ["a way"], **{"X-Nvidia-Api-Key": REQUEST_KEY}).status_code == 200
    assert rerank(sidecar, ["a way"], **{"X-Nvidia-Api-Key": "other-key-1"}).status_code == 200
    assert len(emulator.state.calls) == 1


def test_cache_scope_key_keeps_each_keys_scores_apart(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(cache_size=1000, cache_scope="key")
    for key in (REQUEST_KEY, SERVER_KEY, REQUEST_KEY, SERVER_KEY):
        assert rerank(sidecar, ["a way"], **{"X-Nvidia-Api-Key": key}).status_code == 200
    assert len(emulator.state.calls) == 2


# 2. The cost of a request is bounded before any per-hit work.


def grpc_rerank(sidecar: Sidecar, request: pb.RerankRequest) -> tuple[grpc.StatusCode, str]:
    """The status code and details a Rerank call failed with."""
    with (
        grpc.insecure_channel(sidecar.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.RerankerServiceStub(channel).Rerank(request, timeout=30)
    error: Any = raised.value
    return error.code(), error.details() or ""


def test_many_properties_are_refused_before_any_hit_is_read(sidecar: Sidecar) -> None:
    request = pb.RerankRequest(
        query=QUERY,
        hits=[pb.Hit(id=str(i)) for i in range(6000)],
        properties=[f"p{i}" for i in range(6000)],
    )
    code, details = grpc_rerank(sidecar, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "properties: 6000 given, at most 16" in details
    assert "RERANKER_MAX_PROPERTIES" in details


def test_many_hits_are_refused_before_any_is_read(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(max_documents=100)
    request = pb.RerankRequest(
        query=QUERY, hits=[pb.Hit(id=str(i)) for i in range(101)], properties=["content"]
    )
    code, details = grpc_rerank(sidecar, request)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "hits: 101 given, at most 100" in details


def test_repeated_property_names_count_once(sidecar: Sidecar, emulator: Emulator) -> None:
    hits = [Hit("1", {"content": "go this way"}), Hit("2", {"content": "bananas"})]
    with RerankerClient(sidecar.grpc_target) as client:
        reranked = client.rerank(hits, properties=["content"] * 16, query=QUERY)
    assert reranked.hits[0].rerank_score == pytest.approx(
        lexical_logit(terms(QUERY), terms("go this way"))
    )


def test_total_text_is_bounded(make_sidecar: SidecarFactory, emulator: Emulator) -> None:
    sidecar = make_sidecar(max_text_bytes=4096)
    response = rerank(sidecar, ["way " * 600, "way " * 600])
    assert response.status_code == 400
    assert "RERANKER_MAX_TEXT_BYTES" in response.json()["error"]
    assert emulator.state.calls == []


# 3. The server key goes only to the endpoints the operator configured.


@pytest.mark.parametrize(
    "suffix",
    [
        "/admin?x=/ranking",
        "/admin/ranking",
        "/v1/ranking?next=/admin",
        "/v1/ranking#/admin",
        "/internal/v1",
    ],
)
def test_the_server_key_goes_to_no_other_path_on_the_trusted_host(
    make_sidecar: SidecarFactory, capture: CaptureServer, suffix: str
) -> None:
    sidecar = make_sidecar(base_url=f"http://127.0.0.1:{capture.port}")
    response = rerank(
        sidecar, ["a"], **{"X-Nvidia-Baseurl": f"http://127.0.0.1:{capture.port}{suffix}"}
    )
    assert response.status_code == 403, response.text
    assert capture.connections == 0


def test_user_info_in_a_base_url_is_not_trusted(
    make_sidecar: SidecarFactory, capture: CaptureServer
) -> None:
    sidecar = make_sidecar(base_url=f"http://127.0.0.1:{capture.port}")
    header = {"X-Nvidia-Baseurl": f"http://user:pw@127.0.0.1:{capture.port}"}
    response = rerank(sidecar, ["a"], **header)
    assert response.status_code == 403
    assert "pw" not in response.text
    assert capture.connections == 0


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/ranking"])
def test_every_form_of_the_configured_base_url_is_trusted(
    make_sidecar: SidecarFactory, emulator: Emulator, suffix: str
) -> None:
    sidecar = make_sidecar()
    response = rerank(sidecar, ["a way"], **{"X-Nvidia-Baseurl": emulator.url + suffix})
    assert response.status_code == 200
    assert emulator.state.calls[-1].authorization == f"Bearer {SERVER_KEY}"


# 4. No secret leaves in an error or a log line.

OPAQUE_KEY = "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def leaked(text: str, secret: str) -> bool:
    """True when any 8 characters in a row of ``secret`` appear in ``text``."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


def test_an_echoed_key_in_a_ranking_does_not_reach_the_caller(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    echo = {"rankings": [{"index": f"Bearer {REQUEST_KEY}", "logit": 1.0}]}
    emulator.state.faults.append(Fault(200, echo))
    response = rerank(sidecar, ["a"], **{"X-Nvidia-Api-Key": REQUEST_KEY})
    assert response.status_code == 502
    assert "an index is a str, not an integer" in response.json()["error"]
    assert not leaked(response.text, REQUEST_KEY)


@pytest.mark.parametrize("padding", [270, 280, 290, 299])
def test_a_key_cut_by_the_length_limit_is_still_masked(
    sidecar: Sidecar, emulator: Emulator, padding: int
) -> None:
    emulator.state.faults.append(Fault(500, {"detail": "x" * padding + OPAQUE_KEY}))
    response = rerank(sidecar, ["a"], **{"X-Nvidia-Api-Key": OPAQUE_KEY})
    assert response.status_code == 502
    assert not leaked(response.text, OPAQUE_KEY)


def test_an_echoed_key_does_not_reach_a_grpc_caller(sidecar: Sidecar, emulator: Emulator) -> None:
    emulator.state.faults.append(Fault(500, {"detail": f"your key {OPAQUE_KEY} is bad"}))
    with (
        RerankerClient(sidecar.grpc_target, api_key=OPAQUE_KEY) as client,
        pytest.raises(RerankError) as raised,
    ):
        client.rank(QUERY, ["a"])
    assert not leaked(raised.value.message, OPAQUE_KEY)


def test_logs_show_no_key_and_no_forged_line(emulator: Emulator) -> None:
    """DEBUG logs include httpx's upstream headers; an echoed key must not survive there,
    nor may a path with a newline start a line of its own."""
    env = clean_environment()
    env.update(
        NVIDIA_APIKEY=SERVER_KEY,
        RERANKER_BASE_URL=emulator.url,
        RERANKER_LOG_LEVEL="DEBUG",
        RERANKER_AUTH_TOKEN="caller-token-secret-1",
    )
    emulator.state.faults.append(
        Fault(500, {"detail": "boom"}, headers={"X-Echo": f"Bearer {OPAQUE_KEY} {SERVER_KEY}"})
    )
    lines: list[str] = []
    with running(SERVE, env, SERVING, lines) as (process, match):
        url = f"http://127.0.0.1:{match[1]}"
        token = {"X-Reranker-Token": "caller-token-secret-1"}
        httpx.post(
            url + "/rerank",
            json={"query": QUERY, "documents": ["a"]},
            headers={**token, "X-Nvidia-Api-Key": OPAQUE_KEY},
        )
        httpx.get(url + "/meta%0aFORGED%20line", headers=token)
        process.terminate()
        process.wait(30)
    output = "".join(lines)
    assert "x-echo" in output.lower(), "the upstream's headers were logged"
    for secret in (OPAQUE_KEY, SERVER_KEY, "caller-token-secret-1"):
        assert not leaked(output, secret), secret
    assert not any(line.startswith("FORGED") for line in output.splitlines())
    assert "\\x0aFORGED" in output


# 5. An upstream answer is bounded.


def test_an_oversized_upstream_answer_is_cut_off(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(max_upstream_bytes=65536)
    emulator.state.faults.append(Fault(200, raw=b" " * 200_000 + b'{"rankings": []}'))
    response = rerank(sidecar, ["a"])
    assert response.status_code == 502
    assert "over 65536 bytes (RERANKER_MAX_UPSTREAM_BYTES)" in response.json()["error"]


# 6. Slow and idle clients cannot hold the server.


def open_socket(sidecar: Sidecar) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", sidecar.server.http_port), timeout=15)
    return connection


def closed_by_server(connection: socket.socket) -> bool:
    try:
        return connection.recv(65536) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_half_sent_headers_are_closed(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(header_timeout_s=0.5)
    with open_socket(sidecar) as connection:
        connection.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\n")
        assert closed_by_server(connection)


def test_a_stalled_body_is_answered_408(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(body_timeout_s=0.5)
    with open_socket(sidecar) as connection:
        connection.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        response = http.client.HTTPResponse(connection)
        response.begin()
        assert response.status == 408
        assert b"RERANKER_BODY_TIMEOUT_S" in response.read()


def test_an_idle_kept_alive_connection_is_closed(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(keep_alive_timeout_s=0.5)
    with open_socket(sidecar) as connection:
        connection.sendall(b"GET /.well-known/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.1 204")
        assert closed_by_server(connection)


def test_idle_connections_past_the_cap_make_room_for_probes(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(max_connections=8, header_timeout_s=60)
    idle = [open_socket(sidecar) for _ in range(20)]
    try:
        for _ in range(3):
            response = httpx.get(sidecar.http_url + "/.well-known/live", timeout=10)
            assert response.status_code == 204
        for connection in idle:
            connection.settimeout(0.2)
        still_open = sum(not closed_by_server(connection) for connection in idle)
        assert still_open <= 8
    finally:
        for connection in idle:
            connection.close()


def test_the_uvicorn_hook_the_emulator_overrides_is_there() -> None:
    """uvicorn (the emulator's server) is pinned below its next minor series; this fails
    first if the hook moves."""
    assert callable(getattr(uvicorn.Server, "capture_signals", None)), "embedded server hook"


def test_a_stalled_upload_does_not_hold_back_a_lone_request(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = make_sidecar(coalesce_window_ms=20000)
    with open_socket(sidecar) as stalled:
        stalled.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        assert rerank(sidecar, ["a way"]).status_code == 200
        assert time.monotonic() - started < 10, "it waited for the stalled upload's window"


# 7. Malformed input is a 400 naming the field, never a 500.


@pytest.mark.parametrize(
    "base_url",
    [
        "https://x:99999",
        "https://[::1",
        "https://xn--a.com",
        "https://ex ample.com",
        "https://example.com:port",
        "ftp://example.com",
        "https://",
    ],
)
def test_malformed_base_urls_are_400(sidecar: Sidecar, emulator: Emulator, base_url: str) -> None:
    response = httpx.post(
        sidecar.http_url + "/v1/ranking",
        json={"query": {"text": QUERY}, "passages": [{"text": "a"}]},
        headers={"X-Nvidia-Baseurl": base_url, "Authorization": "Bearer k-12345"},
    )
    assert response.status_code in (400, 403, 422), response.text
    assert "base" in response.text.lower()
    assert emulator.state.calls == []


@pytest.mark.parametrize(
    "base_url", ["https://exa\x7fmple.com", "https://a\nb.com", "https://x:99999", "https://[::1"]
)
def test_malformed_collection_base_urls_are_invalid_argument(
    sidecar: Sidecar, base_url: str
) -> None:
    with (
        RerankerClient(sidecar.grpc_target, api_key=REQUEST_KEY) as client,
        pytest.raises(RerankError) as raised,
    ):
        client.rerank(
            [Hit("1", {"content": "a"})],
            properties=["content"],
            query=QUERY,
            module_config={"reranker-nvidia": {"baseURL": base_url}},
        )
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.message.startswith("base_url: ")


@pytest.mark.parametrize("header", ["X-Nvidia-Api-Key", "Authorization"])
def test_a_non_ascii_key_is_400(sidecar: Sidecar, emulator: Emulator, header: str) -> None:
    value = b"k\xc3\xa9y-12345" if header != "Authorization" else b"Bearer k\xc3\xa9y-12345"
    response = httpx.post(
        sidecar.http_url + "/rerank",
        json={"query": QUERY, "documents": ["a"]},
        headers=[(header.encode(), value)],
    )
    assert response.status_code == 400
    assert "api key" in response.json()["error"]
    assert emulator.state.calls == []


# 8. IPv6 forms that carry a private IPv4 address are refused.

EMBEDDED = [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fec0::1",  # site-local
]


@pytest.mark.parametrize("address", EMBEDDED)
def test_ipv6_forms_of_private_ipv4_are_forbidden(address: str) -> None:
    assert is_forbidden_address(address)
    with pytest.raises(RerankError):
        check_url_text(f"https://[{address}]/v1")


def test_public_addresses_in_those_forms_stay_allowed() -> None:
    assert not is_forbidden_address("64:ff9b::808:808")  # NAT64 of 8.8.8.8
    assert not is_forbidden_address("2606:4700:4700::1111")


@pytest.mark.parametrize("host", ["0177.0.0.1", "0x7f.1", "2130706433", "127.1"])
def test_numeric_hosts_in_other_forms_are_refused(host: str) -> None:
    with pytest.raises(RerankError):
        check_url_text(f"https://{host}/v1")


def test_a_name_resolving_to_an_embedded_private_address_is_not_dialled(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["64:ff9b::a9fe:a9fe"]

    sidecar = make_sidecar(resolver=resolver)
    response = rerank(
        sidecar,
        ["a"],
        **{"X-Nvidia-Baseurl": "https://nim.example.com", "X-Nvidia-Api-Key": REQUEST_KEY},
    )
    assert response.status_code == 403
    assert "not public" in response.json()["error"]


# 9. The rest.


def test_blank_per_request_base_url_keeps_the_collections(
    make_sidecar: SidecarFactory, capture: CaptureServer
) -> None:
    capture_url = f"http://127.0.0.1:{capture.port}"
    sidecar = make_sidecar(allowed_base_urls=(capture_url,))
    with RerankerClient(sidecar.grpc_target, base_url="   ") as client, pytest.raises(RerankError):
        client.rerank(
            [Hit("1", {"content": "a"})],
            properties=["content"],
            query=QUERY,
            module_config={"reranker-nvidia": {"baseURL": capture_url}},
        )
    assert capture.connections == 1, "the collection's baseURL was used"


@pytest.mark.parametrize(
    ("address", "status", "proxied"),
    [
        ("93.184.216.34", 502, True),  # public: through the proxy (which speaks no TLS here)
        ("10.0.0.7", 403, False),  # private: refused before the proxy is asked
    ],
)
def test_a_guarded_base_url_goes_through_the_https_proxy_only_if_public(
    make_sidecar: SidecarFactory,
    capture: CaptureServer,
    monkeypatch: pytest.MonkeyPatch,
    address: str,
    status: int,
    proxied: bool,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{capture.port}")
    monkeypatch.setenv("NO_PROXY", "")

    async def resolver(host: str, port: int) -> list[str]:
        return [address]

    sidecar = make_sidecar(resolver=resolver)
    header = {"X-Nvidia-Baseurl": "https://nim.example.com", "X-Nvidia-Api-Key": REQUEST_KEY}
    assert rerank(sidecar, ["a"], **header).status_code == status
    connected = [request.split(b"\r\n", 1)[0] for request in capture.received]
    assert connected == ([b"CONNECT nim.example.com:443 HTTP/1.1"] if proxied else [])


async def test_a_cancelled_grpc_call_is_counted_cancelled(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    emulator.state.delay_s = 5.0
    async with AsyncRerankerClient(sidecar.grpc_target, timeout_s=30) as client:
        call = asyncio.ensure_future(client.rank(QUERY, ["a"]))
        await eventually(lambda: emulator.state.in_flight > 0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    pattern = re.compile(r'reranker_requests_total\{status="(\w+)",surface="grpc"\}')
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            statuses = pattern.findall((await http.get(sidecar.http_url + "/metrics")).text)
            if statuses:
                break
            await asyncio.sleep(0.05)
    assert statuses == ["CANCELLED"]


async def test_a_grpc_burst_is_answered_by_admission(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(max_in_flight=16)
    emulator.state.delay_s = 0.2
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)

        async def call(i: int) -> grpc.StatusCode:
            try:
                await stub.Rank(pb.RankRequest(query=f"q{i}", documents=["a"]), timeout=60)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        # Within the streams one connection may hold (RERANKER_MAX_IN_FLIGHT + 32): every
        # call past the in-flight limit is refused by admission at once.
        within = await asyncio.gather(*(call(i) for i in range(46)))
        assert within.count(grpc.StatusCode.OK) == 16
        assert within.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 30
        # Far past it, gRPC refuses the streams over the limit (UNAVAILABLE: never
        # processed, safe to retry) and admission the rest: nothing else.
        far = await asyncio.gather(*(call(i) for i in range(400)))
    answered = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert answered <= set(far) <= answered | {grpc.StatusCode.UNAVAILABLE}
    assert len(emulator.state.calls) == 16 + far.count(grpc.StatusCode.OK)


def test_requests_running_when_the_drain_ends_get_a_json_503(
    background: BackgroundLoop, emulator: Emulator
) -> None:
    emulator.state.delay_s = 3.0
    server = SidecarServer(sidecar_settings(emulator.url))
    background.run(server.start())
    sidecar = Sidecar(server)

    async def request_then_stop() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            pending = asyncio.ensure_future(
                client.post(sidecar.http_url + "/rerank", json={"query": QUERY, "documents": ["a"]})
            )
            await eventually(lambda: emulator.state.in_flight > 0)
            stopping = asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(server.stop(grace_s=0.2), background.loop)
            )
            response = await pending
            await stopping
            return response

    response = asyncio.run(request_then_stop())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "stopped before this request finished" in response.json()["error"]


def test_an_unknown_log_level_is_a_one_line_settings_error() -> None:
    import subprocess

    from tests.support import SCRIPT

    env = {**clean_environment(), "RERANKER_LOG_LEVEL": "LOUD"}
    result = subprocess.run([SCRIPT, *SERVE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RERANKER_LOG_LEVEL" in lines[0], result.stderr
