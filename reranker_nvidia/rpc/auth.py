"""The caller token check for gRPC: every method but the health service needs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio as grpc_aio

from reranker_nvidia.core import MISSING_TOKEN_MESSAGE, OPEN_GRPC_SERVICE, token_matches
from reranker_nvidia.messages import TOKEN_METADATA


async def _deny(request: Any, context: grpc_aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN_MESSAGE)


if TYPE_CHECKING:
    _Interceptor = grpc_aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc_aio.ServerInterceptor


class TokenInterceptor(_Interceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_GRPC_SERVICE):
            return handler
        given = dict(details.invocation_metadata or ()).get(TOKEN_METADATA)
        if token_matches(self._token, given if isinstance(given, str) else None):
            return handler
        # Answer in the shape of the method the caller asked for, so streams fail cleanly too.
        if handler.unary_unary is not None:
            factory: Any = grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            factory = grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            factory = grpc.stream_unary_rpc_method_handler
        else:
            factory = grpc.stream_stream_rpc_method_handler
        denied: grpc.RpcMethodHandler[Any, Any] = factory(
            _deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return denied
