"""Fair share under a flood: a small request's latency alone, then while clients loop requests
of 10,000 documents (20 NIM calls each) through the same sidecar.

The sidecar keeps RERANKER_UPSTREAM_CONCURRENCY (16) NIM calls in flight; the emulator behind
it answers after 300 ms, so the flood queues in the sidecar, not on the emulator's CPU (a call
of 512 passages costs the emulator ~7 ms of CPU: after 100 ms, 16 of them in flight would keep
more than a core busy). A first-come queue would put a small request behind every call the
flood queued (about 6 x 20 / 16 x 300 ms); fair sharing lets it in at the next free slot.

The flood's calls still reach the emulator in bursts, and its one event loop parses and scores
a burst before it answers the small call that came with it; so the same small request is also
sent straight to the emulator during the flood: what the emulator alone adds under it.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import orjson

from bench.load import LeanClient
from bench.measures import MODEL, fresh_query, metrics_of, short_passage, summed, timed
from bench.processes import (
    EMULATOR_READY,
    SERVE,
    SIDECAR_READY,
    Command,
    Started,
    free_port,
)

EMULATOR_DELAY_MS = 300
FLOODERS = 6
FLOOD_DOCUMENTS = 10_000
SMALL_DOCUMENTS = 4
SLOTS = 16  # RERANKER_UPSTREAM_CONCURRENCY's default


class FairShare:
    """The row's processes (``commands``, for ``running_together``: the emulator and a sidecar
    in front of it, started at once) and, once they run, its measure."""

    def __init__(self, env: dict[str, str]) -> None:
        port = free_port()
        self.emulator_url = f"http://127.0.0.1:{port}"
        emulate = ["emulate-nim", "--port", str(port), "--delay-ms", str(EMULATOR_DELAY_MS)]
        sidecar_env = {**env, "RERANKER_BASE_URL": self.emulator_url}
        self.commands: list[Command] = [
            (emulate, env, EMULATOR_READY),
            (SERVE, sidecar_env, SIDECAR_READY),
        ]

    async def measure(self, started: list[Started], quick: bool) -> dict[str, float]:
        """p50 of a 4-document ``/rerank`` request unloaded and under the flood, the ratio,
        the same request sent directly to the emulator under the flood, and the flood's
        requests and NIM calls meanwhile."""
        flood = Flood(f"http://127.0.0.1:{started[1][1][1]}", self.emulator_url)
        return await flood.measure(*((2, 2) if quick else (6, 6)))


class Flood:
    def __init__(self, sidecar_url: str, emulator_url: str) -> None:
        self.sidecar_url = sidecar_url
        self.sidecar = LeanClient(sidecar_url)
        self.emulator = LeanClient(emulator_url)
        self.documents = [short_passage() for _ in range(SMALL_DOCUMENTS)]
        self.flood_documents = [short_passage() for _ in range(FLOOD_DOCUMENTS)]
        self.flood_done = 0

    async def small(self) -> None:
        body = {"query": fresh_query(), "documents": self.documents}
        await self.sidecar.post("/rerank", orjson.dumps(body))

    async def small_direct(self) -> None:
        passages = [{"text": text} for text in self.documents]
        body = {"model": MODEL, "query": {"text": fresh_query()}, "passages": passages}
        await self.emulator.post("/v1/ranking", orjson.dumps(body))

    async def flooder(self) -> None:
        client = LeanClient(self.sidecar_url)
        try:
            while True:
                body = {"query": fresh_query(), "documents": self.flood_documents}
                await client.post("/rerank", orjson.dumps(body))
                self.flood_done += 1
        finally:
            client.close()  # cancelled: the sidecar sees the caller leave and drops its calls

    async def measure(self, unloaded_requests: int, requests: int) -> dict[str, float]:
        async with httpx.AsyncClient(timeout=60) as http:
            try:
                # No warm-up: a connection costs microseconds against NIM's 300 ms.
                unloaded = [await timed(self.small) for _ in range(unloaded_requests)]
                flooders = [asyncio.create_task(self.flooder()) for _ in range(FLOODERS)]
                try:
                    await _until_every_slot_is_taken(http, self.sidecar_url)
                    before = await metrics_of(http, self.sidecar_url)
                    done_before = self.flood_done
                    loaded, direct = [], []
                    for _ in range(requests):
                        loaded.append(await timed(self.small))
                        direct.append(await timed(self.small_direct))
                    after = await metrics_of(http, self.sidecar_url)
                    flood_requests = self.flood_done - done_before
                finally:
                    for task in flooders:
                        task.cancel()
                    await asyncio.gather(*flooders, return_exceptions=True)
            finally:
                self.sidecar.close()
                self.emulator.close()
        calls = "reranker_upstream_calls_total"
        unloaded_p50, loaded_p50 = statistics.median(unloaded), statistics.median(loaded)
        return {
            "unloaded_p50_ms": unloaded_p50,
            "loaded_p50_ms": loaded_p50,
            "loaded_max_ms": max(loaded),
            "ratio": loaded_p50 / unloaded_p50,
            "direct_loaded_p50_ms": statistics.median(direct),
            "flood_requests": flood_requests,
            "upstream_calls": summed(after, calls) - summed(before, calls),
        }


async def _until_every_slot_is_taken(http: httpx.AsyncClient, sidecar_url: str) -> None:
    """Wait until the flood holds every NIM call slot (and so has calls queued behind them)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples = await metrics_of(http, sidecar_url)
        if summed(samples, "reranker_endpoint_outstanding") >= SLOTS:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the flood did not take the sidecar's {SLOTS} NIM call slots in 30 s")
