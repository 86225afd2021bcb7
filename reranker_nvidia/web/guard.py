"""ASGI middleware in front of every HTTP route: caller token, body size, and disconnects.

- With ``RERANKER_AUTH_TOKEN`` set, every path but ``/.well-known/live|ready`` needs the
  ``X-Reranker-Token`` header (401 otherwise).
- A body over ``RERANKER_MAX_BODY_BYTES`` is refused with 413 before it is parsed, and one
  not received within ``RERANKER_BODY_TIMEOUT_S`` with 408.
- A request counts as one that may still join a coalescing batch only once its body is in.
- Requests still running when a graceful stop ends are answered 503 in their contract's shape.
- A caller that disconnects cancels its request, and with it the request's upstream calls.
- Real clients are sloppy where it does not matter: a path with repeated slashes (a base URL
  ending in ``/`` joined to ``/rerank``) routes like one with single slashes, and a POST body
  sent without ``Content-Type`` (Weaviate's module) or as ``text/plain`` is read as JSON.
- Every request gets an id (the caller's ``X-Request-Id`` if it is a plain token), echoed in
  the response and carried by every log line of the request; its outcome is reported.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reranker_nvidia.core import (
    MISSING_TOKEN_MESSAGE,
    OPEN_HTTP_PATHS,
    REQUEST_ID_HEADER,
    TOKEN_HEADER,
    new_request_id,
    request_id,
    token_matches,
)
from reranker_nvidia.errors import ErrorCode, RerankError
from reranker_nvidia.web.errors import error_response, internal_error

_TOKEN_HEADER = TOKEN_HEADER.lower().encode()
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.lower().encode()
_REPEATED_SLASHES = re.compile(r"//+")
_REPEATED_SLASHES_RAW = re.compile(rb"//+")
_CONTENT_TYPE = b"content-type"
_JSON = b"application/json"
# Content types a JSON body arrives under from clients that do not label it.
_UNLABELLED = frozenset({b"", b"text/plain"})
# What the outcome is called when the caller left before an answer (as nginx calls it).
CLIENT_CLOSED = 499


class _RefusedBody(Exception):
    """A body refused before it is parsed: the message names the limit, with its status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestsInFlight:
    """The HTTP requests being handled, so that a stop can end those still running."""

    def __init__(self) -> None:
        self._handlers: set[asyncio.Future[None]] = set()
        self.stopping = False

    def add(self, handler: asyncio.Future[None]) -> None:
        self._handlers.add(handler)

    def discard(self, handler: asyncio.Future[None]) -> None:
        self._handlers.discard(handler)

    def stop_all(self) -> None:
        """Each request still running is cancelled and answered 503 (if it had not begun
        its answer)."""
        self.stopping = True
        for handler in list(self._handlers):
            handler.cancel()


SHUTTING_DOWN = RerankError(
    ErrorCode.UNAVAILABLE,
    "the server stopped before this request finished; retry on another instance",
    retry_after_s=1.0,
)


@dataclass(eq=False)
class HttpGuard:
    """ASGI middleware: ``app`` is the application behind it (Starlette passes it first)."""

    app: ASGIApp
    max_body_bytes: int
    body_timeout_s: float
    auth_token: str | None = field(repr=False)
    possible_joiner: Callable[[], AbstractContextManager[None]]
    """Wraps each request once its body is in: batches may wait for it to ask for scores."""
    observe: Callable[[str, str, int, float], None]
    in_flight: RequestsInFlight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = _tolerant(scope)
        rid = new_request_id(_header(scope, _REQUEST_ID_HEADER))
        context = request_id.set(rid)
        status = CLIENT_CLOSED
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (_REQUEST_ID_HEADER, rid.encode()),
                ]
            await send(message)

        try:
            await self._guarded(scope, receive, send_with_id)
        finally:
            self.observe(scope["method"], scope["path"], status, time.perf_counter() - started)
            request_id.reset(context)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if self.auth_token is not None and path not in OPEN_HTTP_PATHS:
            given = _header(scope, _TOKEN_HEADER)
            if not token_matches(self.auth_token, given):
                error = RerankError(ErrorCode.UNAUTHENTICATED, MISSING_TOKEN_MESSAGE)
                await error_response(path, error)(scope, receive, send)
                return
        try:
            body = await self._read_body(scope, receive)
        except _RefusedBody as refusal:
            error = RerankError(ErrorCode.INVALID_ARGUMENT, str(refusal))
            await error_response(path, error, refusal.status)(scope, receive, send)
            return
        if body is None:  # the caller left while sending
            return
        with self.possible_joiner():
            await self._run_until_disconnect(scope, body, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        # One timer for the whole body rather than a timeout per read: a body already in
        # is read without giving up the loop, so requests that arrive together stay together.
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.body_timeout_s, expire)
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise self._too_large()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except asyncio.CancelledError:
            if not expired:
                raise
            _uncancel(task)
            raise _RefusedBody(
                f"body: not received within {self.body_timeout_s:g} s (RERANKER_BODY_TIMEOUT_S)",
                408,
            ) from None
        finally:
            timer.cancel()

    def _too_large(self) -> _RefusedBody:
        return _RefusedBody(
            f"body: larger than {self.max_body_bytes} bytes (RERANKER_MAX_BODY_BYTES)", 413
        )

    async def _run_until_disconnect(
        self, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        disconnected = asyncio.Event()
        body_given = False

        async def replay() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        answering = False

        async def send_tracked(message: Message) -> None:
            nonlocal answering
            answering = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, replay, send_tracked))
        self.in_flight.add(handler)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if disconnected.is_set():
                return
            if not (self.in_flight.stopping and handler.cancelled()) or answering:
                raise
            await error_response(scope["path"], SHUTTING_DOWN)(scope, receive, send)
        except Exception:
            if answering:
                raise
            await internal_error(scope["path"])(scope, receive, send)
        finally:
            self.in_flight.discard(handler)
            watcher.cancel()


def _tolerant(scope: Scope) -> Scope:
    """``scope`` with repeated slashes in its path collapsed and, on a POST, an unlabelled
    body labelled JSON (every POST route takes JSON; a body that is not JSON still fails
    validation with a clear message)."""
    path: str = scope["path"]
    if "//" in path:
        scope = dict(scope, path=_REPEATED_SLASHES.sub("/", path))
        raw_path = scope.get("raw_path")
        if raw_path is not None:
            scope["raw_path"] = _REPEATED_SLASHES_RAW.sub(b"/", raw_path)
    if scope["method"] == "POST":
        headers = scope["headers"]
        labels = [value for key, value in headers if key == _CONTENT_TYPE]
        if not labels or bytes(labels[0]).split(b";", 1)[0].strip().lower() in _UNLABELLED:
            scope = dict(
                scope,
                headers=[(key, value) for key, value in headers if key != _CONTENT_TYPE]
                + [(_CONTENT_TYPE, _JSON)],
            )
    return scope


def _uncancel(task: asyncio.Task[Any]) -> None:
    """Undo the cancellation the body timer asked for (Python 3.11+ counts them)."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
