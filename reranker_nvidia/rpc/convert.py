"""What the gRPC service reads from a request and how its failures are told: the server-side
half of the wire vocabulary (the rest, shared with the client, is ``messages``)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from reranker_nvidia.core import RankOptions
from reranker_nvidia.errors import RerankError, invalid_argument
from reranker_nvidia.messages import API_KEY_METADATA, BASE_URL_METADATA, TRUNCATE_FROM_PROTO
from reranker_nvidia.v1 import reranker_service_pb2 as pb


def options_from_proto(message: pb.RankOptions, metadata: Mapping[str, str]) -> RankOptions:
    """Request options: the message's fields, and the key and base URL from metadata.

    The base URL in metadata wins over the message's, as Weaviate's header does over config.
    """
    if message.truncate not in TRUNCATE_FROM_PROTO:
        raise invalid_argument(f"options.truncate: unknown Truncate value {message.truncate}")
    return RankOptions(
        model=message.model or None,
        base_url=(metadata.get(BASE_URL_METADATA) or "").strip() or message.base_url or None,
        truncate=TRUNCATE_FROM_PROTO[message.truncate],
        api_key=metadata.get(API_KEY_METADATA),
    )


def status_code_for(error: RerankError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code.value]
