"""The package's layers, as its imports show them: no cycles, surfaces that use the core only
through its package API, a core that knows no surface, and a client that stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reranker_nvidia"
ROOT = "reranker_nvidia"
SURFACES = (f"{ROOT}.web", f"{ROOT}.rpc")
CORE = f"{ROOT}.core"
CLIENT_SIDE = {f"{ROOT}.client", f"{ROOT}.types", f"{ROOT}.errors", f"{ROOT}.messages"}
ABOVE_THE_CORE = (f"{ROOT}.web", f"{ROOT}.rpc", f"{ROOT}.server", f"{ROOT}.cli", f"{ROOT}.demo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    }


def imports(path: Path, known: set[str]) -> Iterator[str]:
    """Every project module ``path`` imports, at any depth of the file (type-only ones too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module; `from module import name` not.
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known
                else node.module
                for alias in node.names
            ]
        else:
            continue
        yield from (name for name in names if name.startswith(ROOT))


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found) | {f"{ROOT}.v1.reranker_service_pb2", f"{ROOT}.v1.reranker_service_pb2_grpc"}
    return {name: set(imports(path, known)) - {name} for name, path in found.items()}


def test_no_module_takes_part_in_an_import_cycle() -> None:
    edges = graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(
            [*visiting[visiting.index(module) :], module]
        )
        visiting.append(module)
        for target in sorted(edges.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)


def test_surfaces_use_the_core_only_through_its_package_api() -> None:
    for module, targets in graph().items():
        if module.startswith(SURFACES):
            internals = sorted(t for t in targets if t.startswith(CORE + "."))
            assert not internals, f"{module} imports core internals {internals}"


def test_the_core_knows_no_surface_and_no_server() -> None:
    for module, targets in graph().items():
        if module == CORE or module.startswith(CORE + "."):
            above = sorted(t for t in targets if t.startswith(ABOVE_THE_CORE))
            assert not above, f"{module} imports {above}"


def test_the_client_side_imports_nothing_of_the_server() -> None:
    for module, targets in graph().items():
        if module in CLIENT_SIDE:
            allowed = CLIENT_SIDE | {ROOT, f"{ROOT}.v1"}
            outside = sorted(
                t for t in targets if t not in allowed and not t.startswith(f"{ROOT}.v1.")
            )
            assert not outside, f"{module} imports {outside}"


def test_importing_the_client_loads_grpc_and_protobuf_only() -> None:
    probe = (
        "import sys, reranker_nvidia.client\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'reranker_nvidia', 'httpx', 'fastapi', 'starlette', 'prometheus_client', "
        "'pydantic', 'pydantic_settings', 'uvicorn', 'orjson'})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(loaded) == [
        "reranker_nvidia",
        "reranker_nvidia.client",
        "reranker_nvidia.errors",
        "reranker_nvidia.messages",
        "reranker_nvidia.types",
        "reranker_nvidia.v1",
        "reranker_nvidia.v1.reranker_service_pb2",
        "reranker_nvidia.v1.reranker_service_pb2_grpc",
    ]
