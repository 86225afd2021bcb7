"""The gRPC wire vocabulary: metadata names, and translation between the messages and the
public types, both directions.

The Python client writes requests and reads responses with it; the gRPC service does the
reverse, so both sides agree on every field by construction.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.types import TRUNCATE_VALUES, Document, Hit, SearchType, Usage
from reranker_nvidia.v1 import reranker_service_pb2 as pb

API_KEY_METADATA = "x-nvidia-api-key"
BASE_URL_METADATA = "x-nvidia-baseurl"
TOKEN_METADATA = "x-reranker-token"
REQUEST_ID_METADATA = "x-request-id"
# Trailing metadata on a refusal that says when to come back: whole seconds, as HTTP's header.
RETRY_AFTER_METADATA = "retry-after"
# Trailing metadata on an answer in input order because NIM failed (RERANKER_FAIL_OPEN).
FALLBACK_METADATA = "x-reranker-fallback"

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


def documents_to_proto(
    documents: Sequence[str | bytes | Document],
) -> tuple[list[str], dict[int, bytes]]:
    """Client side: ``RankRequest.documents`` and ``.document_images`` for ``documents``.

    A ``str`` is text, even one that looks like a data URL; ``bytes`` are an image-only
    document; a ``Document`` is text, an image, or both. An image given as a data URL is sent
    as its bytes; the server checks what they are.
    """
    texts: list[str] = []
    images: dict[int, bytes] = {}
    for index, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, Document):
            texts.append(document.text)
            if document.image is not None:
                images[index] = _image_bytes(document.image, index)
        elif isinstance(document, (bytes, bytearray, memoryview)):
            texts.append("")
            images[index] = bytes(document)
        else:
            raise TypeError(
                f"documents[{index}]: expected str, bytes or Document, "
                f"got {type(document).__name__}"
            )
    return texts, images


def document_images_from_proto(request: pb.RankRequest) -> dict[int, bytes]:
    """Server side: ``document_images`` by document position, each key checked to be one."""
    images = request.document_images
    if not images:
        return {}
    count = len(request.documents)
    for index in images:
        if index >= count:
            raise invalid_argument(
                f"document_images[{index}]: no such document ({count} documents)"
            )
    return dict(images)


def _image_bytes(image: object, index: int) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if not isinstance(image, str):
        raise TypeError(
            f"documents[{index}].image: expected bytes or a data URL, got {type(image).__name__}"
        )
    header, comma, payload = image.partition(",")
    header = header.strip().lower()
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise invalid_argument(
            f"documents[{index}].image: not a data URL; send the image's bytes or "
            "data:image/png;base64,..."
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"documents[{index}].image: not valid base64") from None


def hit_from_proto(message: pb.Hit, properties: Sequence[str] | None = None) -> Hit:
    """The hit, with only the named ``properties`` converted when they are given: those are
    all the core reads, and a hit may carry many more. ``binary_properties`` join the others
    as ``bytes``."""
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
    if message.binary_properties:
        _add_binary(converted, message, properties)
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


def _add_binary(
    converted: dict[str, Any], message: pb.Hit, properties: Sequence[str] | None
) -> None:
    fields = message.properties.fields
    for name, value in message.binary_properties.items():
        if name in fields:
            raise invalid_argument(
                f"hit {message.id!r}: property {name!r} is in both properties and binary_properties"
            )
        if properties is None or name in properties:
            converted[name] = value


def hit_to_proto(hit: Hit) -> pb.Hit:
    """Client side: ``bytes`` properties go into ``binary_properties`` (a Struct holds none)."""
    properties = hit.properties
    binary = {
        name: bytes(value)
        for name, value in properties.items()
        if isinstance(value, (bytes, bytearray, memoryview))
    }
    if binary:
        properties = {name: value for name, value in properties.items() if name not in binary}
    return pb.Hit(
        id=hit.id,
        properties=dict_to_struct(properties),
        score=hit.score,
        distance=hit.distance,
        search_type=_SEARCH_TYPE_TO_PROTO[hit.search_type],
        binary_properties=binary,
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
