"""`make soak` runs end to end: a short, slow soak reports its figures and finds no errors;
under attack, every attack runs once (``--quick``) and every bound holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import QUICK, attacks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_a_short_soak_reports_requests_errors_and_rss_and_holds_under_attack() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "2", "--rate", "20", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout
    found = re.search(r"^\s+requests\s+(\d+)$", report, re.M)
    assert found, report
    requests = int(found[1])
    assert 30 <= requests <= 50
    assert "unexpected errors   0" in report
    assert "sidecar RSS MiB     start" in report
    assert "closed by the sidecar     324/324" in report
    assert "liveness probes answered  10/10" in report
    assert "statuses                  {502: 32}" in report
    assert re.search(r"bound \d+ MiB: held", report), report
    # Under attack: one row per attack in the table, each held, each with its own findings.
    assert "under attack (quick: every attack once" in report, report
    for attack in attacks(QUICK):
        row = re.search(rf"^  {re.escape(attack.name)} .*  held ", report, re.M)
        assert row, f"{attack.name!r} has no row that held:\n{report}"
        assert f"  {attack.name}:\n    " in report, report
    assert "BROKEN" not in report, report
    # Each attack's own finding is there: what the sidecar answered or did about it.
    assert re.search(r"header: 431 after .* MiB sent", report), report
    assert re.search(r"URL: 414 after .* MiB sent", report), report
    assert re.search(r"statuses \{408: \d+, 503: \d+\}", report), report
    assert re.search(r"GOAWAY 11 \(want 11\)", report), report
    assert re.search(r"\d+ streams reset, \d+ refused", report), report
    assert re.search(r"\d+ SETTINGS sent, never acknowledged", report), report
    assert re.search(r"4 documents: alone p50 \d+ ms; under the flood p50", report), report
