"""Where a unary gRPC ``Rank`` of 100 passages spends CPU on the server, and which server
(grpc.aio or the thread-pool one) spends less.

A trivial ``Rank`` (no NIM: each passage gets a made-up score, and the answer is built as the
service builds it) is served in a process of its own, as:

- ``aio``: grpc.aio, the handler returning the answer;
- ``aio+metadata``: grpc.aio, the handler first sending its initial metadata (the request id),
  as ``rpc/service.py`` does;
- ``aio+bounds``: grpc.aio with ``CallBounds`` (server/grpc_calls.py), as the sidecar;
- ``aio-empty``: grpc.aio answering a prebuilt response (gRPC's own cost, and protobuf's);
- ``sync``: ``grpc.server(ThreadPoolExecutor(16))``, the same handler;

and loaded from this process with 16 calls at once, through the asyncio client and through
the blocking one (16 threads). Each row: server CPU µs per call (from /proc/<pid>/stat),
client CPU µs per call, calls per second. Then what is ours, timed alone: reading the
documents and building the answer, and protobuf's decoding and encoding of both messages.

    python -m bench.grpc_compare [--calls 20000] [--concurrency 16] [--runs 3] [--servers aio,sync]

GRPC_COMPARE_PASSAGES=1 measures a one-passage call instead (gRPC's fixed cost per call).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc import aio as grpc_aio

from bench.processes import WORDS, stop
from reranker_nvidia.server.grpc_calls import CallBounds
from reranker_nvidia.server.grpc_limits import grpc_server_options
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc

SERVERS = ("aio", "aio+metadata", "aio+bounds", "aio-empty", "sync")
CLIENTS = ("aio", "sync")
PASSAGES = int(os.environ.get("GRPC_COMPARE_PASSAGES", "100"))
MAX_IN_FLIGHT = 256
RANK = "/reranker_nvidia.v1.RerankerService/Rank"


def rank_request() -> pb.RankRequest:
    """A query and 100 passages of about 40 words each."""
    passages = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) for i in range(PASSAGES)]
    return pb.RankRequest(query="which passage is about hybrid search", documents=passages)


def rank_response(request: pb.RankRequest) -> pb.RankResponse:
    """The answer as ``RerankerService._rank`` builds it from a ranking: every document's
    index and score, best first, with the model and usage."""
    documents = list(request.documents)
    scores = [float(len(document) % 17) for document in documents]
    order = sorted(range(len(documents)), key=scores.__getitem__, reverse=True)
    return pb.RankResponse(
        results=[pb.RankedDocument(index=index, score=scores[index]) for index in order],
        model="nvidia/llama-3.2-nv-rerankqa-1b-v2",
        usage=pb.Usage(prompt_tokens=4000, total_tokens=4000),
    )


def _options() -> list[tuple[str, int | str]]:
    settings = Settings(host="127.0.0.1", http_port=0, grpc_port=0)
    return grpc_server_options(settings, max_concurrent_rpcs=MAX_IN_FLIGHT + 64)


def _handlers(behaviour: Callable[..., Any]) -> grpc.GenericRpcHandler[Any, Any]:
    handler = grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=pb.RankRequest.FromString,
        response_serializer=pb.RankResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "reranker_nvidia.v1.RerankerService", {"Rank": handler}
    )


async def _serve_aio(kind: str) -> None:
    prebuilt = rank_response(rank_request())

    async def rank(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        return rank_response(request)

    async def rank_with_metadata(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        await context.send_initial_metadata((("x-request-id", "0123456789abcdef"),))
        return rank_response(request)

    async def empty(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        return prebuilt

    behaviour = {"aio-empty": empty, "aio+metadata": rank_with_metadata}.get(kind, rank)
    server = grpc_aio.server(
        interceptors=[CallBounds(30, MAX_IN_FLIGHT + 64)] if kind == "aio+bounds" else None,
        maximum_concurrent_rpcs=MAX_IN_FLIGHT + 64,
        options=_options(),
    )
    server.add_generic_rpc_handlers((_handlers(behaviour),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


def _serve_sync() -> None:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        maximum_concurrent_rpcs=MAX_IN_FLIGHT + 64,
        options=_options(),
    )
    server.add_generic_rpc_handlers((_handlers(lambda request, context: rank_response(request)),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


def _cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the server process so far: all of it, and its main thread's (the
    event loop's, for grpc.aio; gRPC's core polls and frames on threads of its own)."""
    return _cpu_s(Path(f"/proc/{pid}/stat")), _cpu_s(Path(f"/proc/{pid}/task/{pid}/stat"))


async def _load_aio(target: str, calls: int, concurrency: int) -> None:
    request = rank_request()
    async with grpc_aio.insecure_channel(target) as channel:
        rank = pb_grpc.RerankerServiceStub(channel).Rank
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await rank(request, timeout=30)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _load_sync(target: str, calls: int, concurrency: int) -> None:
    request = rank_request()
    with grpc.insecure_channel(target) as channel:
        rank = pb_grpc.RerankerServiceStub(channel).Rank
        lock = threading.Lock()
        left = [calls]

        def worker() -> None:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                rank(request, timeout=30)

        workers = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()


def _load(client: str, target: str, calls: int, concurrency: int) -> None:
    if client == "aio":
        asyncio.run(_load_aio(target, calls, concurrency))
    else:
        _load_sync(target, calls, concurrency)


def measure(server: str, client: str, calls: int, concurrency: int) -> dict[str, float]:
    """Server CPU µs per call (all threads, and the main thread), client CPU µs per call and
    calls per second, after a warm-up."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_compare", "--serve", server],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"the {server} server did not start")
        target = f"127.0.0.1:{line.split()[1]}"
        _load(client, target, max(500, calls // 10), concurrency)
        (server_before, main_before), client_before = _server_cpu_s(child.pid), time.process_time()
        started = time.perf_counter()
        _load(client, target, calls, concurrency)
        seconds = time.perf_counter() - started
        server_after, main_after = _server_cpu_s(child.pid)
        return {
            "server_us": (server_after - server_before) / calls * 1e6,
            "main_thread_us": (main_after - main_before) / calls * 1e6,
            "client_us": (time.process_time() - client_before) / calls * 1e6,
            "calls_per_s": calls / seconds,
        }
    finally:
        stop(child)


def ours() -> dict[str, float]:
    """µs per call of the parts that are ours, and of protobuf's coding, each alone."""
    request = rank_request()
    response = rank_response(request)
    request_bytes = request.SerializeToString()
    response_bytes = response.SerializeToString()

    def per_call(work: Callable[[], object]) -> float:
        runs = 2000
        return min(timeit.repeat(work, number=runs, repeat=5)) / runs * 1e6

    return {
        "build the answer (list(documents), scores, 100 RankedDocument)": per_call(
            lambda: rank_response(request)
        ),
        "decode the request (protobuf)": per_call(lambda: pb.RankRequest.FromString(request_bytes)),
        "encode the answer (protobuf)": per_call(response.SerializeToString),
        "encode the request (client, protobuf)": per_call(request.SerializeToString),
        "decode the answer (client, protobuf)": per_call(
            lambda: pb.RankResponse.FromString(response_bytes)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3, help="the median of this many runs")
    parser.add_argument("--servers", default=",".join(SERVERS), help="which, comma-separated")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "sync":
        _serve_sync()
        return
    if args.serve is not None:
        asyncio.run(_serve_aio(args.serve))
        return
    print(
        f"Rank, {PASSAGES} passages ({len(rank_request().SerializeToString())} bytes), "
        f"{args.calls} calls, {args.concurrency} at once; median of {args.runs} runs\n"
    )
    header = ("server", "client", "server µs/call", "main thread", "client µs/call", "calls/s")
    print("{:14} {:7} {:>15} {:>12} {:>15} {:>9}".format(*header))
    for server in args.servers.split(","):
        for client in CLIENTS:
            rows = [measure(server, client, args.calls, args.concurrency) for _ in range(args.runs)]
            server_us, main_us, client_us, rate = (
                statistics.median(row[key] for row in rows)
                for key in ("server_us", "main_thread_us", "client_us", "calls_per_s")
            )
            print(
                f"{server:14} {client:7} {server_us:15.0f} {main_us:12.0f} {client_us:15.0f}"
                f" {rate:9.0f}"
            )
    print("\nOurs and protobuf's, alone (µs per call):")
    for name, micros in ours().items():
        print(f"  {micros:7.1f}  {name}")


if __name__ == "__main__":
    main()
