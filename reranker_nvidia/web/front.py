"""The front door of every HTTP request: what all of them share, in one place.

The wire engine (``reranker_nvidia.wire``) holds the transport bounds and hands every request
here, the ones it refused included. Here:

- every request gets an id (the caller's ``X-Request-Id`` if it is a plain token), echoed in
  the answer and carried by every log line of it; its outcome is counted and logged once;
- a refusal of the engine's (413, 408, 414, 431, 503, ...) is answered in its contract's shape;
- with ``RERANKER_AUTH_TOKEN`` set, every path but ``/.well-known/live|ready`` needs the
  ``X-Reranker-Token`` header (401 otherwise);
- a path with repeated slashes (a base URL ending in ``/`` joined to ``/rerank``) routes like
  one with single slashes;
- the ranking routes are answered straight from the wire (``routes.py``); every other route
  (docs, OpenAPI, metrics, meta, models, health) goes to the FastAPI app;
- a failure nobody planned for is a 500 in the contract's shape, its traceback logged once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from urllib.parse import unquote

from starlette.types import ASGIApp

from reranker_nvidia.core import (
    MISSING_TOKEN_MESSAGE,
    OPEN_HTTP_PATHS,
    REQUEST_ID_HEADER,
    TOKEN_HEADER,
    Metrics,
    new_request_id,
    request_id,
    token_matches,
)
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.web.errors import contract_of, error_response, internal_error
from reranker_nvidia.web.routes import HotRoutes
from reranker_nvidia.wire import Request, Response, run_asgi

access_log = logging.getLogger("reranker_nvidia.access")

_TOKEN_HEADER = TOKEN_HEADER.lower().encode()
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()
_REPEATED_SLASHES = re.compile(r"//+")
# What the outcome is called when the caller left before an answer (as nginx calls it).
CLIENT_CLOSED = 499
# Probes and scrapes come every few seconds: counted in the metrics, not logged.
QUIET_PATHS = frozenset({"/.well-known/live", "/.well-known/ready", "/metrics"})

Observe = Callable[[str, str, int, float], None]


@dataclass(eq=False)
class HttpFront:
    """The app the wire engine serves (its ``App``)."""

    routes: HotRoutes
    asgi: ASGIApp
    """Everything but the ranking routes (FastAPI)."""
    observe: Observe
    """Counts a request's outcome: (method, path, status, seconds)."""
    possible_joiner: Callable[[], AbstractContextManager[None]]
    """Wraps each ranking request once its body is in: batches may wait for it."""
    auth_token: str | None = field(default=None, repr=False)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.path
        if "%" in path:
            path = unquote(path, errors="replace")
        if "//" in path:
            path = _REPEATED_SLASHES.sub("/", path)
        rid = new_request_id(_text(request.header(_REQUEST_ID_HEADER)))
        context = request_id.set(rid)
        status = CLIENT_CLOSED
        try:
            response = await self._answer(request, path)
            response.headers.append((_REQUEST_ID_HEADER, rid.encode()))
            status = response.status
            return response
        finally:
            self.observe(request.method, path, status, time.perf_counter() - started)
            request_id.reset(context)

    async def _answer(self, request: Request, path: str) -> Response:
        refusal = request.refusal
        if refusal is not None:
            error = RerankError(
                ErrorCode.INVALID_ARGUMENT, refusal.message, retry_after_s=refusal.retry_after_s
            )
            return error_response(path, error, refusal.status)
        if self.auth_token is not None and path not in OPEN_HTTP_PATHS:
            given = _text(request.header(_TOKEN_HEADER))
            if not token_matches(self.auth_token, given):
                error = RerankError(ErrorCode.UNAUTHENTICATED, MISSING_TOKEN_MESSAGE)
                return error_response(path, error)
        try:
            handler = self.routes.match(request.method, path)
            if handler is None:
                if path != request.path:
                    request.path = path
                    request.raw_path = path.encode()
                return await run_asgi(self.asgi, request)
            with self.possible_joiner():
                return await handler(request, path)
        except RerankError as error:
            return error_response(path, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            return internal_error(path)


def access_observer(metrics: Metrics) -> Observe:
    """Each request counted in the metrics by its contract (never by its path), and one
    access-log line per request but probes and scrapes."""

    def observe(method: str, path: str, status: int, seconds: float) -> None:
        contract = contract_of(path)
        metrics.observe_request(contract, str(status), seconds)
        if path not in QUIET_PATHS:
            access_log.info(
                "%s %s %d %.1f ms",
                method,
                path,
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "surface": contract,
                    "request_id": request_id.get(),
                },
            )

    return observe


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
