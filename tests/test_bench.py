"""`make bench` runs end to end: a one-run smoke pass writes every row and every goal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_a_quick_bench_writes_every_row(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench", "--runs", "1", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    assert set(results["latency"]) == {
        f"{surface} {count}" for surface in ("grpc", "/rerank") for count in (10, 100, 1000)
    } | {"/v1/ranking 100", "/v1/rerank 100"}
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
    assert len(goals) == 10
    shared = results["replicas"]
    # Every other request repeats one through another replica: those are hits only when shared.
    assert shared["shared_upstream_calls"] == 10
    assert shared["alone_upstream_calls"] == 20
    assert "| goal | measured | met |" in result.stdout
