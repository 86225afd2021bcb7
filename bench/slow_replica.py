"""One slow replica: a sidecar in front of two tier-1 emulators (RERANKER_ENDPOINTS_FILE), one
of which delays a random 5 % of its calls by 100 ms, measured without hedging and with
RERANKER_HEDGE_PERCENTILE=95.

Requests go one at a time, so the sidecar's router takes the two endpoints in turn: without
hedging about 2.5 % of requests wait 100 ms more; with it, a call still unanswered after the
95th percentile of its endpoint's recent latencies is sent to the other endpoint as well,
within the hedge budget (RERANKER_HEDGE_BUDGET, 10 % of calls). The percentile leaves room in
the budget: at the 90th, the slowest tenth of ordinary calls alone would spend all of it
before the late ones come. Hedging needs 20 latency
samples per endpoint first: a warm-up sends them. The extra calls are the calls the sidecar
made to both endpoints (its ``reranker_endpoint_calls_total``) minus the requests sent, warm-up
included, as the budget counts them.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

import httpx
import orjson

from bench.load import LeanClient
from bench.measures import fresh_query, metrics_of, passage, percentile, summed, timed
from bench.processes import (
    EMULATOR_READY,
    SERVE,
    SIDECAR_READY,
    Command,
    Started,
    free_ports,
)

TAIL_SHARE = 0.05
TAIL_MS = 100
HEDGE_PERCENTILE = 95
HEDGE_BUDGET = 0.1  # RERANKER_HEDGE_BUDGET's default
PASSAGES = 20
WARM_UP = 50  # requests: 25 per endpoint, past the 20 samples hedging waits for


class SlowReplica:
    """The row's processes (``commands``, for ``running_together``: two emulators, a sidecar
    without hedging and one with it, all started at once) and, once they run, its measure."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        ports = free_ports(2)
        table = folder / "endpoints.toml"
        table.write_text(
            "".join(
                f'[[endpoints]]\nurl = "http://127.0.0.1:{port}"\ntier = 1\nname = "{name}"\n\n'
                for name, port in zip(("steady", "slow"), ports, strict=True)
            )
        )
        table_env = {**env, "RERANKER_ENDPOINTS_FILE": str(table)}
        hedging = {"RERANKER_HEDGE_PERCENTILE": str(HEDGE_PERCENTILE)}
        tail = ["--tail-share", str(TAIL_SHARE), "--tail-ms", str(TAIL_MS)]
        self.commands: list[Command] = [
            (["emulate-nim", "--port", str(ports[0])], env, EMULATOR_READY),
            (["emulate-nim", "--port", str(ports[1]), *tail], env, EMULATOR_READY),
            (SERVE, table_env, SIDECAR_READY),
            (SERVE, {**table_env, **hedging}, SIDECAR_READY),
        ]

    async def measure(self, started: list[Started], quick: bool) -> dict[str, float]:
        """p50, p99, extra calls and hedges, ``unhedged_*`` and ``hedged_*``; each sidecar
        measured alone."""
        results: dict[str, float] = {}
        for name, (_, sidecar) in (("unhedged", started[2]), ("hedged", started[3])):
            row = await _requests(f"http://127.0.0.1:{sidecar[1]}", 60 if quick else 400)
            results.update({f"{name}_{key}": value for key, value in row.items()})
        return results


async def _requests(sidecar_url: str, requests: int) -> dict[str, float]:
    documents = [passage() for _ in range(PASSAGES)]
    client = LeanClient(sidecar_url)

    async def request() -> None:
        await client.post("/rerank", orjson.dumps({"query": fresh_query(), "documents": documents}))

    with contextlib.closing(client):
        for _ in range(WARM_UP):
            await request()
        times = [await timed(request) for _ in range(requests)]
    async with httpx.AsyncClient(timeout=60) as http:
        samples = await metrics_of(http, sidecar_url)
    extra = summed(samples, "reranker_endpoint_calls_total") - (WARM_UP + requests)
    return {
        "requests": WARM_UP + requests,
        "measured": requests,
        "p50_ms": statistics.median(times),
        "p99_ms": percentile(times, 0.99),
        # p99 hangs on a handful of requests: how many waited out the tail says more.
        "late_requests": sum(1 for ms in times if ms >= TAIL_MS),
        "extra_calls": extra,
        "extra_share": extra / (WARM_UP + requests),
        "hedges_won": summed(samples, "reranker_endpoint_hedges_won_total"),
        "hedges_refused": samples.get('reranker_hedges_total{outcome="refused"}', 0.0),
        # Whether the sidecar hedges at all: its hedge budget is in its metrics only then.
        "hedging": float('reranker_hedges_total{outcome="allowed"}' in samples),
    }
