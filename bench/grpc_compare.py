"""Where a unary gRPC ``Rank`` of 100 passages spends CPU on the server, and which way of
serving it spends less.

A trivial ``Rank`` (no NIM: each passage gets a made-up score, and the answer is built as the
service builds it) is served in a process of its own, on uvloop as the sidecar is, as:

- ``aio``: grpc.aio, the handler returning the answer;
- ``aio+metadata``: grpc.aio, the handler first sending initial metadata (a request id) on its
  own, as ``rpc/service.py`` does;
- ``aio+trailing``: grpc.aio, the request id set as trailing metadata instead: it would go
  out with the status (what moving it there would save);
- ``aio+bounds``: grpc.aio with ``CallBounds`` (server/grpc_calls.py), as the sidecar;
- ``aio-empty``: grpc.aio answering a prebuilt response (gRPC's own cost, and protobuf's);
- ``sync``: ``grpc.server(ThreadPoolExecutor(16))``, the same handler on its threads;
- ``sync+loop``: the thread-pool server handing each call to an asyncio loop on the main
  thread and waiting for it, as the sidecar's asyncio core would need;
- ``aio-thread``: grpc.aio on a thread and loop of its own, handing each call to the main
  loop, where the core would run;
- ``http``: for scale, not gRPC: the project's HTTP/1.1 engine (``reranker_nvidia.wire``)
  with the same request as JSON, loaded by the benchmark's lean client (``bench/load.py``);

and loaded from this process with 16 calls at once, through the asyncio client and through
the blocking one (16 threads). Each row: server CPU µs per call (from /proc/<pid>/stat), of
it the main thread's, client CPU µs per call, calls per second, and the median round trip of
one call at a time. Then what is ours, timed alone: reading the documents and building the
answer, and protobuf's decoding and encoding of both messages.

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
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import orjson
from grpc import aio as grpc_aio

from bench.load import LeanClient
from bench.processes import WORDS, stop
from reranker_nvidia.server.grpc_calls import CallBounds
from reranker_nvidia.server.grpc_limits import grpc_server_options
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc
from reranker_nvidia.wire import HttpServer, Request, Response, ServerLimits

SERVERS = (
    "aio",
    "aio+metadata",
    "aio+trailing",
    "aio+bounds",
    "aio-empty",
    "sync",
    "sync+loop",
    "aio-thread",
    "http",
)
CLIENTS = ("aio", "sync")
PASSAGES = int(os.environ.get("GRPC_COMPARE_PASSAGES", "100"))
MAX_IN_FLIGHT = 256
RANK = "/reranker_nvidia.v1.RerankerService/Rank"
REQUEST_ID = (("x-request-id", "0123456789abcdef"),)


def rank_request() -> pb.RankRequest:
    """A query and 100 passages of about 40 words each."""
    passages = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(40)) for i in range(PASSAGES)]
    return pb.RankRequest(query="which passage is about hybrid search", documents=passages)


def _made_up_ranking(documents: list[str]) -> tuple[list[int], list[float]]:
    scores = [float(len(document) % 17) for document in documents]
    return sorted(range(len(documents)), key=scores.__getitem__, reverse=True), scores


def rank_response(request: pb.RankRequest) -> pb.RankResponse:
    """The answer as ``RerankerService._rank`` builds it from a ranking: every document's
    index and score, best first, with the model and usage."""
    order, scores = _made_up_ranking(list(request.documents))
    response = pb.RankResponse(
        model="nvidia/llama-3.2-nv-rerankqa-1b-v2",
        usage=pb.Usage(prompt_tokens=4000, total_tokens=4000),
    )
    add = response.results.add
    for index in order:
        add(index=index, score=scores[index])
    return response


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


def _run(main: Coroutine[Any, Any, None]) -> None:
    """``main`` on uvloop, as the sidecar runs, where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is there on Linux and macOS
        asyncio.run(main)
    else:
        uvloop.run(main)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve_aio(kind: str) -> None:
    prebuilt = rank_response(rank_request())

    async def rank(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        return rank_response(request)

    async def rank_with_metadata(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        await context.send_initial_metadata(REQUEST_ID)
        return rank_response(request)

    async def rank_with_trailing(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        context.set_trailing_metadata(REQUEST_ID)
        return rank_response(request)

    async def empty(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        return prebuilt

    behaviours = {
        "aio-empty": empty,
        "aio+metadata": rank_with_metadata,
        "aio+trailing": rank_with_trailing,
    }
    server = grpc_aio.server(
        interceptors=[CallBounds(30, MAX_IN_FLIGHT + 64)] if kind == "aio+bounds" else None,
        maximum_concurrent_rpcs=MAX_IN_FLIGHT + 64,
        options=_options(),
    )
    server.add_generic_rpc_handlers((_handlers(behaviours.get(kind, rank)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


def _serve_sync(handed_to_loop: bool) -> None:
    """The thread-pool server; with ``handed_to_loop``, each call's work runs on an asyncio
    loop on the main thread while the pool's thread waits for it."""
    loop = _new_loop()

    async def work(request: pb.RankRequest) -> pb.RankResponse:
        return rank_response(request)

    def on_loop(request: pb.RankRequest, context: object) -> pb.RankResponse:
        return asyncio.run_coroutine_threadsafe(work(request), loop).result()

    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        maximum_concurrent_rpcs=MAX_IN_FLIGHT + 64,
        options=_options(),
    )
    handler = on_loop if handed_to_loop else (lambda request, context: rank_response(request))
    server.add_generic_rpc_handlers((_handlers(handler),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    if handed_to_loop:
        loop.run_forever()
    else:
        server.wait_for_termination()


def _serve_aio_thread() -> None:
    """grpc.aio on a thread of its own; each call's work handed to the main thread's loop."""
    main_loop = _new_loop()

    async def work(request: pb.RankRequest) -> pb.RankResponse:
        return rank_response(request)

    async def handed_over(request: pb.RankRequest, context: Any) -> pb.RankResponse:
        future = asyncio.run_coroutine_threadsafe(work(request), main_loop)
        return await asyncio.wrap_future(future)

    async def serve() -> None:
        server = grpc_aio.server(maximum_concurrent_rpcs=MAX_IN_FLIGHT + 64, options=_options())
        server.add_generic_rpc_handlers((_handlers(handed_over),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"port {port}", flush=True)
        await server.wait_for_termination()

    threading.Thread(target=lambda: _run(serve()), daemon=True).start()
    main_loop.run_forever()


class _JsonRank:
    """The HTTP reference: the request's JSON decoded, the answer built and encoded."""

    async def handle(self, request: Request) -> Response:
        body = orjson.loads(request.body)
        order, scores = _made_up_ranking(body["documents"])
        answer = {"results": [{"index": index, "score": scores[index]} for index in order]}
        return Response(200, [(b"content-type", b"application/json")], orjson.dumps(answer))


async def _serve_http() -> None:
    limits = ServerLimits(
        header_timeout_s=30,
        keep_alive_timeout_s=30,
        body_timeout_s=30,
        max_connections=1024,
        max_header_bytes=32 * 1024,
        max_url_bytes=8 * 1024,
        max_body_bytes=64 * 1024 * 1024,
        max_buffered_body_bytes=256 * 1024 * 1024,
    )
    server = HttpServer(_JsonRank(), "127.0.0.1", 0, limits=limits)
    await server.start()
    print(f"port {server.port}", flush=True)
    await asyncio.Event().wait()


def serve(kind: str) -> None:
    if kind in ("sync", "sync+loop"):
        _serve_sync(handed_to_loop=kind == "sync+loop")
    elif kind == "aio-thread":
        _serve_aio_thread()
    elif kind == "http":
        _run(_serve_http())
    else:
        _run(_serve_aio(kind))


def _cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the server process so far: all of it, and its main thread's (the
    event loop's, for grpc.aio; gRPC's core polls and frames on threads of its own)."""
    return _cpu_s(Path(f"/proc/{pid}/stat")), _cpu_s(Path(f"/proc/{pid}/task/{pid}/stat"))


async def _load_async(
    call: Callable[[], Awaitable[object]], calls: int, concurrency: int
) -> list[float]:
    """``calls`` calls, ``concurrency`` at once; each one's round trip in µs."""
    left = calls
    took: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            await call()
            took.append((time.perf_counter() - started) * 1e6)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return took


async def _load_aio(target: str, calls: int, concurrency: int) -> list[float]:
    request = rank_request()
    async with grpc_aio.insecure_channel(target) as channel:
        rank = pb_grpc.RerankerServiceStub(channel).Rank
        return await _load_async(lambda: rank(request, timeout=30), calls, concurrency)


async def _load_lean(origin: str, calls: int, concurrency: int) -> list[float]:
    request = rank_request()
    body = orjson.dumps({"query": request.query, "documents": list(request.documents)})
    client = LeanClient(origin)
    try:
        return await _load_async(lambda: client.post("/rank", body), calls, concurrency)
    finally:
        client.close()


def _load_sync(target: str, calls: int, concurrency: int) -> list[float]:
    request = rank_request()
    took: list[float] = []
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
                started = time.perf_counter()
                rank(request, timeout=30)
                took.append((time.perf_counter() - started) * 1e6)

        workers = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    return took


def _load(client: str, port: str, calls: int, concurrency: int) -> list[float]:
    if client == "lean":
        return asyncio.run(_load_lean(f"http://127.0.0.1:{port}", calls, concurrency))
    if client == "aio":
        return asyncio.run(_load_aio(f"127.0.0.1:{port}", calls, concurrency))
    return _load_sync(f"127.0.0.1:{port}", calls, concurrency)


def measure(server: str, client: str, calls: int, concurrency: int) -> dict[str, float]:
    """Server CPU µs per call (all threads, and the main thread), client CPU µs per call and
    calls per second, after a warm-up; then the median round trip of one call at a time."""
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
        port = line.split()[1]
        _load(client, port, max(500, calls // 10), concurrency)
        (server_before, main_before), client_before = _server_cpu_s(child.pid), time.process_time()
        started = time.perf_counter()
        _load(client, port, calls, concurrency)
        seconds = time.perf_counter() - started
        server_after, main_after = _server_cpu_s(child.pid)
        client_us = (time.process_time() - client_before) / calls * 1e6
        one_at_a_time = _load(client, port, max(500, calls // 10), 1)
        return {
            "server_us": (server_after - server_before) / calls * 1e6,
            "main_thread_us": (main_after - main_before) / calls * 1e6,
            "client_us": client_us,
            "calls_per_s": calls / seconds,
            "p50_us": statistics.median(one_at_a_time),
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
        "build the answer (list(documents), scores, 100 ranked documents)": per_call(
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
    if args.serve is not None:
        serve(args.serve)
        return
    print(
        f"Rank, {PASSAGES} passages ({len(rank_request().SerializeToString())} bytes), "
        f"{args.calls} calls, {args.concurrency} at once; median of {args.runs} runs\n"
    )
    header = ("server", "client", "server µs/call", "main thread", "client µs/call", "calls/s")
    print("{:14} {:7} {:>15} {:>12} {:>15} {:>9} {:>11}".format(*header, "p50 µs, c=1"))
    for server in args.servers.split(","):
        for client in ("lean",) if server == "http" else CLIENTS:
            rows = [measure(server, client, args.calls, args.concurrency) for _ in range(args.runs)]
            server_us, main_us, client_us, rate, p50 = (
                statistics.median(row[key] for row in rows)
                for key in ("server_us", "main_thread_us", "client_us", "calls_per_s", "p50_us")
            )
            print(
                f"{server:14} {client:7} {server_us:15.0f} {main_us:12.0f} {client_us:15.0f}"
                f" {rate:9.0f} {p50:11.0f}"
            )
    print("\nOurs and protobuf's, alone (µs per call):")
    for name, micros in ours().items():
        print(f"  {micros:7.1f}  {name}")


if __name__ == "__main__":
    main()
