"""A newcomer's first minutes, through the real command: what start-up says, how it fails, and
what an unreachable NIM looks like. Every assertion is on the exact lines a user reads."""

from __future__ import annotations

import re
import socket
import subprocess

import httpx

from reranker_nvidia import __version__
from reranker_nvidia.client import RerankerClient
from tests.support import SCRIPT, SERVE, SERVING, Emulator, clean_environment, running

HOSTED_ENDPOINT = "https://ai.api.nvidia.com/v1/retrieval/nvidia/reranking"


def serve_lines(env: dict[str, str]) -> list[str]:
    """What ``serve`` prints up to and including its start-up block and any warning."""
    lines: list[str] = []
    with running(SERVE, env, SERVING, lines) as (process, _):
        process.terminate()
        process.wait(30)
    return [line.rstrip("\n") for line in lines]


def message_lines(lines: list[str], logger: str) -> list[str]:
    """The lines of records from ``logger`` (a record's continuation lines included)."""
    taken: list[str] = []
    inside = False
    for line in lines:
        record = re.match(r"\S+ \S+ (\w+) (\S+) \[[^\]]*\]: (.*)", line)
        if record:
            inside = record[2] == logger
            if inside:
                taken.append(f"{record[1]} {record[3]}")
        elif inside:
            taken.append(line)
    return taken


def test_start_up_without_a_key_says_what_it_does_and_how_to_try_it() -> None:
    lines = message_lines(serve_lines(clean_environment()), "reranker_nvidia.server")
    block = lines[: lines.index("  TLS           off") + 1]
    assert re.fullmatch(
        rf"INFO reranker-nvidia {re.escape(__version__)} serving HTTP on 127\.0\.0\.1:\d+ "
        r"and gRPC on 127\.0\.0\.1:\d+",
        block[0],
    )
    assert block[1:] == [
        f"  NIM endpoint  {HOSTED_ENDPOINT}",
        "  model         nvidia/rerank-qa-mistral-4b",
        "  truncation    END on the Weaviate and Cohere routes; the request's, else NIM's "
        "default (NONE), on the NIM routes and gRPC",
        "  key           none: requests must bring their own",
        "  cache         up to 100000 scores / 64 MiB for 3600 s, scope verified",
        "  shared store  off: this replica's cache and budget are its own (RERANKER_CACHE_URL)",
        "  NIM budget    none",
        "  coalescing    window 3 ms",
        "  retries       up to 2 a call, within 20% of first calls (+3/s)",
        "  hedging       off",
        "  fail-open     off",
        "  score scale   logit on every surface",
        "  caller token  off",
        "  TLS           off",
    ]
    assert lines[len(block)] == (
        "WARNING no NIM key: NVIDIA_APIKEY is not set, so every request to hosted NIM must bring "
        "its own (X-Nvidia-Api-Key or Authorization: Bearer; gRPC metadata x-nvidia-api-key); "
        "to try it with no key and no network: `make emulate` in one terminal, then "
        "`RERANKER_BASE_URL=http://127.0.0.1:8000 make run` in another"
    )


def test_start_up_names_where_the_key_came_from_never_the_key(emulator: Emulator) -> None:
    env = {
        **clean_environment(),
        "NVIDIA_API_KEY": "nvapi-secret-start-up-key",
        "RERANKER_BASE_URL": emulator.url,
        "RERANKER_TRUNCATE": "none",
        "RERANKER_AUTH_TOKEN": "token-1234567",
    }
    output = serve_lines(env)
    lines = message_lines(output, "reranker_nvidia.server")
    assert f"  NIM endpoint  {emulator.url}/v1/ranking" in lines
    assert "  key           from NVIDIA_API_KEY" in lines
    assert "  truncation    NONE everywhere (RERANKER_TRUNCATE)" in lines
    assert "  caller token  on (X-Reranker-Token)" in lines
    assert not any(line.startswith("WARNING") for line in lines)
    assert "nvapi-secret" not in "".join(output)


def one_line_failure(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return line


def test_a_taken_http_port_is_one_line_naming_the_port_and_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(
            ["serve", "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0"],
            clean_environment(),
        )
    assert line == (
        f"reranker-nvidia: cannot listen for HTTP on 127.0.0.1:{port}: Address already in use "
        "(--http-port / RERANKER_HTTP_PORT, --host / RERANKER_HOST)"
    )


def test_a_second_sidecar_on_a_taken_grpc_port_fails_instead_of_sharing_it() -> None:
    env = clean_environment()
    with running(SERVE, env, SERVING) as (_, ports):
        grpc_port = ports[2]
        line = one_line_failure(
            ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", grpc_port], env
        )
    assert line == (
        f"reranker-nvidia: cannot listen for gRPC on 127.0.0.1:{grpc_port}: Address already in "
        "use (--grpc-port / RERANKER_GRPC_PORT, --host / RERANKER_HOST)"
    )


def test_settings_errors_name_the_variable_and_what_it_accepts() -> None:
    env = {**clean_environment(), "RERANKER_LOG_LEVEL": "verbose"}
    assert one_line_failure(["serve"], env) == (
        "reranker-nvidia: invalid setting RERANKER_LOG_LEVEL: Input should be 'DEBUG', 'INFO', "
        "'WARNING', 'ERROR' or 'CRITICAL' (got 'VERBOSE')"
    )
    env = {**clean_environment(), "RERANKER_MODEL": ""}
    assert one_line_failure(["serve"], env) == (
        "reranker-nvidia: invalid setting RERANKER_MODEL: RERANKER_MODEL must name a model, "
        "e.g. nvidia/rerank-qa-mistral-4b (got '')"
    )
    assert one_line_failure(["serve", "--http-port", "99999"], clean_environment()) == (
        "reranker-nvidia: invalid setting --http-port / RERANKER_HTTP_PORT: Input should be "
        "less than or equal to 65535 (got 99999)"
    )
    env = {**clean_environment(), "RERANKER_TLS_CERT": "/etc/hostname"}
    assert one_line_failure(["serve"], env) == (
        "reranker-nvidia: invalid settings: RERANKER_TLS_CERT and RERANKER_TLS_KEY must be set "
        "together"
    )
    env = {**clean_environment(), "RERANKER_HOST": "no-such-host.invalid"}
    line = one_line_failure(["serve", "--grpc-port", "0", "--http-port", "0"], env)
    assert line.startswith("reranker-nvidia: cannot listen for gRPC on no-such-host.invalid:0: ")
    assert line.endswith("(--grpc-port / RERANKER_GRPC_PORT, --host / RERANKER_HOST)")


def test_unreachable_nim_says_what_failed_in_the_answer_and_one_warning() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {**clean_environment(), "RERANKER_BASE_URL": nowhere, "RERANKER_MAX_RETRIES": "0"}
    lines: list[str] = []
    with running(SERVE, env, SERVING, lines) as (process, ports):
        response = httpx.post(
            f"http://127.0.0.1:{ports[1]}/rerank",
            json={"query": "q", "documents": ["d"]},
            headers={"X-Request-Id": "first-ten-minutes"},
        )
        process.terminate()
        process.wait(30)
    message = (
        f"could not reach NIM at {nowhere}/v1/ranking: connection refused (nothing listens there)"
    )
    assert response.status_code == 502
    assert response.json() == {"error": message}
    warnings = [line for line in lines if " WARNING reranker_nvidia.upstream " in line]
    assert [line.split(": ", 1)[1].rstrip() for line in warnings] == [message]
    assert "[first-ten-minutes]" in warnings[0]


def test_every_grpc_call_writes_an_access_log_line(emulator: Emulator) -> None:
    env = {**clean_environment(), "RERANKER_BASE_URL": emulator.url, "NVIDIA_APIKEY": "k-1234567"}
    lines: list[str] = []
    with running(SERVE, env, SERVING, lines) as (process, ports):
        with RerankerClient(f"127.0.0.1:{ports[2]}") as client:
            client.rank("which way", ["this way"])
        process.terminate()
        process.wait(30)
    access = [line for line in lines if " reranker_nvidia.access " in line]
    assert len(access) == 1
    assert re.search(r"\]: gRPC Rank OK \d+\.\d ms$", access[0].rstrip()), access
