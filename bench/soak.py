"""Soak: the sidecar under a steady load on loopback for a bounded time, then under attack.

Starts the NIM emulator and the sidecar as processes of their own, sends requests at a fixed
rate through every surface (gRPC Rank and Rerank, HTTP /rerank, /v1/ranking, /v1/rerank),
with a share of bad requests that must be refused with a 4xx, and reports requests, errors,
latency and the sidecar's resident memory at the start and the end. Then two hostile phases:

- slow clients: hundreds of connections that never finish their headers and dozens of large
  bodies that stall half-way, while the liveness probe must keep answering; every one of them
  must be closed by the sidecar's header and body timeouts;
- a hostile upstream: an allow-listed "NIM" that answers with bodies far over
  RERANKER_MAX_UPSTREAM_BYTES (a huge ranking, a huge JSON error); each must be a 502.

    python -m bench.soak [--duration 60] [--rate 50]

Exits 1 if any request failed unexpectedly, a hostile phase did not hold, or the sidecar's RSS
went over RSS_BOUND_MIB. Only loopback addresses are used.
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

from bench.processes import (
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
from reranker_nvidia.types import Hit, SearchType

# The sidecar's resident memory must stay under this through the whole soak, attacks included.
RSS_BOUND_MIB = 300
SLOW_HEADERS = 300
STALLED_BODIES = 24
STALLED_BODY_BYTES = 12 * 1024 * 1024
HOSTILE_ANSWER_BYTES = 64 * 1024 * 1024
# The sidecar under soak closes slow clients sooner than its defaults, so the phase is short.
SOAK_SETTINGS = {"RERANKER_HEADER_TIMEOUT_S": "1", "RERANKER_BODY_TIMEOUT_S": "1.5"}


class RssWatch:
    """The sidecar's resident memory, sampled, with the highest reading kept."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0

    def sample(self) -> float:
        reading = rss_mib(self.pid)
        self.peak = max(self.peak, reading)
        return reading


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def documents(count: int) -> list[str]:
    return [" ".join(random.choices(WORDS, k=random.randint(5, 60))) for _ in range(count)]


async def soak(duration_s: float, rate: float, seed: int) -> int:
    random.seed(seed)
    env = {**clean_environment(), **SOAK_SETTINGS}
    hostile = await asyncio.start_server(_hostile_upstream, "127.0.0.1", 0)
    hostile_url = f"http://127.0.0.1:{hostile.sockets[0].getsockname()[1]}"
    env["RERANKER_ALLOWED_BASE_URLS"] = hostile_url
    try:
        with running(["emulate-nim", "--port", "0"], env, EMULATOR_READY) as (_, emulator):
            env["RERANKER_BASE_URL"] = f"http://127.0.0.1:{emulator[1]}"
            with running(SERVE, env, SIDECAR_READY) as (process, sidecar):
                rss = RssWatch(process.pid)
                failed = await _soak(duration_s, rate, rss, sidecar)
                failed |= await _slow_clients(rss, sidecar)
                failed |= await _hostile_phase(rss, sidecar, hostile_url)
                within = rss.peak <= RSS_BOUND_MIB
                print(
                    f"sidecar RSS peak over every phase: {rss.peak:.1f} MiB "
                    f"(bound {RSS_BOUND_MIB} MiB: {'held' if within else 'EXCEEDED'})"
                )
                return failed | (0 if within else 1)
    finally:
        hostile.close()


async def _soak(duration_s: float, rate: float, rss: RssWatch, sidecar: re.Match[str]) -> int:
    http_url, grpc_target = f"http://127.0.0.1:{sidecar[1]}", f"127.0.0.1:{sidecar[2]}"
    rss_start = rss.sample()
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
                rss.sample()
            await asyncio.sleep(max(0.0, began + sent * interval - now))
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    rss_end = rss.sample()
    return _report(duration_s, rate, tally, rss_start, rss.peak, rss_end)


async def _slow_clients(rss: RssWatch, sidecar: re.Match[str]) -> int:
    """Half-sent headers and stalled bodies: the probe answers throughout, memory stays
    bounded, and the sidecar closes every one of them."""
    port = int(sidecar[1])
    rss_start = rss.sample()
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(SLOW_HEADERS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /rerank HTTP/1.1\r\nHost: soak\r\n")
        connections.append((reader, writer))
    half = b"x" * (STALLED_BODY_BYTES // 2)
    for _ in range(STALLED_BODIES):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /rerank HTTP/1.1\r\nHost: soak\r\nContent-Length: {STALLED_BODY_BYTES}\r\n\r\n"
        )
        writer.write(head.encode() + half)
        connections.append((reader, writer))
    # Past the bound on bodies in memory a stalled upload is answered 503 and closed at once.
    await asyncio.gather(*(writer.drain() for _, writer in connections), return_exceptions=True)
    rss_peak = rss.sample()
    probes_ok = 0
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(10):
            response = await http.get(f"http://127.0.0.1:{port}/.well-known/live")
            probes_ok += response.status_code == 204
            rss_peak = max(rss_peak, rss.sample())
            await asyncio.sleep(0.1)

    async def closed_by_sidecar(reader: asyncio.StreamReader) -> bool:
        """Closed, or reset (a refused upload still sending is reset after its answer): either
        way the sidecar let go of it; held open past the timeouts, it did not."""
        try:
            while await asyncio.wait_for(reader.read(65536), 10):
                pass
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    closed = sum(await asyncio.gather(*(closed_by_sidecar(reader) for reader, _ in connections)))
    for _, writer in connections:
        writer.close()
    rss_end = rss.sample()
    total = len(connections)
    held = probes_ok == 10 and closed == total
    print(f"slow clients: {SLOW_HEADERS} half-sent headers, {STALLED_BODIES} stalled 12 MiB bodies")
    print(f"  liveness probes answered  {probes_ok}/10")
    print(f"  closed by the sidecar     {closed}/{total}")
    print(
        f"  sidecar RSS MiB           start {rss_start:.1f}  peak {rss_peak:.1f}  end {rss_end:.1f}"
    )
    return 0 if held else 1


async def _hostile_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A "NIM" that answers every call with a body far over any sane limit."""
    try:
        request = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", request)
        await reader.readexactly(int(length[1]) if length else 0)
        status = b"200 OK" if random.random() < 0.5 else b"500 Internal Server Error"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % HOSTILE_ANSWER_BYTES
        )
        chunk = b'{"rankings": [' + b" " * (1024 * 1024 - 14)
        for _ in range(HOSTILE_ANSWER_BYTES // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _hostile_phase(rss: RssWatch, sidecar: re.Match[str], hostile_url: str) -> int:
    rss_start = rss.sample()
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(4):
            responses = await asyncio.gather(
                *(
                    http.post(
                        f"http://127.0.0.1:{sidecar[1]}/v1/ranking",
                        json={"query": {"text": "q"}, "passages": [{"text": "p"}]},
                        headers={"X-Nvidia-Baseurl": hostile_url},
                    )
                    for _ in range(8)
                )
            )
            statuses.update(response.status_code for response in responses)
            rss.sample()
    rss_end = rss.sample()
    print(f"hostile upstream: {sum(statuses.values())} calls answered with 64 MiB bodies")
    print(f"  statuses                  {dict(statuses)}")
    print(f"  sidecar RSS MiB           start {rss_start:.1f}  end {rss_end:.1f}")
    return 0 if set(statuses) == {502} else 1


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
