"""The wheel and the sdist carry what their users need: the licence, the .proto, and (sdist)
tests that run from the unpacked archive."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support import SCRIPT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist built from a copy of the tracked files (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name.decode()).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return out


def test_the_wheel_carries_the_licence_and_the_proto(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reranker_nvidia/v1/reranker_service.proto" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith("tests/") for name in names)


def test_the_sdist_runs_its_own_tests(dist: Path, tmp_path: Path) -> None:
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    [root] = tmp_path.iterdir()
    for needed in ("LICENSE", "tests/conftest.py", "tests/support.py", "tests/wire/INDEX.md"):
        assert (root / needed).is_file(), needed
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_endpoints.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout


def test_the_proto_command_finds_the_installed_proto() -> None:
    path = subprocess.run([SCRIPT, "proto"], capture_output=True, text=True, check=True).stdout
    assert (
        Path(path.strip()).read_text()
        == (REPO / "proto/reranker_nvidia/v1/reranker_service.proto").read_text()
    )
    content = subprocess.run(
        [SCRIPT, "proto", "--print"], capture_output=True, text=True, check=True
    ).stdout
    assert content.startswith("syntax") or "package reranker_nvidia.v1;" in content
