"""How long one large gRPC ``Rerank`` holds the sidecar's event loop.

A ticker on the serving loop records the longest gap between its 1 ms ticks while a message
is handled: the stall every other request on the loop would see. Runs the sidecar in-process
against the NIM emulator on loopback.

    python -m bench.loop_stall
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from google.protobuf import struct_pb2

from reranker_nvidia.emulator import EmulatorState, create_emulator_app
from reranker_nvidia.server.asgi import AsgiServer
from reranker_nvidia.server.sidecar import SidecarServer
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc


def hit(index: int, text: str) -> pb.Hit:
    properties = struct_pb2.Struct()
    properties.update({"content": text, "other": "x" * 10})
    return pb.Hit(id=str(index), properties=properties)


CASES: dict[str, Callable[[], pb.RerankRequest]] = {
    "10,000 hits x 1.5 KB, 1 property": lambda: pb.RerankRequest(
        query="which way",
        hits=[hit(i, "way " * 375) for i in range(10_000)],
        properties=["content"],
    ),
    "10,000 empty hits x 16 properties": lambda: pb.RerankRequest(
        query="which way",
        hits=[pb.Hit(id=str(i)) for i in range(10_000)],
        properties=[f"p{i}" for i in range(16)],
    ),
}


def main() -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    emulator = AsgiServer(create_emulator_app(EmulatorState()), "127.0.0.1", 0)
    on_loop(emulator.start())
    settings = Settings(
        base_url=f"http://127.0.0.1:{emulator.port}",
        host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        log_level="WARNING",
        max_text_bytes=64 * 1024 * 1024,
    )
    sidecar = SidecarServer(settings)
    on_loop(sidecar.start())
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    asyncio.run_coroutine_threadsafe(ticker(), loop)
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}", options=options) as channel:
        stub = pb_grpc.RerankerServiceStub(channel)
        for name, build in CASES.items():
            request = build()
            size_mib = request.ByteSize() / 2**20
            time.sleep(0.2)
            gaps.clear()
            started = time.perf_counter()
            stub.Rerank(request, timeout=120)
            elapsed = time.perf_counter() - started
            stall = max(gaps) * 1000
            print(
                f"{name}: {size_mib:.1f} MiB, answered in {elapsed * 1000:.0f} ms, "
                f"longest loop stall {stall:.1f} ms ({stall / max(size_mib, 1):.1f} ms per MiB)"
            )
    on_loop(sidecar.stop(grace_s=1))
    on_loop(emulator.stop())


if __name__ == "__main__":
    main()
