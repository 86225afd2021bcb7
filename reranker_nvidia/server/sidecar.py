"""One process, one event loop: the gRPC server and the HTTP server over one core."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import grpc
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reranker_nvidia.rpc.auth import TokenInterceptor
from reranker_nvidia.rpc.service import RerankerService, add_to_server
from reranker_nvidia.server.assembly import Core, build_core
from reranker_nvidia.server.files import default_max_connections
from reranker_nvidia.server.grpc_calls import CallBounds
from reranker_nvidia.server.grpc_limits import grpc_connection_cap, grpc_server_options
from reranker_nvidia.server.meta import describe, endpoint_states, live_meta, served_models
from reranker_nvidia.server.startup import (
    StartupError,
    missing_key_warning,
    stop_signal,
    summary,
)
from reranker_nvidia.settings import Settings
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.web.app import create_http_app
from reranker_nvidia.wire import HttpServer, ServerLimits, body_charge

log = logging.getLogger("reranker_nvidia.server")

GRPC_HEADROOM = 64
# gRPC's own call limit, per place in CallBounds' pool (see grpc_calls.py).
GRPC_CORE_CALLS_PER_PLACE = 4
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RerankerService"].full_name


class SidecarServer:
    """Starts and stops both servers; ports may be 0 (chosen at ``start``)."""

    def __init__(self, settings: Settings, core: Core | None = None) -> None:
        """``core``: the parts to serve with (default: built from ``settings``)."""
        self.settings = settings
        self.core = core if core is not None else build_core(settings)
        self.meta = describe(settings)
        self._ready = False
        self._http = HttpServer(
            create_http_app(
                ranker=self.core.ranker,
                metrics=self.core.metrics,
                possible_joiner=self.core.coalescer.possible_joiner,
                is_ready=lambda: self._ready,
                describe=live_meta(self.meta, settings, self.core.router.endpoints),
                endpoint_states=lambda: endpoint_states(self.core.router.endpoints),
                models=served_models(settings),
                contract_truncate=settings.truncate or "END",
                auth_token=settings.auth_token.get_secret_value() if settings.auth_token else None,
            ),
            settings.host,
            settings.http_port,
            limits=ServerLimits(
                header_timeout_s=settings.header_timeout_s,
                keep_alive_timeout_s=settings.keep_alive_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                # What the open files leave once gRPC's own connection cap is taken out.
                max_connections=settings.max_connections
                or max(32, default_max_connections() - grpc_connection_cap()),
                max_header_bytes=settings.max_header_bytes,
                max_url_bytes=settings.max_url_bytes,
                max_body_bytes=settings.max_body_bytes,
                # Never below what one body of the largest size may hold, so that one fits.
                max_buffered_body_bytes=max(
                    settings.max_buffered_body_bytes, body_charge(settings.max_body_bytes)
                ),
            ),
            ssl_context=_tls_context(settings),
        )
        self._grpc: grpc_aio.Server | None = None
        # grpc_health-stubs predate the public `health.aio` module.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.grpc_port = 0

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def http_listener(self) -> socket.socket:
        return self._http.listener

    async def start(self) -> None:
        settings = self.settings
        address = _host_port(settings.host, settings.grpc_port)
        for port, kind, flag in (
            (settings.grpc_port, "gRPC", "--grpc-port / RERANKER_GRPC_PORT"),
            (settings.http_port, "HTTP", "--http-port / RERANKER_HTTP_PORT"),
        ):
            try:
                _check_port_free(settings.host, port)
            except OSError as error:
                raise StartupError(
                    f"cannot listen for {kind} on {_host_port(settings.host, port)}: "
                    f"{_reason(error)} ({flag}, --host / RERANKER_HOST)"
                ) from None
        # A grpc.aio server belongs to the loop it is created in: create it in the serving loop.
        token = settings.auth_token
        # Each unary call is bounded in time (its request, its answer) and in the call pool
        # (grpc_calls.py); the caller token is checked before any method runs.
        pool = settings.max_in_flight + GRPC_HEADROOM
        interceptors: list[grpc_aio.ServerInterceptor] = [  # type: ignore[type-arg]
            CallBounds(settings.body_timeout_s, pool)
        ]
        if token:
            interceptors.append(TokenInterceptor(token.get_secret_value()))
        self._grpc = grpc_server = grpc_aio.server(
            interceptors=interceptors,
            # gRPC's own limit, past which it answers RESOURCE_EXHAUSTED before any
            # interceptor: above the pool, so that CallBounds decides for unary calls and
            # this bounds streaming ones and the answers CallBounds stopped waiting for.
            maximum_concurrent_rpcs=GRPC_CORE_CALLS_PER_PLACE * pool,
            options=grpc_server_options(settings, max_concurrent_rpcs=pool),
        )
        service = RerankerService(
            ranker=self.core.ranker,
            admission=self.core.admission,
            metrics=self.core.metrics,
            possible_joiner=self.core.coalescer.possible_joiner,
            meta=self.meta,
        )
        add_to_server(service, grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
        )
        try:
            if settings.tls_cert is not None and settings.tls_key is not None:
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.grpc_port = grpc_server.add_secure_port(address, credentials)
            else:
                self.grpc_port = grpc_server.add_insecure_port(address)
        except RuntimeError:
            await grpc_server.stop(None)
            raise StartupError(
                f"cannot listen for gRPC on {address}: the port is taken or the address is "
                "not this machine's (--grpc-port / RERANKER_GRPC_PORT, --host / RERANKER_HOST)"
            ) from None
        await grpc_server.start()
        try:
            await self._http.start()
        except OSError as error:
            await grpc_server.stop(None)
            raise StartupError(
                f"cannot listen for HTTP on {settings.host}:{settings.http_port}: "
                f"{_reason(error)} (--http-port / RERANKER_HTTP_PORT, --host / RERANKER_HOST)"
            ) from None
        self.core.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        specs = [endpoint.spec for endpoint in self.core.router.endpoints]
        log.info(summary(settings, self.http_port, self.grpc_port, specs))
        warning = missing_key_warning(settings, specs)
        if warning is not None:
            log.warning(warning)
        store = self.core.store
        if store is not None and not await store.check():
            # The store's own outage warning has been logged; this says what it means now.
            log.warning(
                "shared store at %s is not reachable: starting with this replica's own cache "
                "and budget; it is asked again every second",
                store.where,
            )

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then stop: readiness turns 503 and health NOT_SERVING, new requests are
        refused with 503 / UNAVAILABLE, and requests in flight get up to ``grace_s``
        (default ``RERANKER_SHUTDOWN_GRACE_S``) to finish."""
        await self.drain(grace_s)
        await self.close()

    async def drain(self, grace_s: float | None = None) -> bool:
        """Stop taking requests and wait up to ``grace_s`` for those in flight; True once
        none is left."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._ready = False
        self.core.admission.begin_draining()
        await self._health.enter_graceful_shutdown()
        if await self.core.admission.wait_idle(grace):
            return True
        log.warning(
            "%d requests still in flight after %g s; stopping anyway",
            self.core.admission.in_flight,
            grace,
        )
        return False

    async def close(self) -> None:
        """Stop both servers and let go of NIM connections. Requests still running are
        answered 503 and get a moment to write it."""
        if self._grpc is not None:
            await asyncio.gather(self._grpc.stop(1.0), self._http.stop(1.0))
        await self.core.aclose()

    async def serve_until_signalled(self) -> None:
        stop = stop_signal()
        try:
            await self.start()
        except StartupError:
            await self.core.aclose()
            raise
        await stop.wait()
        log.info("draining: no new requests; waiting for those in flight")
        await self.stop()
        log.info("stopped")


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP server's TLS context (HTTP/1.1 only), when a certificate is configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so that a taken port or an address that is not
    this machine's is reported in one line rather than by gRPC's own log."""
    if port == 0:
        socket.getaddrinfo(host, None)
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"{error.strerror or error} (not an address of this machine)"
    return str(error.strerror or error)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
