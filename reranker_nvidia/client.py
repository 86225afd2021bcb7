"""Python clients for the sidecar's gRPC API, sync and async.

    with RerankerClient("localhost:50051") as client:
        for doc in client.rank("which way?", ["turn left", "go north"]):
            print(doc.score, doc.document)

Failures raise ``RerankError`` with the server's code and message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from reranker_nvidia.messages import (
    API_KEY_METADATA,
    BASE_URL_METADATA,
    TOKEN_METADATA,
    dict_to_struct,
    error_from_rpc,
    hit_to_proto,
    options_to_proto,
    usage_from_proto,
)
from reranker_nvidia.types import (
    CallOptions,
    Hit,
    Meta,
    RankedDocuments,
    RerankedHit,
    RerankedHits,
    ScoredDocument,
)
from reranker_nvidia.v1 import reranker_service_pb2 as pb
from reranker_nvidia.v1 import reranker_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Unpack

# Rerank answers carry the hits back; allow answers as large as the server accepts requests.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)


def _credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates)


Metadata = tuple[tuple[str, str], ...]


def _options(options: CallOptions) -> pb.RankOptions:
    unknown = set(options) - set(CallOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown call options: {', '.join(sorted(unknown))}")
    return options_to_proto(options.get("model"), options.get("truncate"))


class _Requests:
    """Builds requests and reads responses; shared by the sync and async clients."""

    def __init__(self, api_key: str | None, base_url: str | None, token: str | None) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self._token = token

    def metadata(self, api_key: str | None = None, base_url: str | None = None) -> Metadata:
        pairs: list[tuple[str, str]] = []
        if self._token:
            pairs.append((TOKEN_METADATA, self._token))
        if key := api_key or self._api_key:
            pairs.append((API_KEY_METADATA, key))
        if url := base_url or self._base_url:
            pairs.append((BASE_URL_METADATA, url))
        return tuple(pairs)

    def rank(
        self, query: str, documents: Sequence[str], top_n: int | None, options: CallOptions
    ) -> tuple[pb.RankRequest, Metadata]:
        request = pb.RankRequest(
            query=query, documents=documents, options=_options(options), top_n=top_n
        )
        return request, self.metadata(options.get("api_key"), options.get("base_url"))

    @staticmethod
    def ranked(response: pb.RankResponse, documents: Sequence[str]) -> RankedDocuments:
        return RankedDocuments(
            model=response.model,
            usage=usage_from_proto(response.usage),
            documents=[
                ScoredDocument(result.index, result.score, documents[result.index])
                for result in response.results
            ],
        )

    def rerank(
        self,
        hits: Sequence[Hit],
        properties: Sequence[str],
        query: str,
        top_n: int | None,
        module_config: Mapping[str, Any] | None,
        options: CallOptions,
    ) -> tuple[pb.RerankRequest, Metadata]:
        request = pb.RerankRequest(
            hits=[hit_to_proto(hit) for hit in hits],
            properties=properties,
            query=query,
            top_n=top_n,
            module_config=dict_to_struct(module_config or {}),
            options=_options(options),
        )
        return request, self.metadata(options.get("api_key"), options.get("base_url"))

    @staticmethod
    def reranked(response: pb.RerankResponse, hits: Sequence[Hit]) -> RerankedHits:
        return RerankedHits(
            model=response.model,
            usage=usage_from_proto(response.usage),
            hits=[
                RerankedHit(
                    hits[entry.original_position],
                    entry.original_position,
                    entry.rerank_score if entry.HasField("rerank_score") else None,
                )
                for entry in response.hits
            ],
        )

    @staticmethod
    def meta(response: pb.GetMetaResponse) -> Meta:
        return Meta(
            name=response.name,
            version=response.version,
            model=response.model,
            base_url=response.base_url,
            endpoint=response.endpoint,
            max_passages_per_call=response.max_passages_per_call,
            max_documents=response.max_documents,
            server_key_configured=response.server_key_configured,
        )


class _Client:
    """What both clients share: the channel, the stub, the per-call options."""

    _channels: Any = grpc

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        channel: Any = None,
    ) -> None:
        if channel is None:
            credentials = _credentials(tls, root_certificates)
            channel = (
                self._channels.secure_channel(target, credentials, CHANNEL_OPTIONS)
                if credentials is not None
                else self._channels.insecure_channel(target, CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._stub = pb_grpc.RerankerServiceStub(channel)
        self._requests = _Requests(api_key, base_url, token)
        self._timeout_s = timeout_s


@contextlib.contextmanager
def _rerank_errors() -> Iterator[None]:
    """A failed call as a ``RerankError`` with the server's code and message."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


class RerankerClient(_Client):
    """Blocking client. ``api_key`` and ``base_url`` apply to every call unless a call overrides.

    ``tls`` (or ``root_certificates``, PEM bytes of the CA to trust) connects over TLS;
    ``token`` is the sidecar's caller token when it requires one; ``channel`` replaces the
    channel the client would open.
    """

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        **options: Unpack[CallOptions],
    ) -> RankedDocuments:
        request, metadata = self._requests.rank(query, documents, top_n, options)
        with _rerank_errors():
            response = self._stub.Rank(request, metadata=metadata, timeout=self._timeout_s)
        return _Requests.ranked(response, documents)

    def rerank(
        self,
        hits: Sequence[Hit],
        *,
        properties: Sequence[str],
        query: str,
        top_n: int | None = None,
        module_config: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> RerankedHits:
        request, metadata = self._requests.rerank(
            hits, properties, query, top_n, module_config, options
        )
        with _rerank_errors():
            response = self._stub.Rerank(request, metadata=metadata, timeout=self._timeout_s)
        return _Requests.reranked(response, hits)

    def meta(self) -> Meta:
        metadata = self._requests.metadata()
        with _rerank_errors():
            response = self._stub.GetMeta(
                pb.GetMetaRequest(), metadata=metadata, timeout=self._timeout_s
            )
        return _Requests.meta(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RerankerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRerankerClient(_Client):
    """asyncio client with the same calls and options as ``RerankerClient``."""

    _channels = grpc.aio

    async def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        **options: Unpack[CallOptions],
    ) -> RankedDocuments:
        request, metadata = self._requests.rank(query, documents, top_n, options)
        with _rerank_errors():
            response = await self._stub.Rank(request, metadata=metadata, timeout=self._timeout_s)
        return _Requests.ranked(response, documents)

    async def rerank(
        self,
        hits: Sequence[Hit],
        *,
        properties: Sequence[str],
        query: str,
        top_n: int | None = None,
        module_config: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> RerankedHits:
        request, metadata = self._requests.rerank(
            hits, properties, query, top_n, module_config, options
        )
        with _rerank_errors():
            response = await self._stub.Rerank(request, metadata=metadata, timeout=self._timeout_s)
        return _Requests.reranked(response, hits)

    async def meta(self) -> Meta:
        metadata = self._requests.metadata()
        with _rerank_errors():
            response = await self._stub.GetMeta(
                pb.GetMetaRequest(), metadata=metadata, timeout=self._timeout_s
            )
        return _Requests.meta(response)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncRerankerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
