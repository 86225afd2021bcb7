"""Generate the Python gRPC stubs (and their type stubs) from proto/ into an output root,
with a copy of each .proto beside them.

``make proto`` runs it into the repository root; the test suite runs it into a temporary
directory and compares, so committed stubs can never drift from the .proto files.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.rglob("*.proto"))


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{name} not found next to {sys.executable}; run `make install`")
    return f"--plugin={name}={path}"


def generate(out_root: Path) -> list[Path]:
    """Write the stubs under ``out_root``; return the files written."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        _plugin("protoc-gen-mypy"),
        _plugin("protoc-gen-mypy_grpc"),
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(path) for path in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in PROTO_FILES:
        relative = proto.relative_to(PROTO_ROOT)
        # The .proto itself ships in the package too, for users of other languages.
        shutil.copyfile(proto, out_root / relative)
        written.append(out_root / relative)
        stem = relative.with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            written.append(out_root / f"{stem}{suffix}")
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent
    for path in generate(out):
        print(path)
