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
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from processes import (
    EMULATOR_READY,
    SERVE,
    SIDECAR_READY,
    WORDS,
    clean_environment,
    rss_mib,
    running,
)

from reranker_nvidia.client import AsyncRerankerClient
from reranker_nvidia.errors import RerankError
from reranker_nvidia.hits import Hit, SearchType


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def documents(count: int) -> list[str]:
    return [" ".join(random.choices(WORDS, k=random.randint(5, 60))) for _ in range(count)]


async def soak(duration_s: float, rate: float, seed: int) -> int:
    random.seed(seed)
    env = clean_environment()
    with running(["emulate-nim", "--port", "0"], env, EMULATOR_READY) as (_, emulator):
        env["RERANKER_BASE_URL"] = f"http://127.0.0.1:{emulator[1]}"
        with running(SERVE, env, SIDECAR_READY) as (pid, sidecar):
            return await _soak(duration_s, rate, pid, sidecar)


async def _soak(duration_s: float, rate: float, pid: int, sidecar: re.Match[str]) -> int:
    http_url, grpc_target = f"http://127.0.0.1:{sidecar[1]}", f"127.0.0.1:{sidecar[2]}"
    rss_start = rss_mib(pid)
    rss_peak = rss_start
    tally = Tally()
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
                    http.post("/rerank", json={"query": "rerank query", "documents": documents(32)})
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
                rss_peak = max(rss_peak, rss_mib(pid))
            await asyncio.sleep(max(0.0, began + sent * interval - now))
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    rss_end = rss_mib(pid)
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
