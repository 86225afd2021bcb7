"""The gRPC API from Go: stubs generated from proto/ by protoc-gen-go and protoc-gen-go-grpc, a
client built against them (tests/go_client/main.go) and run against a real sidecar.

Go is not part of the Python toolchain `make test` installs: the test runs where Go, the two
protoc plugins and Debian's Go gRPC sources are present (`apt-get install golang-go
protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
golang-github-golang-protobuf-1-5-dev`), and says so where they are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reranker_nvidia.emulator import lexical_logit, terms
from tests.support import Sidecar

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
GO_SOURCES = Path("/usr/share/gocode")
TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
if not (GO_SOURCES / "src/google.golang.org/grpc").is_dir():
    MISSING.append(str(GO_SOURCES / "src/google.golang.org/grpc"))


@pytest.mark.skipif(bool(MISSING), reason=f"Go toolchain not installed: {', '.join(MISSING)}")
def test_a_go_client_built_from_the_proto_ranks_through_the_sidecar(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(
        [
            "protoc",
            f"-I{REPO / 'proto'}",
            "-I/usr/include",
            f"--go_out={source}",
            f"--go-grpc_out={source}",
            str(REPO / "proto/reranker_nvidia/v1/reranker_service.proto"),
        ],
        check=True,
    )
    client = source / "client"
    client.mkdir()
    shutil.copy(REPO / "tests/go_client/main.go", client / "main.go")
    environment = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{tmp_path}:{GO_SOURCES}",
        "GOFLAGS": "",
    }
    built = subprocess.run(
        ["go", "build", "-o", str(tmp_path / "client"), "."],
        cwd=client,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(tmp_path / "client"), sidecar.grpc_target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = [line.split() for line in ran.stdout.splitlines()]
    logits = [lexical_logit(terms("which way"), terms(d)) for d in ("this way", "bananas")]
    best_first = sorted(range(2), key=lambda i: -logits[i])
    assert [int(index) for index, _ in lines] == best_first
    assert [float(score) for _, score in lines] == pytest.approx(
        [logits[i] for i in best_first], abs=1e-4
    )
