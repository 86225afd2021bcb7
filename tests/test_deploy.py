"""The Dockerfile and the Weaviate compose file agree with each other and with the settings.

No Docker engine runs here: both files are parsed and checked, and the image's health check
command is run against a real sidecar.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from reranker_nvidia.settings import Settings
from tests.conftest import SidecarFactory
from tests.support import SCRIPT

REPO = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    final = max(i for i, (instruction, _) in enumerate(pairs) if instruction == "FROM")
    return [(instruction.upper(), rest) for instruction, rest in pairs[final:]]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.weaviate.yml").read_text())
    return loaded


def instruction(name: str) -> list[str]:
    return [rest for found, rest in dockerfile() if found == name]


def test_dockerfile_runs_the_sidecar_as_non_root_on_the_default_ports() -> None:
    defaults = Settings()
    assert instruction("FROM")[0].startswith("python:") and "slim" in instruction("FROM")[0]
    user = instruction("USER")[-1]
    assert user not in ("root", "0")
    exposed = {int(port) for line in instruction("EXPOSE") for port in line.split()}
    assert exposed == {defaults.http_port, defaults.grpc_port}
    assert instruction("CMD") == ['["reranker-nvidia", "serve"]']
    env = " ".join(instruction("ENV"))
    assert f"RERANKER_HTTP_PORT={defaults.http_port}" in env
    assert f"RERANKER_GRPC_PORT={defaults.grpc_port}" in env


def test_dockerfile_installs_the_package_from_the_repo() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md ./" in text
    assert "COPY reranker_nvidia ./reranker_nvidia" in text
    assert "pip install --no-cache-dir ." in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_healthcheck_probes_readiness(make_sidecar: SidecarFactory) -> None:
    assert instruction("HEALTHCHECK")[0].endswith('CMD ["reranker-nvidia", "healthcheck"]')
    sidecar = make_sidecar()
    env = {
        **os.environ,
        "RERANKER_HTTP_PORT": str(sidecar.server.http_port),
        "RERANKER_HOST": "0.0.0.0",
    }
    healthy = subprocess.run([SCRIPT, "healthcheck"], env=env, capture_output=True, text=True)
    assert (healthy.returncode, healthy.stdout.strip()) == (0, "ready")

    env["RERANKER_HTTP_PORT"] = "9"  # nothing listens there
    unhealthy = subprocess.run([SCRIPT, "healthcheck"], env=env, capture_output=True, text=True)
    assert (unhealthy.returncode, unhealthy.stdout.strip()) == (1, "not ready")


def test_compose_points_weaviate_at_the_sidecar() -> None:
    services = compose()["services"]
    weaviate = services["weaviate"]
    assert "reranker-nvidia" in services
    image, _, tag = weaviate["image"].rpartition(":")
    assert image.endswith("semitechnologies/weaviate")
    assert tuple(int(part) for part in tag.split(".")[:2]) >= (1, 29), "pinned Weaviate >= 1.29"

    modules = weaviate["environment"]["ENABLE_MODULES"].split(",")
    assert {"reranker-transformers", "reranker-nvidia"} <= set(modules)
    http_port = Settings().http_port
    assert (
        weaviate["environment"]["RERANKER_INFERENCE_API"] == f"http://reranker-nvidia:{http_port}"
    )
    assert weaviate["depends_on"]["reranker-nvidia"]["condition"] == "service_healthy"


def test_compose_builds_the_sidecar_with_the_callers_key_and_real_settings() -> None:
    sidecar = compose()["services"]["reranker-nvidia"]
    assert sidecar["build"] == "."
    assert (REPO / "Dockerfile").exists()
    env = sidecar["environment"]
    assert env["NVIDIA_APIKEY"].startswith("${NVIDIA_APIKEY")
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith("RERANKER_"):
            assert name.removeprefix("RERANKER_").lower() in fields, f"{name} is no setting"
    defaults = Settings()
    container_ports = {int(mapping.split(":")[-1]) for mapping in sidecar["ports"]}
    assert container_ports == {defaults.http_port, defaults.grpc_port}
    exposed = {int(port) for line in instruction("EXPOSE") for port in line.split()}
    assert container_ports <= exposed


def test_compose_offers_self_hosted_nim_as_a_profile() -> None:
    nim = compose()["services"]["nim"]
    assert nim["profiles"] == ["self-hosted-nim"]
    assert nim["image"].startswith("nvcr.io/nim/")
    text = (REPO / "docker-compose.weaviate.yml").read_text()
    assert "RERANKER_BASE_URL=http://nim:8000" in text
