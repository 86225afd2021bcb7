"""The gRPC wire vocabulary: metadata names, and translation between the messages and the
public types, both directions.

The Python client writes requests and reads responses with it; the gRPC service does the
reverse, so both sides agree on every field by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.types import TRUNCATE_VALUES, Hit, SearchType, Usage
from reranker_nvidia.v1 import reranker_service_pb2 as pb

API_KEY_METADATA = "x-nvidia-api-key"
BASE_URL_METADATA = "x-nvidia-baseurl"
TOKEN_METADATA = "x-reranker-token"
REQUEST_ID_METADATA = "x-request-id"
# Trailing metadata on a refusal that says when to come back: whole seconds, as HTTP's header.
RETRY_AFTER_METADATA = "retry-after"

TRUNCATE_FROM_PROTO: dict[pb.Truncate.ValueType, str | None] = {
    pb.TRUNCATE_UNSPECIFIED: None,
    pb.TRUNCATE_NONE: "NONE",
    pb.TRUNCATE_END: "END",
}
_TRUNCATE_TO_PROTO = {value: key for key, value in TRUNCATE_FROM_PROTO.items()}

_SEARCH_TYPE_FROM_PROTO = {
    pb.SEARCH_TYPE_UNSPECIFIED: SearchType.UNSPECIFIED,
    pb.SEARCH_TYPE_VECTOR: SearchType.VECTOR,
    pb.SEARCH_TYPE_KEYWORD: SearchType.KEYWORD,
    pb.SEARCH_TYPE_HYBRID: SearchType.HYBRID,
}
_SEARCH_TYPE_TO_PROTO = {value: key for key, value in _SEARCH_TYPE_FROM_PROTO.items()}


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


def error_from_rpc(error: grpc.RpcError) -> RerankError:
    """A client-side ``RerankError`` for a failed call, keeping the server's message."""
    # Sync errors are grpc.Call; asyncio ones (AioRpcError) have the same methods but not the type.
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = details_of() if callable(details_of) else str(error)
    kind = ErrorCode.__members__.get(code.name, ErrorCode.INTERNAL)
    return RerankError(kind, details or code.name)
