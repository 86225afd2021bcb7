"""The console script, run as a user runs it: real processes on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.support import SCRIPT, SERVE, SERVING, running


def test_serve_and_rank_through_the_emulator(clean_env: dict[str, str]) -> None:
    with running(
        ["emulate-nim", "--port", "0"], clean_env, r"emulator on http://127\.0\.0\.1:(\d+)"
    ) as (_, emulator):
        env = {**clean_env, "RERANKER_BASE_URL": f"http://127.0.0.1:{emulator[1]}"}
        with running(SERVE, env, SERVING) as (sidecar, ports):
            ranked = subprocess.run(
                [
                    SCRIPT,
                    "rank",
                    "--target",
                    f"127.0.0.1:{ports[2]}",
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
            sidecar.send_signal(signal.SIGTERM)
            assert sidecar.wait(15) == 0
    lines = ranked.stdout.strip().splitlines()
    assert [line.split(maxsplit=1)[1] for line in lines] == [
        "go north this way",
        "the way",
        "bananas are yellow",
    ]
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_rank_reports_errors_without_a_trace(clean_env: dict[str, str]) -> None:
    with running(SERVE, clean_env, SERVING) as (_, ports):
        ranked = subprocess.run(
            [SCRIPT, "rank", "--target", f"127.0.0.1:{ports[2]}", "--query", "q", "doc"],
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
    assert "invalid setting RERANKER_TRUNCATE: " in result.stderr


def test_json_log_format_makes_every_line_json(clean_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [SCRIPT, *SERVE],
        env={**clean_env, "RERANKER_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "serving HTTP on" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    entries = [json.loads(line) for line in [*lines, *rest.splitlines()] if line.strip()]
    assert {"time", "level", "logger", "message", "request_id"} <= set(entries[0])
    summary = next(entry for entry in entries if "serving HTTP on" in entry["message"])
    assert summary["logger"] == "reranker_nvidia.server"
    assert "\n  model " in summary["message"], "the start-up block stays one entry"
    assert entries[-1]["message"] == "stopped"


def test_the_collector_is_settled_for_a_server() -> None:
    """What start-up built is kept out of collections and young ones are spaced out; run in a
    process of its own, as it changes the collector for good."""
    probe = (
        "import gc\n"
        "from reranker_nvidia.server.collector import YOUNG_THRESHOLD, settle_collector\n"
        "before = gc.get_threshold()\n"
        "settle_collector()\n"
        "after = gc.get_threshold()\n"
        "assert after == (YOUNG_THRESHOLD, *before[1:]) and YOUNG_THRESHOLD > before[0], after\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
