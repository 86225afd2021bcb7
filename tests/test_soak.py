"""`make soak` runs end to end: a short, slow soak reports its figures and finds no errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_a_short_soak_reports_requests_errors_and_rss() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "2", "--rate", "20"],
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
