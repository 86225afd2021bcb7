"""`make bench` runs end to end: a one-run smoke pass writes every row and every goal, and draws
its picture; the emulator's latency tail, which the hedging row relies on, does what it says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.flood import EMULATOR_DELAY_MS
from bench.peers import report
from bench.slow_replica import HEDGE_BUDGET
from reranker_nvidia.cli import main as cli
from tests.support import Emulator

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_quick_bench_writes_every_row(tmp_path: Path) -> None:
    output, plot = tmp_path / "results.json", tmp_path / "added_latency.png"
    command = ["--runs", "1", "--quick", "--output", str(output), "--plot", str(plot)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    assert set(results["latency"]) == {
        f"{surface} {count}" for surface in ("grpc", "/rerank") for count in (10, 100, 1000)
    } | {"/v1/ranking 100", "/v1/rerank 100", "/v1/ranking 20 images"}
    own = [row["sidecar_own_ms"] for name, row in results["latency"].items() if "1000" not in name]
    assert all(value > 0 for value in own)
    assert set(results["throughput"]) == {
        f"{route} {concurrency}"
        for route in ("direct", "http", "grpc")
        for concurrency in (1, 16, 64)
    }
    assert all(results["throughput"][f"http {c}"]["cpu_ms_per_request"] > 0 for c in (1, 16, 64))
    assert results["cache"]["hit_upstream_calls"] == 0
    assert results["cache"]["half_overlap_upstream_calls"] == 1
    calls = results["weaviate_4x32"]["upstream_calls"]
    goals = {goal["goal"]: goal for goal in results["goals"]}
    assert goals["Weaviate 4 x 32 -> 1 upstream call"]["met"] is (calls == 1)
    assert len(goals) == 12
    shared = results["replicas"]
    # Every other request repeats one through another replica: those are hits only when shared.
    assert shared["shared_upstream_calls"] == 10
    assert shared["alone_upstream_calls"] == 20

    flood = results["fair_share"]
    # Every call waits for the emulator's delay; the flood made calls while it was measured.
    assert flood["unloaded_p50_ms"] >= EMULATOR_DELAY_MS
    assert flood["direct_loaded_p50_ms"] >= EMULATOR_DELAY_MS
    assert flood["ratio"] == pytest.approx(flood["loaded_p50_ms"] / flood["unloaded_p50_ms"])
    assert flood["upstream_calls"] > 0
    goal = goals["a small request under a flood stays within 2x its unloaded latency"]
    assert goal["met"] is (flood["ratio"] <= 2)

    slow = results["slow_replica"]
    assert (slow["unhedged_hedging"], slow["hedged_hedging"]) == (0, 1)
    assert slow["unhedged_extra_calls"] == slow["unhedged_hedges_won"] == 0
    # The hedge budget is a bound, not a target: it holds however the tail fell.
    assert 0 <= slow["hedged_extra_calls"] <= HEDGE_BUDGET * slow["hedged_requests"] + 1
    assert goals[f"hedging's extra calls within its budget ({HEDGE_BUDGET:.0%} of calls)"]["met"]

    assert "| goal | measured | met |" in result.stdout
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def _rank(emulator: Emulator, timeout_s: float) -> float:
    """Seconds one small call to the emulator took."""
    body = {"model": "m", "query": {"text": "a"}, "passages": [{"text": "a b"}]}
    start = time.monotonic()
    response = httpx.post(emulator.url + "/v1/ranking", json=body, timeout=timeout_s)
    assert response.status_code == 200
    return time.monotonic() - start


def test_the_emulators_tail_delays_the_share_of_calls_it_is_given(emulator: Emulator) -> None:
    emulator.state.tail_share, emulator.state.tail_delay_s = 1.0, 0.3
    assert _rank(emulator, 30) >= 0.3
    emulator.state.tail_share, emulator.state.tail_delay_s = 0.0, 60.0
    _rank(emulator, 30)  # not delayed: a delayed call would time out


def test_the_emulators_tail_share_is_refused_outside_0_to_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(["emulate-nim", "--tail-share", "1.5"])
    assert exit_.value.code == 2
    assert "--tail-share: must be a number from 0 to 1, not '1.5'" in capsys.readouterr().err


def test_the_peers_report_divides_only_what_the_sidecar_adds() -> None:
    """A percentile of the sidecar at or below direct's gives no ratio, not a negative one."""
    latency = {
        "direct": {"p50_ms": 3.0, "added_p50_ms": 0.0, "added_p99_ms": 0.0},
        "sidecar /rerank": {"p50_ms": 4.0, "added_p50_ms": 1.0, "added_p99_ms": -1.2},
        "LiteLLM /rerank": {"p50_ms": 15.0, "added_p50_ms": 12.0, "added_p99_ms": 22.0},
    }
    rates = {
        f"{name} c={concurrency}": {"requests_per_s": rate, "cpu_ms_per_request": cpu}
        for concurrency in (16, 64)
        for name, rate, cpu in (
            ("direct", 400.0, float("nan")),
            ("sidecar /rerank", 380.0, 0.9),
            ("LiteLLM /rerank", 80.0, 12.0),
        )
    }
    ratios = report({"latency": latency, "throughput": rates}).splitlines()[-1]
    assert ratios == (
        "LiteLLM / sidecar: added p50 12.0 x, added p99 n/a (the sidecar's at or below "
        "direct's); throughput c=16 0.21 x, c=64 0.21 x"
    )
