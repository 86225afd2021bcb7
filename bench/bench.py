"""The sidecar's cost on top of NIM, measured against the NIM emulator on loopback.

    python -m bench.bench [--runs 3] [--quick]

Starts two emulators (one answering at once, one after 50 ms) and a sidecar in front of
each, all as processes of their own, then measures, each row a median over ``--runs`` runs:

- added latency p50/p99 (sidecar minus a direct call to the same emulator, the two
  alternating, a fresh query each request so no cache hit) at 10, 100 and 1,000 passages of
  ~400 characters over gRPC ``Rank`` and HTTP ``/rerank``, and at 100 passages over the NIM
  (``/v1/ranking``) and Cohere (``/v1/rerank``) routes too; with the sidecar's own share
  (its request time minus its upstream time, from ``/metrics``); and of 20 images (distinct
  PNGs of 10 to 50 KB as data URLs, the vision-language model) over ``/v1/ranking``;
- throughput at concurrency 1, 16 and 64, 100 passages a request, over HTTP ``/rerank`` and
  gRPC, beside the same requests sent directly; and the sidecar's CPU time (user + system,
  from ``/proc``) per request over the HTTP run;
- fan-out: 5,000 passages against the same calls sent directly in parallel, and one call,
  upstream delaying 50 ms a call;
- cache: a repeated request over HTTP ``/rerank`` (hit latency, upstream calls) and a
  half-overlapping one;
- Weaviate's pattern: 100 documents as 4 parallel /rerank calls of 32 (upstream calls);
- three replicas sharing a Redis server (Debian's ``redis-server``) against three without:
  every other request repeats the one before through another replica (upstream calls, p50);
- the sidecar's peak RSS during the throughput run;
- fair share under a flood (``flood.py``): a 4-document request's p50 alone and while 6
  clients loop 10,000-document requests, through a sidecar of its own;
- one slow replica (``slow_replica.py``): two emulators behind one sidecar, one of them slow
  on a share of its calls, without hedging and with it (p50, p99, extra calls).

Prints the tables and the goals, met or not, writes bench/results.json (percentiles) and
draws the added latency's distribution by route at 100 passages to bench/added_latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import random
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.flood import EMULATOR_DELAY_MS, FLOOD_DOCUMENTS, FLOODERS, SMALL_DOCUMENTS, FairShare
from bench.images import VL_MODEL, image_urls
from bench.load import LeanClient
from bench.measures import (
    MODEL,
    cpu_seconds,
    fresh_query,
    metrics_of,
    passage,
    percentile,
    publish,
    short_passage,
    timed,
    upstream_calls_of,
)
from bench.plots import plot_added_latency
from bench.processes import (
    EMULATOR_READY,
    SERVE,
    SIDECAR_READY,
    Command,
    RedisServer,
    Started,
    clean_environment,
    free_ports,
    rss_mib,
    running_together,
)
from bench.slow_replica import (
    HEDGE_BUDGET,
    HEDGE_PERCENTILE,
    PASSAGES,
    TAIL_MS,
    TAIL_SHARE,
    SlowReplica,
)
from reranker_nvidia.client import AsyncRerankerClient
from reranker_nvidia.server.assembly import build_core
from reranker_nvidia.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results.json"
PLOT = Path(__file__).resolve().parent / "added_latency.png"
# The rows whose added latency is drawn, and how the picture names them.
PLOTTED = {
    "/rerank 100": "/rerank 100 passages",
    "/v1/ranking 100": "/v1/ranking 100 passages",
    "/v1/rerank 100": "/v1/rerank 100 passages",
    "grpc 100": "gRPC 100 passages",
    "/v1/ranking 20 images": "/v1/ranking 20 images",
}


@dataclass
class Setup:
    http: httpx.AsyncClient
    direct_url: str
    slow_direct_url: str
    sidecar_url: str
    grpc: AsyncRerankerClient
    slow_grpc: AsyncRerankerClient
    sidecar_pid: int
    lean: dict[str, LeanClient] = field(default_factory=dict)

    async def direct(self, query: str, documents: list[str], slow: bool = False) -> None:
        origin = self.slow_direct_url if slow else self.direct_url
        chunks = [documents[i : i + 512] for i in range(0, len(documents), 512)]
        responses = await asyncio.gather(
            *(
                self.post(
                    origin,
                    "/v1/ranking",
                    {
                        "model": MODEL,
                        "query": {"text": query},
                        "passages": [{"text": text} for text in chunk],
                    },
                )
                for chunk in chunks
            )
        )
        assert all(responses)

    async def rerank_http(self, query: str, documents: list[str]) -> list[float]:
        answer = await self.post(
            self.sidecar_url, "/rerank", {"query": query, "documents": documents}
        )
        return [entry["score"] for entry in orjson.loads(answer)["scores"]]

    async def through(self, surface: str, query: str, documents: list[str]) -> None:
        """One request to the sidecar over ``surface`` (a key of ``SURFACES``)."""
        if surface == "grpc":
            await self.grpc.rank(query, documents)
            return
        path, body = http_request(surface, query, documents)
        await self.post(self.sidecar_url, path, body)

    async def post(self, origin: str, path: str, body: dict[str, Any]) -> bytes:
        """The same client work for a direct and a proxied call: orjson out, bytes back,
        through the lean load client (see ``load.py``)."""
        client = self.lean.get(origin)
        if client is None:
            client = self.lean[origin] = LeanClient(origin)
        return await client.post(path, orjson.dumps(body))

    def close(self) -> None:
        for client in self.lean.values():
            client.close()

    async def metrics(self) -> dict[str, float]:
        return await metrics_of(self.http, self.sidecar_url)

    async def upstream_calls(self) -> float:
        return await upstream_calls_of(self.http, self.sidecar_url)


# Each surface measured: how its requests are labelled in the sidecar's metrics.
SURFACES = {"grpc": "grpc", "/rerank": "weaviate", "/v1/ranking": "nim", "/v1/rerank": "cohere"}


def http_request(surface: str, query: str, documents: list[str]) -> tuple[str, dict[str, Any]]:
    """The path and body each HTTP contract's clients send."""
    if surface == "/rerank":
        return surface, {"query": query, "documents": documents}
    if surface == "/v1/ranking":
        passages = [{"text": text} for text in documents]
        return surface, {"model": MODEL, "query": {"text": query}, "passages": passages}
    return surface, {"model": MODEL, "query": query, "documents": documents}


def own_ms(before: dict[str, float], after: dict[str, float], surface: str) -> float:
    """Mean time the sidecar spent on a request minus the mean upstream call, between two
    snapshots of its metrics: its own share of the added latency."""

    def mean_ms(name: str, labels: str = "") -> float:
        count, total = f"{name}_count{labels}", f"{name}_sum{labels}"
        calls = after[count] - before.get(count, 0)
        return (after[total] - before.get(total, 0)) / calls * 1000

    request = mean_ms("reranker_request_duration_seconds", f'{{surface="{surface}"}}')
    return request - mean_ms("reranker_upstream_duration_seconds")


@dataclass(frozen=True)
class Pair:
    """One latency row: the same request sent directly and through the sidecar, each a
    function of a fresh query; ``surface`` labels the sidecar's metrics of it; ``calls`` the
    NIM calls one request makes."""

    surface: str
    direct: Callable[[str], Awaitable[object]]
    through: Callable[[str], Awaitable[object]]
    calls: int = 1


def text_pair(setup: Setup, surface: str, count: int) -> Pair:
    documents = [passage() for _ in range(count)]
    return Pair(
        SURFACES[surface],
        lambda query: setup.direct(query, documents),
        lambda query: setup.through(surface, query, documents),
        math.ceil(count / 512),
    )


def image_pair(setup: Setup, images: list[str]) -> Pair:
    passages = [{"image": url} for url in images]

    def body(query: str) -> dict[str, Any]:
        return {"model": VL_MODEL, "query": {"text": query}, "passages": passages}

    return Pair(
        SURFACES["/v1/ranking"],
        lambda query: setup.post(setup.direct_url, "/v1/ranking", body(query)),
        lambda query: setup.post(setup.sidecar_url, "/v1/ranking", body(query)),
    )


async def added_latency(
    setup: Setup, pair: Pair, requests: int
) -> tuple[dict[str, float], list[float]]:
    """The row's percentiles, and each request's time through the sidecar minus the direct
    call just before it (ms)."""
    direct_ms: list[float] = []
    sidecar_ms: list[float] = []
    before = await setup.metrics()
    for _ in range(requests):
        direct_ms.append(await timed(lambda: pair.direct(fresh_query())))
        sidecar_ms.append(await timed(lambda: pair.through(fresh_query())))
    after = await setup.metrics()
    # A request of several calls makes them concurrently, and "request minus one call" would
    # count their queueing at the emulator too: the figure means nothing there.
    own = own_ms(before, after, pair.surface)
    row = {
        "sidecar_own_ms": own if pair.calls == 1 else float("nan"),
        "direct_p50_ms": statistics.median(direct_ms),
        "sidecar_p50_ms": statistics.median(sidecar_ms),
        "added_p50_ms": statistics.median(sidecar_ms) - statistics.median(direct_ms),
        "added_p99_ms": percentile(sidecar_ms, 0.99) - percentile(direct_ms, 0.99),
    }
    return row, [through - direct for direct, through in zip(direct_ms, sidecar_ms, strict=True)]


async def throughput(
    setup: Setup, route: str, concurrency: int, seconds: float
) -> dict[str, float]:
    """Requests of 100 passages, ``concurrency`` at a time for ``seconds``, over ``route``:
    ``direct`` (to the emulator), ``http`` (``/rerank``) or ``grpc``."""
    documents = [passage() for _ in range(100)]
    done = 0
    peak = rss_mib(setup.sidecar_pid)
    stop_at = time.perf_counter() + seconds

    async def send() -> None:
        if route == "direct":
            await setup.direct(fresh_query(), documents)
        else:
            await setup.through("grpc" if route == "grpc" else "/rerank", fresh_query(), documents)

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await send()
            done += 1

    async def sample_rss() -> None:
        nonlocal peak
        while time.perf_counter() < stop_at:
            peak = max(peak, rss_mib(setup.sidecar_pid))
            await asyncio.sleep(0.1)

    cpu_before = cpu_seconds(setup.sidecar_pid)
    start = time.perf_counter()
    await asyncio.gather(sample_rss(), *(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(setup.sidecar_pid) - cpu_before
    return {
        "requests_per_s": done / elapsed,
        "passages_per_s": done * 100 / elapsed,
        "peak_rss_mib": peak,
        "cpu_ms_per_request": cpu / done * 1000 if route != "direct" else float("nan"),
    }


async def fan_out(setup: Setup) -> dict[str, float]:
    # Short passages: the emulator scores on one core, so with ~400 characters ten parallel
    # calls would measure its CPU, not how well the sidecar fans out.
    many = [short_passage() for _ in range(5000)]
    one_call = [short_passage() for _ in range(512)]
    single = await timed(lambda: setup.direct(fresh_query(), one_call, slow=True))
    direct_fan_out = await timed(lambda: setup.direct(fresh_query(), many, slow=True))
    fanned = await timed(lambda: setup.slow_grpc.rank(fresh_query(), many))
    return {
        "single_call_ms": single,
        "direct_fan_out_ms": direct_fan_out,
        "five_thousand_ms": fanned,
        "ratio": fanned / single,
        "ratio_to_direct": fanned / direct_fan_out,
    }


async def cache(setup: Setup, requests: int) -> dict[str, float]:
    documents = [passage() for _ in range(100)]
    query = fresh_query()
    await setup.rerank_http(query, documents)
    before = await setup.upstream_calls()
    hits = [await timed(lambda: setup.rerank_http(query, documents)) for _ in range(requests)]
    hit_calls = await setup.upstream_calls() - before
    half = documents[:50] + [passage() for _ in range(50)]
    before = await setup.upstream_calls()
    overlap_ms = await timed(lambda: setup.rerank_http(query, half))
    return {
        "hit_p50_ms": statistics.median(hits),
        "hit_upstream_calls": hit_calls,
        "half_overlap_ms": overlap_ms,
        "half_overlap_upstream_calls": await setup.upstream_calls() - before,
    }


async def weaviate_pattern(setup: Setup) -> dict[str, float]:
    documents = [passage() for _ in range(100)]

    async def chunks_in_parallel(query: str) -> None:
        await asyncio.gather(
            *(setup.rerank_http(query, documents[i : i + 32]) for i in range(0, 100, 32))
        )

    await chunks_in_parallel(fresh_query())  # Weaviate's connections are warm: so are ours
    query = fresh_query()
    before = await setup.upstream_calls()
    start = time.perf_counter()
    await chunks_in_parallel(query)
    elapsed = (time.perf_counter() - start) * 1000
    return {"upstream_calls": await setup.upstream_calls() - before, "elapsed_ms": elapsed}


def replica_commands(env: dict[str, str], emulator_url: str, store_url: str) -> list[Command]:
    """Three replicas sharing the Redis server at ``store_url``, then three without it."""
    alone = {**env, "RERANKER_BASE_URL": emulator_url}
    shared = {
        **alone,
        "RERANKER_CACHE_URL": store_url,
        "RERANKER_CACHE_SECRET": "bench-replicas-share-this-secret-0123",
        # On two loaded cores a store round trip (a ping) now and then outlasts the default
        # 25 ms, and the store is then skipped for a while: the row counts what sharing
        # saves, not how often the machine stalls.
        "RERANKER_CACHE_TIMEOUT_MS": "1000",
    }
    return [(SERVE, shared, SIDECAR_READY)] * 3 + [(SERVE, alone, SIDECAR_READY)] * 3


async def replicas(started: list[Started], requests: int) -> dict[str, float]:
    """Three replicas sharing a Redis server against three without one (``replica_commands``,
    running), on a workload where every other request repeats the one before through the next
    replica: the upstream calls each pays and the p50 over all requests."""
    urls = [f"http://127.0.0.1:{ready[1]}" for _, ready in started]
    return {
        **await _replica_run(urls[:3], requests, "shared"),
        **await _replica_run(urls[3:], requests, "alone"),
    }


async def _replica_run(urls: list[str], requests: int, name: str) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        clients = [LeanClient(url) for url in urls]
        for client in clients:
            stack.callback(client.close)
        async with httpx.AsyncClient(timeout=60) as http:

            async def upstream_calls() -> float:
                return sum([await upstream_calls_of(http, url) for url in urls])

            times: list[float] = []
            before = await upstream_calls()
            documents: list[str] = []
            query = ""
            for number in range(requests):
                if number % 2 == 0:  # a new request; the next one repeats it elsewhere
                    documents, query = [passage() for _ in range(20)], fresh_query()
                body = orjson.dumps({"query": query, "documents": documents})
                start = time.perf_counter()
                await clients[number % 3].post("/rerank", body)
                times.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.02)  # the shared write goes out after the answer
            calls = await upstream_calls() - before
    return {f"{name}_upstream_calls": calls, f"{name}_p50_ms": statistics.median(times)}


async def core_cache_hit(emulator_url: str, requests: int) -> float:
    """p50 ms of a 100-passage cache hit inside the core, with no RPC around it."""
    settings = Settings(api_key=None, base_url=emulator_url)
    core = build_core(settings)
    ranker = core.ranker
    documents = [passage() for _ in range(100)]
    try:
        await ranker.rank("cached query", documents, surface="grpc")
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            await ranker.rank("cached query", documents, surface="grpc")
            times.append((time.perf_counter() - start) * 1000)
    finally:
        await core.aclose()
    return statistics.median(times)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def measure(
    setup: Setup, runs: int, quick: bool
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The rows measured against the sidecar of ``setup``, and each plotted row's per-request
    added latency (every run's)."""
    results: dict[str, Any] = {"latency": {}, "throughput": {}}
    samples: dict[str, list[float]] = {}
    requests = {10: 20, 100: 20, 1000: 5} if quick else {10: 200, 100: 300, 1000: 40}
    rows = [(surface, count) for count in (10, 100, 1000) for surface in ("grpc", "/rerank")]
    rows += [("/v1/ranking", 100), ("/v1/rerank", 100)]
    # Each row's requests are made afresh for each run.
    pairs: dict[str, tuple[Callable[[], Pair], int]] = {
        f"{surface} {count}": (functools.partial(text_pair, setup, surface, count), requests[count])
        for surface, count in rows
    }
    images = image_urls(20)
    image_requests = 10 if quick else requests[100]
    pairs["/v1/ranking 20 images"] = (functools.partial(image_pair, setup, images), image_requests)
    for name, (make_pair, count) in pairs.items():
        measured = [await added_latency(setup, make_pair(), count) for _ in range(runs)]
        results["latency"][name] = median_of([row for row, _ in measured])
        if name in PLOTTED:
            samples[PLOTTED[name]] = [value for _, added in measured for value in added]
    for concurrency in (1, 16, 64):
        for route in ("direct", "http", "grpc"):
            results["throughput"][f"{route} {concurrency}"] = median_of(
                [
                    await throughput(setup, route, concurrency, 0.25 if quick else 4)
                    for _ in range(runs)
                ]
            )
    results["fan_out"] = median_of([await fan_out(setup) for _ in range(runs)])
    results["cache"] = median_of([await cache(setup, 25 if quick else 200) for _ in range(runs)])
    results["cache"]["core_hit_p50_ms"] = await core_cache_hit(setup.direct_url, 200)
    results["weaviate_4x32"] = median_of([await weaviate_pattern(setup) for _ in range(runs)])
    results["peak_rss_mib"] = max(row["peak_rss_mib"] for row in results["throughput"].values())
    return results, {label: samples[label] for label in PLOTTED.values() if label in samples}


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    latency, rate = results["latency"], results["throughput"]
    http = [latency[f"{surface} 100"] for surface in ("/rerank", "/v1/ranking", "/v1/rerank")]
    worst_p50 = max(row["added_p50_ms"] for row in http)
    worst_p99 = max(row["added_p99_ms"] for row in http)
    grpc_p50 = latency["grpc 100"]["added_p50_ms"]
    worst_own = max(latency[f"{surface} 100"]["sidecar_own_ms"] for surface in SURFACES)
    cpu = rate["http 16"]["cpu_ms_per_request"]
    shares = {
        c: rate[f"http {c}"]["requests_per_s"] / rate[f"direct {c}"]["requests_per_s"]
        for c in (16, 64)
    }
    fan, hit = results["fan_out"], results["cache"]
    flood, slow = results["fair_share"], results["slow_replica"]
    return [
        (
            "added p50 <= 1.0 ms at 100 passages, every HTTP contract",
            f"{worst_p50:.2f} ms",
            worst_p50 <= 1.0,
        ),
        (
            "added p99 <= 2.5 ms at 100 passages, every HTTP contract",
            f"{worst_p99:.2f} ms",
            worst_p99 <= 2.5,
        ),
        ("gRPC added p50 <= 1.5 ms at 100 passages", f"{grpc_p50:.2f} ms", grpc_p50 <= 1.5),
        ("sidecar's own share <= 0.5 ms (metrics)", f"{worst_own:.2f} ms", worst_own <= 0.5),
        (
            "CPU per 100-passage request <= 0.8 ms (HTTP, concurrency 16)",
            f"{cpu:.2f} ms",
            cpu <= 0.8,
        ),
        (
            "cache hit over HTTP /rerank <= 0.5 ms p50, 0 upstream calls",
            f"{hit['hit_p50_ms']:.2f} ms, {hit['hit_upstream_calls']:g} calls",
            hit["hit_p50_ms"] <= 0.5 and hit["hit_upstream_calls"] == 0,
        ),
        (
            "throughput >= 95 % of direct at concurrency 16 and 64",
            " / ".join(f"{share:.0%}" for share in shares.values()),
            all(share >= 0.95 for share in shares.values()),
        ),
        (
            "5,000 passages <= 1.1 x the same calls sent directly in parallel",
            f"{fan['ratio_to_direct']:.2f} x",
            fan["ratio_to_direct"] <= 1.1,
        ),
        (
            "Weaviate 4 x 32 -> 1 upstream call",
            f"{results['weaviate_4x32']['upstream_calls']:g}",
            results["weaviate_4x32"]["upstream_calls"] == 1,
        ),
        (
            "RSS <= 150 MB under the throughput run",
            f"{results['peak_rss_mib']:.0f} MiB",
            results["peak_rss_mib"] * 1.048576 <= 150,
        ),
        (
            "a small request under a flood stays within 2x its unloaded latency",
            f"{flood['ratio']:.2f} x",
            flood["ratio"] <= 2,
        ),
        (
            f"hedging's extra calls within its budget ({HEDGE_BUDGET:.0%} of calls)",
            f"{slow['hedged_extra_share']:.1%}",
            # The budget lets an extra call go while extras < budget x first calls.
            slow["hedged_extra_calls"] <= HEDGE_BUDGET * slow["hedged_requests"] + 1,
        ),
    ]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} ms"


def report(results: dict[str, Any]) -> str:
    lines = [
        "| row | direct p50 | sidecar p50 | added p50 | added p99 | sidecar's own (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["latency"].items():
        label = name if name.endswith("images") else f"{name} passages"
        lines.append(
            f"| {label} | {row['direct_p50_ms']:.2f} ms | {row['sidecar_p50_ms']:.2f} ms"
            f" | {row['added_p50_ms']:+.2f} ms | {row['added_p99_ms']:+.2f} ms"
            f" | {_ms(row['sidecar_own_ms'])} |"
        )
    lines += [
        "",
        "| route, concurrency | requests/s | share of direct | sidecar CPU/request | peak RSS |",
        "|---|---|---|---|---|",
    ]
    rate = results["throughput"]
    for name, row in rate.items():
        direct = rate[f"direct {name.split()[1]}"]["requests_per_s"]
        lines.append(
            f"| {name} | {row['requests_per_s']:.0f} | {row['requests_per_s'] / direct:.0%}"
            f" | {_ms(row['cpu_ms_per_request'])} | {row['peak_rss_mib']:.0f} MiB |"
        )
    fan, hit = results["fan_out"], results["cache"]
    flood, slow = results["fair_share"], results["slow_replica"]
    lines += [
        "",
        f"fan-out: 5,000 passages {fan['five_thousand_ms']:.0f} ms; the same 10 calls sent"
        f" directly in parallel {fan['direct_fan_out_ms']:.0f} ms"
        f" ({fan['ratio_to_direct']:.2f} x); one 512-passage call {fan['single_call_ms']:.0f} ms",
        f"cache: hit p50 {hit['hit_p50_ms']:.2f} ms over HTTP /rerank"
        f" ({hit['core_hit_p50_ms']:.2f} ms of it in the core)"
        f" with {hit['hit_upstream_calls']:g} upstream calls;"
        f" half-overlapping request {hit['half_overlap_ms']:.2f} ms with"
        f" {hit['half_overlap_upstream_calls']:g} upstream call(s)",
        f"Weaviate 4 x 32: {results['weaviate_4x32']['upstream_calls']:g} upstream call(s),"
        f" {results['weaviate_4x32']['elapsed_ms']:.1f} ms",
        f"fair share: a {SMALL_DOCUMENTS}-document /rerank request p50"
        f" {flood['unloaded_p50_ms']:.0f} ms alone, {flood['loaded_p50_ms']:.0f} ms"
        f" ({flood['ratio']:.2f} x; at most {flood['loaded_max_ms']:.0f} ms) while {FLOODERS}"
        f" clients loop {FLOOD_DOCUMENTS:,}-document requests, NIM answering after"
        f" {EMULATOR_DELAY_MS} ms; sent straight to NIM under the same flood,"
        f" {flood['direct_loaded_p50_ms']:.0f} ms; meanwhile {flood['flood_requests']:g} flood"
        f" requests answered and {flood['upstream_calls']:g} NIM calls made",
        "",
        f"| one slow replica of two ({TAIL_SHARE:.0%} of its calls {TAIL_MS} ms late),"
        f" {PASSAGES} passages | p50 | p99 | requests >= {TAIL_MS} ms | extra calls"
        " | hedges won | hedges refused |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {slow[f'{key}_p50_ms']:.2f} ms | {slow[f'{key}_p99_ms']:.2f} ms"
            f" | {slow[f'{key}_late_requests']:g} of {slow[f'{key}_measured']:g}"
            f" | {slow[f'{key}_extra_calls']:g} ({slow[f'{key}_extra_share']:.1%})"
            f" | {slow[f'{key}_hedges_won']:g} | {slow[f'{key}_hedges_refused']:g} |"
            for key, label in (
                ("unhedged", "no hedging"),
                ("hedged", f"hedging at p{HEDGE_PERCENTILE}"),
            )
        ),
        "",
        "| 3 replicas, every other request repeated elsewhere | upstream calls | p50 |",
        "|---|---|---|",
        *(
            f"| {label} | {results['replicas'][f'{key}_upstream_calls']:g}"
            f" | {results['replicas'][f'{key}_p50_ms']:.2f} ms |"
            for key, label in (("shared", "sharing one Redis"), ("alone", "each on its own"))
        ),
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {goal} | {value} | {'yes' if met else 'no'} |" for goal, value, met in goals(results)
    ]
    return "\n".join(lines)


Samples = dict[str, list[float]]


async def main_async(runs: int, quick: bool) -> tuple[dict[str, Any], Samples]:
    """Every row, and the added latency per request of the rows drawn."""
    random.seed(7)
    env = clean_environment()
    fast_port, slow_port = free_ports(2)
    fast_env = {**env, "RERANKER_BASE_URL": f"http://127.0.0.1:{fast_port}"}
    slow_env = {**env, "RERANKER_BASE_URL": f"http://127.0.0.1:{slow_port}"}
    emulate = ["emulate-nim", "--port"]
    processes = [
        ([*emulate, str(fast_port)], env, EMULATOR_READY),
        ([*emulate, str(slow_port), "--delay-ms", "50"], env, EMULATOR_READY),
        (SERVE, fast_env, SIDECAR_READY),
        (SERVE, slow_env, SIDECAR_READY),
    ]
    with running_together(processes) as [
        (_, fast),
        (_, slow),
        (sidecar_process, sidecar),
        (_, slow_sidecar),
    ]:
        results, samples = await _measure_all(
            runs, quick, fast, slow, sidecar, slow_sidecar, sidecar_process.pid
        )
        # The other rows' processes, all started at once (their start-up is mostly imports,
        # and their stop mostly waiting), then each row measured alone.
        store = RedisServer()
        store.start()
        try:
            with tempfile.TemporaryDirectory() as folder:
                flood, hedging = FairShare(env), SlowReplica(env, Path(folder))
                commands = replica_commands(env, fast_env["RERANKER_BASE_URL"], store.url)
                with running_together(commands + flood.commands + hedging.commands) as started:
                    results["replicas"] = await replicas(started[:6], 20 if quick else 100)
                    results["fair_share"] = await flood.measure(started[6:8], quick)
                    results["slow_replica"] = await hedging.measure(started[8:], quick)
        finally:
            store.stop()
    return results, samples


async def _measure_all(
    runs: int,
    quick: bool,
    fast: re.Match[str],
    slow: re.Match[str],
    sidecar: re.Match[str],
    slow_sidecar: re.Match[str],
    pid: int,
) -> tuple[dict[str, Any], Samples]:
    async with (
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http,
        AsyncRerankerClient(f"127.0.0.1:{sidecar[2]}", timeout_s=60) as grpc_client,
        AsyncRerankerClient(f"127.0.0.1:{slow_sidecar[2]}", timeout_s=60) as slow_grpc,
    ):
        setup = Setup(
            http,
            f"http://127.0.0.1:{fast[1]}",
            f"http://127.0.0.1:{slow[1]}",
            f"http://127.0.0.1:{sidecar[1]}",
            grpc_client,
            slow_grpc,
            pid,
        )
        await setup.grpc.rank("warm up", ["a"])
        await setup.slow_grpc.rank("warm up", ["a"])
        try:
            return await measure(setup, runs, quick)
        finally:
            setup.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Measure what the sidecar adds to NIM.")
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the median is kept")
    parser.add_argument("--quick", action="store_true", help="fewer requests, for a smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to draw the PNG")
    args = parser.parse_args()
    started = time.perf_counter()
    results, samples = asyncio.run(main_async(args.runs, args.quick))
    results["goals"] = [
        {"goal": goal, "measured": value, "met": met} for goal, value, met in goals(results)
    ]
    plot_added_latency(samples, {"goal p50, HTTP": 1.0, "goal p99, HTTP": 2.5}, args.plot)
    publish(results, report, args.output, started)
    print(f"added latency drawn in {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
