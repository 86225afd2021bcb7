"""The sidecar beside LiteLLM's proxy, both in front of the same NIM emulator on loopback.

    python -m bench.peers --litellm .venv-peers/bin/litellm [--pairs 300] [--seconds 8]

(``make bench-peers`` installs ``litellm[proxy]`` into its own venv and runs this.)

Starts the emulator, the sidecar and LiteLLM's proxy (one worker, the emulator as its
``nvidia_nim`` rerank model) as processes, then measures, at 100 passages of ~400 characters
and a fresh query each request (so no cache answers):

- added latency: direct, the sidecar's ``/rerank`` and ``/v1/rerank``, and LiteLLM's
  ``/rerank``, called in turn ``--pairs`` times; p50 and p99 minus the direct call's;
- throughput at concurrency 16 and 64 for ``--seconds`` each: requests/s, as a share of
  direct, and each proxy's CPU time per request (user + system, from ``/proc``).

Prints the rows and the ratios LiteLLM / sidecar, writes bench/peers.json (percentiles) and
draws the added latency per request, the latency's distribution and the throughput to
bench/peers.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.load import LeanClient
from bench.measures import MODEL, cpu_seconds, fresh_query, passage, percentile, publish
from bench.plots import plot_peers
from bench.processes import (
    EMULATOR_READY,
    SERVE,
    SIDECAR_READY,
    clean_environment,
    free_port,
    running,
    stop,
)

RESULTS = Path(__file__).resolve().parent / "peers.json"
PLOT = Path(__file__).resolve().parent / "peers.png"
LITELLM_MODEL = "nim-rerank"


@contextmanager
def litellm_proxy(litellm: str, emulator_url: str) -> Iterator[tuple[int, int, str]]:
    """LiteLLM's proxy with the emulator as its rerank model: (pid, port, master key)."""
    master_key = "sk-" + secrets.token_hex(24)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {LITELLM_MODEL}\n"
            "    litellm_params:\n"
            f"      model: nvidia_nim/{MODEL}\n"
            f"      api_base: {emulator_url}/v1\n"
            "      api_key: nvapi-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        env = {
            **clean_environment(),
            "LITELLM_MASTER_KEY": master_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start-up
            "LITELLM_LOG": "ERROR",
        }
        command = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        child = subprocess.Popen(
            command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_until_live(f"http://127.0.0.1:{port}/health/liveliness", child)
            yield child.pid, port, master_key
        finally:
            stop(child)


def _wait_until_live(url: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"LiteLLM's proxy exited with {child.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("LiteLLM's proxy did not start within 120 s")


@dataclass
class Route:
    name: str
    origin: str
    path: str
    body: Callable[[str, list[str]], dict[str, Any]]
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    clients: list[LeanClient] = field(default_factory=list)

    def client(self) -> LeanClient:
        """A load client of this route's (one per concurrent caller: each keeps its own
        keep-alive connections)."""
        client = LeanClient(self.origin, self.headers)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


def routes(
    emulator: str, sidecar: str, litellm: str, key: str, pids: tuple[int, int]
) -> list[Route]:
    def nim(query: str, documents: list[str]) -> dict[str, Any]:
        passages = [{"text": text} for text in documents]
        return {"model": MODEL, "query": {"text": query}, "passages": passages}

    def weaviate(query: str, documents: list[str]) -> dict[str, Any]:
        return {"query": query, "documents": documents}

    def cohere(model: str) -> Callable[[str, list[str]], dict[str, Any]]:
        return lambda query, documents: {"model": model, "query": query, "documents": documents}

    sidecar_pid, litellm_pid = pids
    return [
        Route("direct", emulator, "/v1/ranking", nim),
        Route("sidecar /rerank", sidecar, "/rerank", weaviate, pid=sidecar_pid),
        Route("sidecar /v1/rerank", sidecar, "/v1/rerank", cohere(MODEL), pid=sidecar_pid),
        Route(
            "LiteLLM /rerank",
            litellm,
            "/rerank",
            cohere(LITELLM_MODEL),
            {"Authorization": f"Bearer {key}"},
            litellm_pid,
        ),
    ]


async def call(client: LeanClient, route: Route, documents: list[str]) -> None:
    await client.post(route.path, orjson.dumps(route.body(fresh_query(), documents)))


async def added_latency(
    all_routes: list[Route], pairs: int
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Each route's percentiles, and its latency per request (ms), in rounds."""
    documents = [passage() for _ in range(100)]
    times: dict[str, list[float]] = {route.name: [] for route in all_routes}
    clients = {route.name: route.client() for route in all_routes}
    for route in all_routes:  # warm every connection first
        await call(clients[route.name], route, documents)
    for _ in range(pairs):
        for route in all_routes:
            start = time.perf_counter()
            await call(clients[route.name], route, documents)
            times[route.name].append((time.perf_counter() - start) * 1000)
    direct = times["direct"]
    rows = {
        name: {
            "p50_ms": statistics.median(values),
            "added_p50_ms": statistics.median(values) - statistics.median(direct),
            "added_p99_ms": percentile(values, 0.99) - percentile(direct, 0.99),
        }
        for name, values in times.items()
    }
    return rows, times


async def throughput(route: Route, concurrency: int, seconds: float) -> dict[str, float]:
    documents = [passage() for _ in range(100)]
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        client = route.client()
        while time.perf_counter() < stop_at:
            await call(client, route, documents)
            done += 1

    cpu_before = cpu_seconds(route.pid) if route.pid else 0.0
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(route.pid) - cpu_before if route.pid else float("nan")
    return {"requests_per_s": done / elapsed, "cpu_ms_per_request": cpu / done * 1000}


async def measure(
    all_routes: list[Route], pairs: int, seconds: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The rows, and each route's latency per request (ms), in rounds."""
    try:
        latency, times = await added_latency(all_routes, pairs)
        rates: dict[str, dict[str, float]] = {}
        for concurrency in (16, 64):
            for route in all_routes:
                if route.name != "sidecar /v1/rerank":
                    await asyncio.sleep(1)  # what the last row left queued is done by now
                    row = await throughput(route, concurrency, seconds)
                    rates[f"{route.name} c={concurrency}"] = row
    finally:
        for route in all_routes:
            route.close()
    return {"latency": latency, "throughput": rates}, times


def report(results: dict[str, Any]) -> str:
    latency, rates = results["latency"], results["throughput"]
    lines = ["| route | p50 | added p50 | added p99 |", "|---|---|---|---|"]
    for name, row in latency.items():
        lines.append(
            f"| {name} | {row['p50_ms']:.2f} ms | {row['added_p50_ms']:+.2f} ms"
            f" | {row['added_p99_ms']:+.2f} ms |"
        )
    lines += ["", "| route | requests/s | share of direct | CPU/request |", "|---|---|---|---|"]
    for name, row in rates.items():
        direct = rates[f"direct c={name.rsplit('=', 1)[1]}"]["requests_per_s"]
        cpu = row["cpu_ms_per_request"]
        lines.append(
            f"| {name} | {row['requests_per_s']:.0f} | {row['requests_per_s'] / direct:.0%}"
            f" | {'n/a' if cpu != cpu else f'{cpu:.2f} ms'} |"
        )
    ours, theirs = latency["sidecar /rerank"], latency["LiteLLM /rerank"]

    def rate_ratio(concurrency: int) -> str:
        litellm = rates[f"LiteLLM /rerank c={concurrency}"]["requests_per_s"]
        sidecar = rates[f"sidecar /rerank c={concurrency}"]["requests_per_s"]
        return f"c={concurrency} {litellm / sidecar:.2f} x"

    def added_ratio(key: str) -> str:
        # A percentile of the sidecar at or below direct's (its own tail lighter in this run)
        # adds nothing to divide by.
        if ours[key] <= 0:
            return "n/a (the sidecar's at or below direct's)"
        return f"{theirs[key] / ours[key]:.1f} x"

    lines += [
        "",
        f"LiteLLM / sidecar: added p50 {added_ratio('added_p50_ms')}, added p99 "
        f"{added_ratio('added_p99_ms')}; throughput "
        + ", ".join(rate_ratio(concurrency) for concurrency in (16, 64)),
    ]
    return "\n".join(lines)


async def main_async(
    litellm: str, pairs: int, seconds: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    env = clean_environment()
    with running(["emulate-nim", "--port", "0"], env, EMULATOR_READY) as (_, emulator):
        emulator_url = f"http://127.0.0.1:{emulator[1]}"
        sidecar_env = {**env, "RERANKER_BASE_URL": emulator_url}
        with (
            running(SERVE, sidecar_env, SIDECAR_READY) as (sidecar_process, sidecar),
            litellm_proxy(litellm, emulator_url) as (litellm_pid, litellm_port, key),
        ):
            all_routes = routes(
                emulator_url,
                f"http://127.0.0.1:{sidecar[1]}",
                f"http://127.0.0.1:{litellm_port}",
                key,
                (sidecar_process.pid, litellm_pid),
            )
            return await measure(all_routes, pairs, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description="The sidecar beside LiteLLM's proxy.")
    parser.add_argument("--litellm", required=True, help="the litellm command (proxy extra)")
    parser.add_argument("--pairs", type=int, default=300, help="requests per route, in turn")
    parser.add_argument("--seconds", type=float, default=8, help="per throughput row")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to draw the PNG")
    args = parser.parse_args()
    litellm = os.path.abspath(args.litellm)  # the proxy runs in a folder of its own
    if not re.search(r"litellm$", litellm) or not os.access(litellm, os.X_OK):
        parser.error(f"--litellm: not an executable litellm command: {args.litellm}")
    started = time.perf_counter()
    results, times = asyncio.run(main_async(litellm, args.pairs, args.seconds))
    draw(results, times, args.plot)
    publish(results, report, args.output, started)
    print(f"drawn in {args.plot}")
    return 0


def draw(results: dict[str, Any], times: dict[str, list[float]], path: Path) -> None:
    """Each proxy's added latency per request (its call minus the direct call of the same
    round), every route's latency, and the throughput by concurrency."""
    direct = times["direct"]
    added = {
        name: [value - base for value, base in zip(values, direct, strict=True)]
        for name, values in times.items()
        if name != "direct"
    }
    rates: dict[str, dict[str, float]] = {}
    for name, row in results["throughput"].items():
        route, concurrency = name.rsplit(" ", 1)
        rates.setdefault(concurrency, {})[route] = row["requests_per_s"]
    plot_peers(added, times, rates, path)


if __name__ == "__main__":
    raise SystemExit(main())
