"""What the benchmarks' rows are made of: passages and fresh queries, percentiles, timings, a
process's CPU time, a sidecar's metrics, and writing the results out."""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.processes import WORDS

MODEL = "nvidia/rerank-qa-mistral-4b"
_query_numbers = itertools.count()


def passage() -> str:
    """~400 characters of words."""
    words: list[str] = []
    while sum(len(word) + 1 for word in words) < 400:
        words.append(random.choice(WORDS))
    return " ".join(words)


def short_passage() -> str:
    return " ".join(random.choices(WORDS, k=5))


def fresh_query() -> str:
    """A query not sent before in this process: no cache answers it."""
    return f"hybrid search {next(_query_numbers)}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    """Milliseconds ``call()`` took."""
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def metrics_of(http: httpx.AsyncClient, sidecar_url: str) -> dict[str, float]:
    """A sidecar's Prometheus samples, by name with labels."""
    text = (await http.get(sidecar_url + "/metrics")).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def summed(samples: dict[str, float], name: str) -> float:
    """The sum of a metric over all its labels."""
    return sum(value for key, value in samples.items() if key.startswith(name + "{"))


async def upstream_calls_of(http: httpx.AsyncClient, sidecar_url: str) -> float:
    return summed(await metrics_of(http, sidecar_url), "reranker_upstream_calls_total")


def publish(
    results: dict[str, Any],
    report: Callable[[dict[str, Any]], str],
    output: Path,
    started: float,
) -> None:
    """Write ``results`` (with the run's duration) as JSON to ``output`` and print the report."""
    results["seconds"] = time.perf_counter() - started
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\n{results['seconds']:.0f} s; written to {output}")
