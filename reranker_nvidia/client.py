"""Python clients for the sidecar's gRPC API, sync and async.

    with RerankerClient("localhost:50051") as client:
        for doc in client.rank("which way?", ["turn left", "go north"]).documents:
            print(doc.score, doc.document)

Documents with images (a vision-language model ranks them):

    client.rank("a red square?", [Document("A red square.", png_bytes), png_bytes, "text"],
                model="nvidia/llama-nemotron-rerank-vl-1b-v2")

Failures raise ``RerankError`` with the server's code and message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
from google.protobuf.message import Message

from reranker_nvidia.messages import (
    API_KEY_METADATA,
    BASE_URL_METADATA,
    FALLBACK_METADATA,
    TOKEN_METADATA,
    dict_to_struct,
    documents_to_proto,
    error_from_rpc,
    hit_to_proto,
    options_to_proto,
    usage_from_proto,
)
from reranker_nvidia.types import (
    CallOptions,
    Document,
    Hit,
    Meta,
    RankCall,
    RankedDocuments,
    RerankCall,
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
# What a rank call may hold: text, an image's bytes, or a Document (text, image or both).
DocumentInput = str | bytes | Document


class _Sent(NamedTuple):
    """What a rank request carried, to show each scored document with."""

    texts: list[str]
    images: dict[int, bytes]


def _check_call(call: Mapping[str, Any], shape: Any, required: Sequence[str] = ()) -> None:
    """What a typed caller's checker would say, for callers without one. (``required`` is
    named here: with postponed annotations, a TypedDict cannot tell ``Required`` keys.)"""
    unknown = set(call) - shape.__required_keys__ - shape.__optional_keys__
    if unknown:
        raise TypeError(f"unknown arguments: {', '.join(sorted(unknown))}")
    missing = set(required) - set(call)
    if missing:
        raise TypeError(f"missing keyword arguments: {', '.join(sorted(missing))}")


def _options(call: CallOptions) -> pb.RankOptions:
    return options_to_proto(call.get("model"), call.get("truncate"))


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
        self, query: str, documents: Sequence[DocumentInput], call: RankCall
    ) -> tuple[pb.RankRequest, Metadata, _Sent]:
        _check_call(call, RankCall)
        texts, images = documents_to_proto(documents)
        request = pb.RankRequest(
            query=query,
            documents=texts,
            options=_options(call),
            top_n=call.get("top_n"),
            document_images=images,
        )
        metadata = self.metadata(call.get("api_key"), call.get("base_url"))
        return request, metadata, _Sent(texts, images)

    @staticmethod
    def ranked(answer: _Answer, sent: _Sent) -> RankedDocuments:
        response, fallback = answer
        texts, images = sent
        scored = [
            ScoredDocument(r.index, r.score, texts[r.index], images.get(r.index))
            for r in response.results
        ]
        return RankedDocuments(response.model, usage_from_proto(response.usage), scored, fallback)

    def rerank(self, hits: Sequence[Hit], call: RerankCall) -> tuple[pb.RerankRequest, Metadata]:
        _check_call(call, RerankCall, required=("properties", "query"))
        request = pb.RerankRequest(
            hits=[hit_to_proto(hit) for hit in hits],
            properties=call["properties"],
            query=call["query"],
            top_n=call.get("top_n"),
            module_config=dict_to_struct(call.get("module_config") or {}),
            options=_options(call),
        )
        return request, self.metadata(call.get("api_key"), call.get("base_url"))

    @staticmethod
    def reranked(answer: _Answer, hits: Sequence[Hit]) -> RerankedHits:
        response, fallback = answer
        reranked = [
            RerankedHit(
                hits[entry.original_position],
                entry.original_position,
                entry.rerank_score if entry.HasField("rerank_score") else None,
            )
            for entry in response.hits
        ]
        return RerankedHits(response.model, usage_from_proto(response.usage), reranked, fallback)

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


# A response, and whether the sidecar answered it in input order (fail-open).
_Answer = tuple[Any, bool]


def _fell_back(trailers: Any) -> bool:
    return any(key == FALLBACK_METADATA for key, _ in trailers or ())


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
        self, query: str, documents: Sequence[DocumentInput], **call: Unpack[RankCall]
    ) -> RankedDocuments:
        """``documents`` best first, scored against ``query``; at most ``top_n``.

        A ``str`` is a document's text, always: one that happens to be a data URL
        (``data:image/png;base64,...``) is ranked as text unless wrapped in ``Document``.
        ``bytes`` are an image-only document; a ``Document`` carries text, an image (bytes
        or a data URL) or both. Images need a vision-language model; the server checks them.
        """
        request, metadata, sent = self._requests.rank(query, documents, call)
        return _Requests.ranked(self._invoke(self._stub.Rank, request, metadata), sent)

    def rerank(self, hits: Sequence[Hit], **call: Unpack[RerankCall]) -> RerankedHits:
        """``hits`` reordered by their ``properties`` against ``query``."""
        request, metadata = self._requests.rerank(hits, call)
        return _Requests.reranked(self._invoke(self._stub.Rerank, request, metadata), hits)

    def meta(self) -> Meta:
        request, metadata = pb.GetMetaRequest(), self._requests.metadata()
        return _Requests.meta(self._invoke(self._stub.GetMeta, request, metadata)[0])

    def _invoke(self, method: Any, request: Message, metadata: Metadata) -> _Answer:
        with _rerank_errors():
            response, call = method.with_call(request, metadata=metadata, timeout=self._timeout_s)
        return response, _fell_back(call.trailing_metadata())

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
        self, query: str, documents: Sequence[DocumentInput], **call: Unpack[RankCall]
    ) -> RankedDocuments:
        """As ``RerankerClient.rank``: ``str`` is text, ``bytes`` an image, ``Document`` both."""
        request, metadata, sent = self._requests.rank(query, documents, call)
        response = await self._invoke(self._stub.Rank, request, metadata)
        return _Requests.ranked(response, sent)

    async def rerank(self, hits: Sequence[Hit], **call: Unpack[RerankCall]) -> RerankedHits:
        request, metadata = self._requests.rerank(hits, call)
        response = await self._invoke(self._stub.Rerank, request, metadata)
        return _Requests.reranked(response, hits)

    async def meta(self) -> Meta:
        response, _ = await self._invoke(
            self._stub.GetMeta, pb.GetMetaRequest(), self._requests.metadata()
        )
        return _Requests.meta(response)

    async def _invoke(
        self, method: Callable[..., Any], request: Message, metadata: Metadata
    ) -> _Answer:
        with _rerank_errors():
            call = method(request, metadata=metadata, timeout=self._timeout_s)
            response = await call
            trailers = await call.trailing_metadata()
        return response, _fell_back(trailers)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncRerankerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
