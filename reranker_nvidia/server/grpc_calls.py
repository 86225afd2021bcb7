"""What one gRPC call may hold: time for its request, and a place in the call pool.

gRPC receives a unary call's request before the method runs and sends its answer after,
waiting as long as the client likes either way while the call keeps its place: a client that
never finishes its request, or never opens its flow-control window to take the answer, holds
places until its connection ends. With enough such calls every other client, health checks
included, would be refused. ``CallBounds`` turns each unary method (the reranking API,
health checks) into one that

- reads its request itself, within ``timeout_s`` (else DEADLINE_EXCEEDED, as the HTTP server
  answers 408 to a body that does not arrive);
- counts the call in a pool of ``pool`` places from its start until gRPC is done with it; a
  call arriving at a full pool takes the place of the call that has waited longest on its
  client (at least ``EVICTABLE_AFTER_S``), for a request that does not come or to take an
  answer, so clients that send or take nothing never lock anyone out; only when no call waits
  so is it refused (RESOURCE_EXHAUSTED, never processed, safe to retry).

A call that gives up its place is no longer waited for here, but gRPC's core keeps it (and an
answer's bytes) until the connection ends: the keepalive closes a connection
that stops reading, the connection age one that answers pings. The server's own
``maximum_concurrent_rpcs``, a multiple of ``pool``, bounds those calls and the streaming
methods (the health service's Watch, reflection), which pass through unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio as grpc_aio

# A call waiting on its client (for its request, or to take its answer) may give its place to a
# new call once it has waited this long: a client still sending a large request or reading a
# large answer is not cut off by a burst.
EVICTABLE_AFTER_S = 1.0

if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc_aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _Context = grpc_aio.ServicerContext[Any, Any]
else:
    _Interceptor = grpc_aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler
    _Context = grpc_aio.ServicerContext
_EOF: object = grpc_aio.EOF  # type: ignore[attr-defined]  # missing from the type stubs


class CallBounds(_Interceptor):
    """See the module's docstring. ``setting`` names the timeout in its message."""

    def __init__(
        self,
        timeout_s: float,
        pool: int,
        *,
        setting: str = "RERANKER_BODY_TIMEOUT_S",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout_s = timeout_s
        self._pool = pool
        self._clock = clock
        self._late_request = f"request: not received within {timeout_s:g} s ({setting})"
        self._full = (
            f"the server is at its limit of {pool} calls at once; retry shortly "
            "(RERANKER_MAX_IN_FLIGHT)"
        )
        self.calls = 0
        # Calls waiting on their client (request not yet arrived, or answer not yet taken),
        # oldest first: the task carrying the call, and when it started waiting.
        self._on_client: dict[asyncio.Task[Any], float] = {}
        self.calls_dropped = 0
        # One wrapper per handler, made on its first call (handlers are few and long-lived).
        self._wrapped: dict[_Handler, _Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            unary = inspect.iscoroutinefunction(handler.unary_unary)
            wrapped = self._wrapped[handler] = self._wrap(handler) if unary else handler
        return wrapped

    def _wrap(self, handler: _Handler) -> _Handler:
        unary: Any = handler.unary_unary
        timeout_s = self._timeout_s

        async def answer(requests: object, context: _Context) -> Any:
            if self.calls >= self._pool and not self._make_room():
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._full)
            task = asyncio.current_task()
            self.calls += 1
            done: Any = functools.partial(self._done, task)  # the stubs want a Protocol
            context.add_done_callback(done)
            on_client = self._on_client
            if task is not None:
                on_client[task] = self._clock()
            try:
                if sys.version_info >= (3, 11):
                    async with asyncio.timeout(timeout_s):
                        request = await context.read()
                else:
                    request = await asyncio.wait_for(context.read(), timeout_s)
            except asyncio.TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late_request)
            if task is not None:
                on_client.pop(task, None)
            if request is _EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: no message")
            response = await unary(request, context)
            if task is not None:
                # gRPC sends the answer from this same task once it is returned.
                on_client[task] = self._clock()
            return response

        factory: Any = grpc.stream_unary_rpc_method_handler
        wrapped: _Handler = factory(
            answer,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped

    def _done(self, task: asyncio.Task[Any] | None, _context: object) -> None:
        self.calls -= 1
        if task is not None:
            self._on_client.pop(task, None)

    def _make_room(self) -> bool:
        """Stops waiting for the call that has waited longest on its client, if it has waited
        long enough: its task is cancelled, and the call leaves the pool when the task ends."""
        for task, since in self._on_client.items():
            if self._clock() - since < EVICTABLE_AFTER_S:
                return False
            del self._on_client[task]
            self.calls_dropped += 1
            task.cancel()
            return True
        return False
