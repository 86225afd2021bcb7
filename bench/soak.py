"""Soak: the sidecar under a steady load on loopback for a bounded time.

Starts the NIM emulator and the sidecar as processes of their own, sends requests at a fixed
rate through every surface (gRPC Rank and Rerank, HTTP /rerank, /v1/ranking, /v1/rerank),
with a share of bad requests that must be refused with a 4xx, and reports requests, errors,
latency and the sidecar's resident memory at the start and the end.

    python bench/soak.py [--duration 60] [--rate 50]

Exits 1 if any request failed unexpectedly. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from reranker_nvidia.client import AsyncRerankerClient
from reranker_nvidia.errors import RerankError
from reranker_nvidia.hits import Hit, SearchType

WORDS = [
    "rerank",
    "model",
    "passage",
    "order",
    "query",
    "score",
    "vector",
    "keyword",
    "hybrid",
    "search",
]


def _script() -> str:
    local = Path(sys.executable).parent / "reranker-nvidia"
    return str(local) if local.exists() else shutil.which("reranker-nvidia") or "reranker-nvidia"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(
    args: list[str], env: dict[str, str], pattern: str
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    process = subprocess.Popen(
        [_script(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    match = None
    for line in process.stdout:
        match = re.search(pattern, line)
        if match or time.monotonic() > deadline:
            break
    if match is None:
        process.kill()
        raise SystemExit(f"{args[0]} did not start")
    # Keep reading what it prints: a full pipe would stop the process at its next log line.
    threading.Thread(target=lambda: deque(process.stdout or (), maxlen=0), daemon=True).start()
    return process, match


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def documents(count: int) -> list[str]:
    return [" ".join(random.choices(WORDS, k=random.randint(5, 60))) for _ in range(count)]


async def soak(duration_s: float, rate: float, seed: int) -> int:
    random.seed(seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_", "RERANKER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    emulator, found = start(["emulate-nim", "--port", "0"], env, r"127\.0\.0\.1:(\d+)/v1/ranking")
    env["RERANKER_BASE_URL"] = f"http://127.0.0.1:{found[1]}"
    env["RERANKER_LOG_LEVEL"] = "WARNING"
    sidecar, found = start(
        ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"],
        {**env, "RERANKER_LOG_LEVEL": "INFO"},
        r"HTTP on 127\.0\.0\.1:(\d+) and gRPC on 127\.0\.0\.1:(\d+)",
    )
    http_url, grpc_target = f"http://127.0.0.1:{found[1]}", f"127.0.0.1:{found[2]}"
    rss_start = rss_mib(sidecar.pid)
    rss_peak = rss_start
    tally = Tally()
    try:
        async with (
            httpx.AsyncClient(base_url=http_url, timeout=10) as http,
            AsyncRerankerClient(grpc_target, timeout_s=10) as grpc_client,
        ):
            kinds: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                ("grpc Rank", lambda: _grpc_rank(grpc_client)),
                ("grpc Rerank", lambda: _grpc_rerank(grpc_client)),
                (
                    "http /rerank x32",
                    lambda: _status(
                        http.post(
                            "/rerank", json={"query": "rerank query", "documents": documents(32)}
                        )
                    ),
                ),
                (
                    "http /v1/ranking",
                    lambda: _status(
                        http.post(
                            "/v1/ranking",
                            json={
                                "query": {"text": "hybrid search"},
                                "passages": [{"text": text} for text in documents(100)],
                            },
                        )
                    ),
                ),
                (
                    "http /v1/rerank",
                    lambda: _status(
                        http.post(
                            "/v1/rerank",
                            json={"query": "vector", "documents": documents(20), "top_n": 5},
                        )
                    ),
                ),
                (
                    "bad input",
                    lambda: _status(http.post("/rerank", json={"query": "", "documents": [1]})),
                ),
            ]
            weights = [20, 10, 30, 15, 20, 5]
            tasks: set[asyncio.Task[None]] = set()
            interval = 1 / rate
            began = time.monotonic()
            sent = 0
            while (now := time.monotonic()) - began < duration_s:
                name, call = random.choices(kinds, weights)[0]
                task = asyncio.create_task(_measure(name, call, tally))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                if sent % max(1, int(rate)) == 0:
                    rss_peak = max(rss_peak, rss_mib(sidecar.pid))
                await asyncio.sleep(max(0.0, began + sent * interval - now))
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        rss_end = rss_mib(sidecar.pid)
    finally:
        for process in (sidecar, emulator):
            process.terminate()
        for process in (sidecar, emulator):
            process.wait(15)
    return _report(duration_s, rate, tally, rss_start, rss_peak, rss_end)


async def _grpc_rank(client: AsyncRerankerClient) -> int:
    await client.rank("keyword search", documents(50), top_n=10)
    return 200


async def _grpc_rerank(client: AsyncRerankerClient) -> int:
    hits = [
        Hit(str(i), {"content": text}, score=1.0 / (i + 1), search_type=SearchType.HYBRID)
        for i, text in enumerate(documents(25))
    ]
    await client.rerank(hits, properties=["content"], query="order passages")
    return 200


async def _status(request: Awaitable[httpx.Response]) -> int:
    return (await request).status_code


async def _measure(name: str, call: Callable[[], Awaitable[int]], tally: Tally) -> None:
    start = time.perf_counter()
    try:
        status = await call()
    except RerankError as error:
        status = -1
        tally.outcomes[f"{name}: {error.code.value}"] += 1
    except Exception as error:
        status = -1
        tally.outcomes[f"{name}: {type(error).__name__}"] += 1
    tally.latencies_ms.append((time.perf_counter() - start) * 1000)
    expected = 400 if name == "bad input" else 200
    if status == expected:
        tally.outcomes["ok" if expected == 200 else "refused as expected (4xx)"] += 1
    elif status != -1:
        tally.outcomes[f"{name}: HTTP {status}"] += 1


def _report(
    duration_s: float, rate: float, tally: Tally, rss_start: float, rss_peak: float, rss_end: float
) -> int:
    requests = sum(tally.outcomes.values())
    expected = tally.outcomes["ok"] + tally.outcomes["refused as expected (4xx)"]
    errors = requests - expected
    latencies = sorted(tally.latencies_ms)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    print(f"soak: {duration_s:g} s at {rate:g} requests/s on loopback")
    print(f"  requests            {requests}")
    print(f"  ok                  {tally.outcomes['ok']}")
    print(f"  refused as expected {tally.outcomes['refused as expected (4xx)']}")
    print(f"  unexpected errors   {errors}")
    for outcome, count in sorted(tally.outcomes.items()):
        if outcome not in ("ok", "refused as expected (4xx)"):
            print(f"    {outcome}: {count}")
    print(f"  latency ms          p50 {p50:.1f}  p99 {p99:.1f}")
    print(f"  sidecar RSS MiB     start {rss_start:.1f}  peak {rss_peak:.1f}  end {rss_end:.1f}")
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.duration <= 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive")
    return asyncio.run(soak(args.duration, args.rate, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
