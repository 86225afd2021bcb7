"""Translation between the gRPC messages and the core's types, both directions.

The gRPC service reads requests and writes responses with it; the Python client does the
reverse, so both sides agree on every field by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from reranker_nvidia.core.hits import Hit, SearchType
from reranker_nvidia.core.ranker import RankOptions
from reranker_nvidia.core.upstream import Usage
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.nim_schema import TRUNCATE_VALUES
from reranker_nvidia.v1 import reranker_service_pb2 as pb

API_KEY_METADATA = "x-nvidia-api-key"
BASE_URL_METADATA = "x-nvidia-baseurl"

_TRUNCATE_FROM_PROTO: dict[pb.Truncate.ValueType, str | None] = {
    pb.TRUNCATE_UNSPECIFIED: None,
    pb.TRUNCATE_NONE: "NONE",
    pb.TRUNCATE_END: "END",
}
_TRUNCATE_TO_PROTO = {value: key for key, value in _TRUNCATE_FROM_PROTO.items()}

_SEARCH_TYPE_FROM_PROTO = {
    pb.SEARCH_TYPE_UNSPECIFIED: SearchType.UNSPECIFIED,
    pb.SEARCH_TYPE_VECTOR: SearchType.VECTOR,
    pb.SEARCH_TYPE_KEYWORD: SearchType.KEYWORD,
    pb.SEARCH_TYPE_HYBRID: SearchType.HYBRID,
}
_SEARCH_TYPE_TO_PROTO = {value: key for key, value in _SEARCH_TYPE_FROM_PROTO.items()}


def options_from_proto(message: pb.RankOptions, metadata: Mapping[str, str]) -> RankOptions:
    """Request options: the message's fields, and the key and base URL from metadata.

    The base URL in metadata wins over the message's, as Weaviate's header does over config.
    """
    if message.truncate not in _TRUNCATE_FROM_PROTO:
        raise invalid_argument(f"options.truncate: unknown Truncate value {message.truncate}")
    return RankOptions(
        model=message.model or None,
        base_url=(metadata.get(BASE_URL_METADATA) or "").strip() or message.base_url or None,
        truncate=_TRUNCATE_FROM_PROTO[message.truncate],
        api_key=metadata.get(API_KEY_METADATA),
    )


def options_to_proto(model: str | None, truncate: str | None) -> pb.RankOptions:
    """Client side: the base URL travels as metadata, which wins over the message's."""
    if truncate is not None and truncate.upper() not in TRUNCATE_VALUES:
        raise invalid_argument(f"truncate must be NONE or END, got {truncate!r}")
    return pb.RankOptions(
        model=model or "",
        truncate=_TRUNCATE_TO_PROTO[truncate.upper() if truncate else None],
    )


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def dict_to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def hit_from_proto(message: pb.Hit, properties: Sequence[str] | None = None) -> Hit:
    """The hit, with only the named ``properties`` converted when they are given: those are
    all the core reads, and a hit may carry many more."""
    if properties is None:
        converted = struct_to_dict(message.properties)
    else:
        fields = message.properties.fields
        # Whichever is shorter is walked: a hit's fields, or the names asked for.
        if len(fields) < len(properties):
            wanted = set(properties)
            converted = {name: _value(value) for name, value in fields.items() if name in wanted}
        else:
            converted = {name: _value(fields[name]) for name in properties if name in fields}
    return Hit(
        id=message.id,
        properties=converted,
        score=message.score if message.HasField("score") else None,
        distance=message.distance if message.HasField("distance") else None,
        search_type=_SEARCH_TYPE_FROM_PROTO.get(message.search_type, SearchType.UNSPECIFIED),
    )


def _value(message: struct_pb2.Value) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "string_value":
        return message.string_value
    if kind == "list_value":
        return [_value(item) for item in message.list_value.values]
    if kind == "number_value":
        return message.number_value
    if kind == "bool_value":
        return message.bool_value
    return None if kind in (None, "null_value") else struct_to_dict(message.struct_value)


def hit_to_proto(hit: Hit) -> pb.Hit:
    return pb.Hit(
        id=hit.id,
        properties=dict_to_struct(hit.properties),
        score=hit.score,
        distance=hit.distance,
        search_type=_SEARCH_TYPE_TO_PROTO[hit.search_type],
    )


def usage_to_proto(usage: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=usage.prompt_tokens, total_tokens=usage.total_tokens)


def usage_from_proto(message: pb.Usage) -> Usage:
    return Usage(message.prompt_tokens, message.total_tokens)


def status_code_for(error: RerankError) -> grpc.StatusCode:
    return grpc.StatusCode[error.code.value]


def error_from_rpc(error: grpc.RpcError) -> RerankError:
    """A client-side ``RerankError`` for a failed call, keeping the server's message."""
    # Sync errors are grpc.Call; asyncio ones (AioRpcError) have the same methods but not the type.
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = details_of() if callable(details_of) else str(error)
    kind = ErrorCode.__members__.get(code.name, ErrorCode.INTERNAL)
    return RerankError(kind, details or code.name)
