"""One process, one event loop: the gRPC server and the HTTP server over one core."""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reranker_nvidia.asgi_server import AsgiServer
from reranker_nvidia.grpc_service import RerankerService
from reranker_nvidia.http_app import create_http_app
from reranker_nvidia.meta import describe
from reranker_nvidia.ranker import Ranker
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc

log = logging.getLogger("reranker_nvidia.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RerankerService"].full_name


class SidecarServer:
    """Starts and stops both servers; ports may be 0 (chosen at ``start``)."""

    def __init__(self, settings: Settings, ranker: Ranker | None = None) -> None:
        self.settings = settings
        self.ranker = ranker if ranker is not None else Ranker.from_settings(settings)
        self._ready = False
        self._http = AsgiServer(
            create_http_app(self.ranker, lambda: self._ready),
            settings.host,
            settings.http_port,
            log_level=settings.log_level,
        )
        self._grpc: grpc_aio.Server | None = None
        # grpc_health-stubs predate the public `health.aio` module.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.grpc_port = 0

    @property
    def http_port(self) -> int:
        return self._http.port

    async def start(self) -> None:
        # A grpc.aio server belongs to the loop it is created in: create it in the serving loop.
        self._grpc = grpc_server = grpc_aio.server(
            options=[("grpc.max_receive_message_length", self.settings.max_body_bytes)]
        )
        pb_grpc.add_RerankerServiceServicer_to_server(
            RerankerService(self.ranker, describe(self.settings)), grpc_server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
        )
        self.grpc_port = grpc_server.add_insecure_port(
            _grpc_address(self.settings.host, self.settings.grpc_port)
        )
        await grpc_server.start()
        await self._http.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        log.info(
            "serving HTTP on %s:%d and gRPC on %s:%d",
            self.settings.host,
            self.http_port,
            self.settings.host,
            self.grpc_port,
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        self._ready = False
        await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            await asyncio.gather(self._grpc.stop(grace_s), self._http.stop())
        await self.ranker.aclose()

    async def serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        log.info("stopping")
        await self.stop()


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
