"""The gRPC surface: ``reranker_nvidia.v1.RerankerService``, translating to and from the core."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio as grpc_aio

from reranker_nvidia.core import (
    Admission,
    ImagePassage,
    Metrics,
    Passage,
    Ranker,
    collection_options,
    new_request_id,
    parse_image,
    request_id,
    rerank_hits,
    rerank_properties,
)
from reranker_nvidia.errors import RerankError
from reranker_nvidia.messages import (
    FALLBACK_METADATA,
    REQUEST_ID_METADATA,
    RETRY_AFTER_METADATA,
    document_images_from_proto,
    hit_from_proto,
    struct_to_dict,
    usage_to_proto,
)
from reranker_nvidia.rpc.convert import options_from_proto, status_code_for
from reranker_nvidia.types import Meta, RerankedHits
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc

log = logging.getLogger("reranker_nvidia.grpc")
access_log = logging.getLogger("reranker_nvidia.access")


T = TypeVar("T")
R = TypeVar("R")
# From this many hits on, converting them to and from protobuf runs on a worker thread.
OFF_LOOP_HITS = 256
Context = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context) -> dict[str, str]:
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


def _top_n(message: pb.RankRequest | pb.RerankRequest) -> int | None:
    return message.top_n if message.HasField("top_n") else None


async def _answer(
    method: str,
    context: Context,
    metadata: dict[str, str],
    work: Awaitable[T],
    metrics: Metrics,
) -> T:
    """``work``'s result, or the call aborted with the status its failure maps to.

    The call gets a request id (the caller's ``x-request-id`` if it is a plain token), sent
    back as initial metadata and carried by every log line of the call; its outcome is
    counted and written to the access log, as an HTTP request's is.
    """
    rid = new_request_id(metadata.get(REQUEST_ID_METADATA))
    token = request_id.set(rid)
    await context.send_initial_metadata(((REQUEST_ID_METADATA, rid),))
    status = grpc.StatusCode.OK
    started = time.perf_counter()
    try:
        return await work
    except asyncio.CancelledError:
        status = grpc.StatusCode.CANCELLED
        raise
    except RerankError as error:
        status = status_code_for(error)
        if error.retry_after_s is not None:
            wait = str(max(1, math.ceil(error.retry_after_s)))
            context.set_trailing_metadata(((RETRY_AFTER_METADATA, wait),))
        await context.abort(status, error.message)
    except Exception:
        status = grpc.StatusCode.INTERNAL
        log.exception("unhandled error in a gRPC call")
        await context.abort(status, "internal error")
    finally:
        seconds = time.perf_counter() - started
        metrics.observe_request("grpc", status.name, seconds)
        access_log.info(
            "gRPC %s %s %.1f ms",
            method,
            status.name,
            seconds * 1000,
            extra={
                "method": "gRPC",
                "path": method,
                "status": status.name,
                "duration_ms": round(seconds * 1000, 3),
                "surface": "grpc",
            },
        )
        request_id.reset(token)
    raise AssertionError("context.abort returned")


@dataclass(eq=False)
class RerankerService(pb_grpc.RerankerServiceServicer):
    ranker: Ranker
    admission: Admission
    metrics: Metrics
    possible_joiner: Callable[[], AbstractContextManager[None]]
    """Wraps each call from arrival: batches may wait for it to ask for scores."""
    meta: Meta

    async def Rank(self, request: pb.RankRequest, context: Context) -> pb.RankResponse:
        return await self._serve("Rank", self._rank, request, context)

    async def Rerank(self, request: pb.RerankRequest, context: Context) -> pb.RerankResponse:
        return await self._serve("Rerank", self._rerank, request, context)

    async def _serve(
        self,
        method: str,
        handle: Callable[[R, dict[str, str], Context], Awaitable[T]],
        request: R,
        context: Context,
    ) -> T:
        metadata = _metadata(context)
        work = handle(request, metadata, context)
        with self.possible_joiner():
            return await _answer(method, context, metadata, work, self.metrics)

    async def GetMeta(self, request: pb.GetMetaRequest, context: Context) -> pb.GetMetaResponse:
        return pb.GetMetaResponse(**self.meta.as_dict())

    async def _rank(
        self, request: pb.RankRequest, metadata: dict[str, str], context: Context
    ) -> pb.RankResponse:
        budget_s = context.time_remaining()
        ranking = await self.ranker.rank(
            request.query,
            self._documents(request),
            options_from_proto(request.options, metadata),
            surface="grpc",
            top_n=_top_n(request),
            budget_s=budget_s,
        )
        if ranking.fallback:
            _mark_fallback(context)
        response = pb.RankResponse(model=ranking.model, usage=usage_to_proto(ranking.usage))
        # Added in place: half the cost of building each message and copying it in.
        add, scores = response.results.add, ranking.scores
        for index in ranking.order():
            add(index=index, score=scores[index])
        return response

    def _documents(self, request: pb.RankRequest) -> list[Passage]:
        """``documents``, each with its image from ``document_images`` (checked here, where it
        enters)."""
        documents: list[Passage] = list(request.documents)
        images = document_images_from_proto(request)
        if images:
            budget = self.ranker.image_budget(len(documents))
            for index in sorted(images):
                image = parse_image(images[index], f"document_images[{index}]", budget)
                documents[index] = ImagePassage(request.documents[index], image)
        return documents

    async def _rerank(
        self, request: pb.RerankRequest, metadata: dict[str, str], context: Context
    ) -> pb.RerankResponse:
        budget_s = context.time_remaining()
        # Admitted, and its counts checked, before a single hit is converted.
        async with self.admission.admit():
            properties = rerank_properties(self.ranker, request.properties, len(request.hits))
            hits = await _off_loop_when_large(
                len(request.hits),
                lambda: [hit_from_proto(hit, properties) for hit in request.hits],
            )
            result = await rerank_hits(
                self.ranker,
                hits,
                properties=properties,
                query=request.query,
                options=options_from_proto(request.options, metadata),
                collection=collection_options(struct_to_dict(request.module_config)),
                top_n=_top_n(request),
                budget_s=budget_s,
            )
        if result.fallback:
            _mark_fallback(context)
        return await _off_loop_when_large(
            len(result.hits), lambda: _rerank_response(request, result)
        )


def _mark_fallback(context: Context) -> None:
    context.set_trailing_metadata(((FALLBACK_METADATA, "passthrough"),))


def _rerank_response(request: pb.RerankRequest, result: RerankedHits) -> pb.RerankResponse:
    response = pb.RerankResponse(model=result.model, usage=usage_to_proto(result.usage))
    add, hits = response.hits.add, request.hits
    for entry in result.hits:
        message = add(hit=hits[entry.position], original_position=entry.position)
        if entry.rerank_score is not None:
            message.rerank_score = entry.rerank_score
    return response


async def _off_loop_when_large(count: int, work: Callable[[], T]) -> T:
    """``work()``, on a worker thread when it handles ``OFF_LOOP_HITS`` hits or more, so that
    converting a large message never holds the event loop for long."""
    if count < OFF_LOOP_HITS:
        return work()
    return await asyncio.to_thread(work)


@dataclass(frozen=True)
class _Undecodable:
    """A request whose bytes did not parse (bad UTF-8 in a string, a truncated message)."""

    reason: str


def _decoder(message_class: type[Message]) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return decode


def _refusing_undecodable(
    method: Callable[[Any, Context], Awaitable[Message]],
) -> Callable[[Any, Context], Awaitable[Message]]:
    async def handle(request: Any, context: Context) -> Message:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await method(request, context)

    return handle


def add_to_server(service: RerankerService, server: grpc_aio.Server) -> None:
    """Register the service so that undecodable requests are INVALID_ARGUMENT, not UNKNOWN.

    gRPC answers UNKNOWN when a request deserializer raises; decoding here lets the service
    refuse such a request with the right code and protobuf's own reason.
    """
    descriptor = pb.DESCRIPTOR.services_by_name["RerankerService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(getattr(service, method.name)),
            request_deserializer=_decoder(GetMessageClass(method.input_type)),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for method in descriptor.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
