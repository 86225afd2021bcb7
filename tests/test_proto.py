"""The committed stubs match proto/, and the proto follows the style Go users expect."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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
