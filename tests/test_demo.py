"""`make demo` runs offline with no key and shows the same reranked order on every surface."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import clean_environment


def test_demo_reranks_through_every_surface() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reranker_nvidia.demo"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sections = result.stdout.split("\n\n")
    surfaces = {section.splitlines()[0]: section.splitlines()[1:] for section in sections[1:]}
    orders = {
        name: [re.search(r"\bh\d\b", line)[0] for line in lines]  # type: ignore[index]
        for name, lines in surfaces.items()
        if name.startswith(("gRPC", "HTTP"))
    }
    assert set(orders) == {
        "gRPC Rerank",
        "HTTP POST /rerank (Weaviate sidecar)",
        "HTTP POST /v1/ranking (NIM)",
        "HTTP POST /v1/retrieval/nvidia/reranking (NIM)",
        "HTTP POST /v1/rerank (Cohere/Jina)",
    }
    assert all(order[:2] == ["h5", "h2"] for order in orders.values())
    [pictures] = [lines for name, lines in surfaces.items() if name.startswith("Images")]
    assert pictures[0].endswith("a red square"), "the red square ranks first"
    assert result.stdout.rstrip().endswith("stopped both")
