"""The committed stubs match proto/, and the proto follows the style Go users expect."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

from reranker_nvidia.v1 import reranker_service_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto" / "reranker_nvidia" / "v1" / "reranker_service.proto"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)  # type: ignore[attr-defined]
    assert written, "no stubs generated"
    for fresh in written:
        committed = REPO / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"


def test_proto_follows_buf_style() -> None:
    text = PROTO.read_text()
    assert re.search(r"^package reranker_nvidia\.v1;$", text, re.M), "versioned package"
    assert re.search(r'^option go_package = "[^"]+;rerankernvidiav1";$', text, re.M)
    services = re.findall(r"^service (\w+) \{", text, re.M)
    assert services == ["RerankerService"]
    for rpc, request, response in re.findall(r"rpc (\w+)\((\w+)\) returns \((\w+)\)", text):
        assert (request, response) == (f"{rpc}Request", f"{rpc}Response")
    for enum_name, body in re.findall(r"^enum (\w+) \{(.*?)^\}", text, re.M | re.S):
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper()
        values = re.findall(r"^\s*(\w+) = (\d+);", body, re.M)
        assert values[0] == (f"{prefix}_UNSPECIFIED", "0")
        assert all(name.startswith(prefix + "_") for name, _ in values)


# Every field and enum value of the first release, as (number, label and type): a later
# release may add fields but never renumber, retype or rename one of these, so that a client
# built from an older .proto keeps working against a newer server, and the other way round.
FIRST_RELEASE_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "RankOptions": {"model": (1, "string"), "base_url": (2, "string"), "truncate": (3, "Truncate")},
    "Usage": {"prompt_tokens": (1, "int64"), "total_tokens": (2, "int64")},
    "RankRequest": {
        "query": (1, "string"),
        "documents": (2, "repeated string"),
        "options": (3, "RankOptions"),
        "top_n": (4, "optional uint32"),
    },
    "RankedDocument": {"index": (1, "uint32"), "score": (2, "double")},
    "RankResponse": {
        "results": (1, "repeated RankedDocument"),
        "model": (2, "string"),
        "usage": (3, "Usage"),
    },
    "Hit": {
        "id": (1, "string"),
        "properties": (2, "Struct"),
        "score": (3, "optional double"),
        "distance": (4, "optional double"),
        "search_type": (5, "SearchType"),
    },
    "RerankRequest": {
        "hits": (1, "repeated Hit"),
        "properties": (2, "repeated string"),
        "query": (3, "string"),
        "top_n": (4, "optional uint32"),
        "module_config": (5, "Struct"),
        "options": (6, "RankOptions"),
    },
    "RerankedHit": {
        "hit": (1, "Hit"),
        "original_position": (2, "uint32"),
        "rerank_score": (3, "optional double"),
    },
    "RerankResponse": {
        "hits": (1, "repeated RerankedHit"),
        "model": (2, "string"),
        "usage": (3, "Usage"),
    },
    "GetMetaRequest": {},
    "GetMetaResponse": {
        "name": (1, "string"),
        "version": (2, "string"),
        "model": (3, "string"),
        "base_url": (4, "string"),
        "endpoint": (5, "string"),
        "max_passages_per_call": (6, "uint32"),
        "max_documents": (7, "uint32"),
        "server_key_configured": (8, "bool"),
    },
}
FIRST_RELEASE_ENUMS = {
    "Truncate": {"TRUNCATE_UNSPECIFIED": 0, "TRUNCATE_NONE": 1, "TRUNCATE_END": 2},
    "SearchType": {
        "SEARCH_TYPE_UNSPECIFIED": 0,
        "SEARCH_TYPE_VECTOR": 1,
        "SEARCH_TYPE_KEYWORD": 2,
        "SEARCH_TYPE_HYBRID": 3,
    },
}


def _shape(field: descriptor_pb2.FieldDescriptorProto) -> str:
    kind = field.type_name.rsplit(".", 1)[-1] or _TYPE_NAMES[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {kind}"
    return f"optional {kind}" if field.proto3_optional else kind


_TYPE_NAMES = {
    number: name.removeprefix("TYPE_").lower()
    for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def _current_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    return proto


def test_fields_of_the_first_release_keep_their_numbers_types_and_names() -> None:
    current = {message.name: message for message in _current_file().message_type}
    for name, fields in FIRST_RELEASE_FIELDS.items():
        message = current[name]
        now = {field.name: (field.number, _shape(field)) for field in message.field}
        for field_name, was in fields.items():
            assert now.get(field_name) == was, f"{name}.{field_name} changed: {was} -> {now}"
        added = {number for number, _ in now.values()} - {number for number, _ in fields.values()}
        assert all(number > max((n for n, _ in fields.values()), default=0) for number in added)
    enums = {enum.name: enum for enum in _current_file().enum_type}
    for name, values in FIRST_RELEASE_ENUMS.items():
        now_values = {value.name: value.number for value in enums[name].value}
        assert {key: now_values.get(key) for key in values} == values


def _first_release_classes() -> dict[str, Any]:
    """Message classes of the first release's shape: today's .proto less every later field."""
    file = _current_file()
    for message in file.message_type:
        kept = FIRST_RELEASE_FIELDS[message.name]
        fields = [field for field in message.field if field.name in kept]
        del message.field[:]
        message.field.extend(fields)
        # Map fields' entry types go with their fields.
        entries = [nested for nested in message.nested_type if not nested.options.map_entry]
        del message.nested_type[:]
        message.nested_type.extend(entries)
    pool = descriptor_pool.DescriptorPool()
    well_known = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(well_known)
    pool.Add(well_known)
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{name}"))
        for name in FIRST_RELEASE_FIELDS
    }


def test_a_first_release_client_and_todays_server_understand_each_other() -> None:
    old = _first_release_classes()
    assert set(old["RankRequest"].DESCRIPTOR.fields_by_name) == set(
        FIRST_RELEASE_FIELDS["RankRequest"]
    )
    assert "binary_properties" not in old["Hit"].DESCRIPTOR.fields_by_name
    options = {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "truncate": pb.TRUNCATE_END}
    sent = old["RankRequest"](
        query="q", documents=["a", "b"], options=old["RankOptions"](**options), top_n=1
    )
    read = pb.RankRequest.FromString(sent.SerializeToString())
    assert (read.query, list(read.documents), read.top_n) == ("q", ["a", "b"], 1)
    assert (read.options.model, read.options.truncate) == (options["model"], pb.TRUNCATE_END)
    assert dict(read.document_images) == {} and read.HasField("top_n")

    properties = struct_pb2.Struct()
    properties.update({"title": "red square"})
    old_hit = old["Hit"](
        id="h", properties=properties, score=0.5, search_type=pb.SEARCH_TYPE_HYBRID
    )
    hit = pb.Hit.FromString(old_hit.SerializeToString())
    assert (hit.id, hit.score, hit.search_type) == ("h", 0.5, pb.SEARCH_TYPE_HYBRID)
    assert hit.properties == properties and dict(hit.binary_properties) == {}
    assert not hit.HasField("distance")

    # Today's messages, images and all, read by a first-release peer: the old fields unchanged.
    new = pb.RankRequest(query="q", documents=["", "b"], document_images={0: b"\x89PNG"}, top_n=2)
    read_old = old["RankRequest"].FromString(new.SerializeToString())
    assert (read_old.query, list(read_old.documents), read_old.top_n) == ("q", ["", "b"], 2)
    new_hit = pb.Hit(id="h", binary_properties={"blob": b"\xff\xd8\xff"}, distance=0.25)
    request = pb.RerankRequest(hits=[new_hit], properties=["blob"], query="q")
    read_request = old["RerankRequest"].FromString(request.SerializeToString())
    assert [h.id for h in read_request.hits] == ["h"] and read_request.hits[0].distance == 0.25
