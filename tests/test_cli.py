"""The console script, run as a user runs it: real processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = str(Path(sys.executable).parent / "reranker-nvidia")


def _start(
    args: list[str], env: dict[str, str], ready: str
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    process = subprocess.Popen(
        [SCRIPT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(ready, line):
            return process, match
    process.kill()
    raise AssertionError(f"{args[0]} did not start:\n{''.join(seen)}")


@pytest.fixture
def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_", "RERANKER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_and_rank_through_the_emulator(
    clean_env: dict[str, str], processes: list[subprocess.Popen[str]]
) -> None:
    emulator, match = _start(
        ["emulate-nim", "--port", "0"], clean_env, r"emulator on http://127\.0\.0\.1:(\d+)"
    )
    processes.append(emulator)
    env = {**clean_env, "RERANKER_BASE_URL": f"http://127.0.0.1:{match[1]}"}
    sidecar, match = _start(
        ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"],
        env,
        r"serving HTTP on 127\.0\.0\.1:(\d+) and gRPC on 127\.0\.0\.1:(\d+)",
    )
    processes.append(sidecar)

    ranked = subprocess.run(
        [
            SCRIPT,
            "rank",
            "--target",
            f"127.0.0.1:{match[2]}",
            "--query",
            "which way north",
            "bananas are yellow",
            "go north this way",
            "the way",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = ranked.stdout.strip().splitlines()
    assert [line.split(maxsplit=1)[1] for line in lines] == [
        "go north this way",
        "the way",
        "bananas are yellow",
    ]
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)

    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(15) == 0


def test_rank_reports_errors_without_a_trace(
    clean_env: dict[str, str], processes: list[subprocess.Popen[str]]
) -> None:
    sidecar, match = _start(
        ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"],
        clean_env,
        r"gRPC on 127\.0\.0\.1:(\d+)",
    )
    processes.append(sidecar)
    ranked = subprocess.run(
        [SCRIPT, "rank", "--target", f"127.0.0.1:{match[1]}", "--query", "q", "doc"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ranked.returncode == 1
    assert ranked.stderr.startswith("reranker-nvidia: UNAUTHENTICATED: no api key found")
    assert "Traceback" not in ranked.stderr


def test_serve_refuses_bad_settings(clean_env: dict[str, str]) -> None:
    result = subprocess.run(
        [SCRIPT, "serve"],
        env={**clean_env, "RERANKER_TRUNCATE": "MIDDLE"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid setting truncate" in result.stderr
