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
from pydantic import SecretStr

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


def build_stage() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs of the first stage, where the package is built."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    second = [i for i, (instruction, _) in enumerate(pairs) if instruction == "FROM"][1]
    return [(instruction.upper(), rest) for instruction, rest in pairs[:second]]


def test_the_build_stage_copies_everything_pip_install_needs() -> None:
    """What pyproject.toml names (readme, licence files, the package) is copied before
    ``pip install .`` runs, and nothing the build needs is left out by .dockerignore."""
    pyproject = (REPO / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', pyproject, re.M)
    licences = re.search(r"^license-files = \[([^\]]*)\]", pyproject, re.M)
    assert readme and licences
    needed = {"pyproject.toml", readme[1], *re.findall(r'"([^"]+)"', licences[1])}
    needed.add("reranker_nvidia")
    copied: set[str] = set()
    installed = False
    for instruction, rest in build_stage():
        if instruction == "COPY":
            copied.update(Path(source).name for source in rest.split()[:-1])
        if instruction == "RUN" and re.search(r"pip install\b.*\s\.(\s|$)", rest):
            installed = True
            assert needed <= copied, f"not copied before pip install: {needed - copied}"
    assert installed, "the build stage installs the package with pip"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    assert not needed & set(ignored)


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
    assert tuple(int(part) for part in tag.split(".")) >= (1, 36, 19), "a current 1.36 patch"
    assert weaviate["environment"]["MODULES_VALIDATE_BASE_URL"] == "false"
    assert weaviate["environment"]["NVIDIA_APIKEY"].startswith("${NVIDIA_APIKEY")

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


def host_ports(service: dict[str, Any]) -> set[int]:
    return {int(mapping.split(":")[0]) for mapping in service.get("ports", ())}


def test_compose_host_ports_leave_make_run_its_own() -> None:
    services = compose()["services"]
    defaults = Settings()
    taken = [port for service in services.values() for port in host_ports(service)]
    assert len(taken) == len(set(taken)), "two services on one host port"
    assert not {defaults.http_port, defaults.grpc_port} & set(taken)


def test_compose_offline_profile_runs_the_emulator_from_the_same_image() -> None:
    services = compose()["services"]
    emulator = services["nim-emulator"]
    assert emulator["profiles"] == ["offline"]
    assert emulator["image"] == services["reranker-nvidia"]["image"]
    assert emulator["build"] == services["reranker-nvidia"]["build"]
    command = emulator["command"]
    assert command[:2] == ["reranker-nvidia", "emulate-nim"]
    port = command[command.index("--port") + 1]
    text = (REPO / "docker-compose.weaviate.yml").read_text()
    assert f"RERANKER_BASE_URL=http://nim-emulator:{port}" in text
    # The emulator's CLI takes exactly these flags.
    help_text = subprocess.run(
        [SCRIPT, *command[1:2], "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--host" in help_text and "--port" in help_text


def manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_sidecar_probes_and_ports_match_the_settings() -> None:
    defaults = Settings()
    [deployment] = manifests(REPO / "deploy/kubernetes/deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": defaults.http_port, "grpc": defaults.grpc_port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/.well-known/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/.well-known/live"
    assert container["envFrom"] == [{"secretRef": {"name": "reranker-nvidia"}}]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > defaults.shutdown_grace_s + int(
        container["lifecycle"]["preStop"]["exec"]["command"][1]
    )
    [secret] = manifests(REPO / "deploy/kubernetes/secret.yaml")
    assert "NVIDIA_APIKEY" in secret["stringData"]
    [service] = manifests(REPO / "deploy/kubernetes/service.yaml")
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports)


def test_weaviate_helm_values_point_the_module_at_the_sidecar() -> None:
    [by_url] = manifests(REPO / "deploy/weaviate-helm/values-inference-url.yaml")
    module = by_url["modules"]["reranker-transformers"]
    assert module["enabled"] is False
    [service] = manifests(REPO / "deploy/kubernetes/service.yaml")
    http = next(port["port"] for port in service["spec"]["ports"] if port["name"] == "http")
    assert module["inferenceUrl"] == f"http://{service['metadata']['name']}:{http}"

    [as_module] = manifests(REPO / "deploy/weaviate-helm/values-sidecar-as-module.yaml")
    module = as_module["modules"]["reranker-transformers"]
    assert module["enabled"] is True
    assert {"registry", "repo", "tag"} <= set(module)
    for values in (by_url, as_module):
        assert values["env"]["MODULES_VALIDATE_BASE_URL"] is False
    [kustomization] = manifests(REPO / "deploy/weaviate-helm/post-render/kustomization.yaml")
    [patch] = kustomization["patches"]
    assert patch["target"]["name"] == module["fullnameOverride"]
    assert yaml.safe_load(patch["patch"])[0]["value"] == [
        {"secretRef": {"name": "reranker-nvidia"}}
    ]


def test_compose_offers_self_hosted_nim_as_a_profile() -> None:
    nim = compose()["services"]["nim"]
    assert nim["profiles"] == ["self-hosted-nim"]
    assert nim["image"].startswith("nvcr.io/nim/")
    text = (REPO / "docker-compose.weaviate.yml").read_text()
    assert "RERANKER_BASE_URL=http://nim:8000" in text


KUBERNETES = REPO / "deploy/kubernetes"
# The oldest Kubernetes minor these manifests are written for (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.30"


def test_every_kubernetes_manifest_validates_against_the_schemas() -> None:
    """Offline, against the schemas kubernetes-validate ships, strictly (no unknown field)."""
    import kubernetes_validate

    files = sorted(KUBERNETES.glob("*.yaml"))
    resources = [f for f in files if f.name != "kustomization.yaml"]
    assert {doc["kind"] for f in resources for doc in manifests(f)} >= {
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "StatefulSet",
    }
    for path in resources:
        for doc in manifests(path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    [kustomization] = manifests(KUBERNETES / "kustomization.yaml")
    assert set(kustomization["resources"]) == {
        f.name for f in resources if f.name != "secret.yaml"
    }, "every manifest but the Secret (whose value is the operator's) is applied with -k"


def test_the_replicas_share_the_valkey_of_the_manifests() -> None:
    [deployment] = manifests(KUBERNETES / "deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    service, statefulset = manifests(KUBERNETES / "valkey.yaml")
    port = service["spec"]["ports"][0]["port"]
    assert env["RERANKER_CACHE_URL"] == f"redis://{service['metadata']['name']}:{port}/0"
    [secret] = manifests(KUBERNETES / "secret.yaml")
    assert "RERANKER_CACHE_SECRET" in secret["stringData"], "the replicas' shared secret"
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    settings = Settings(
        cache_url=env["RERANKER_CACHE_URL"],
        cache_secret=SecretStr("0" * 64),
        upstream_rpm=env["RERANKER_UPSTREAM_RPM"],
    )
    assert settings.cache_url is not None and settings.upstream_rpm
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    [store] = statefulset["spec"]["template"]["spec"]["containers"]
    assert {"--maxmemory-policy", "allkeys-lru"} <= set(store["args"]), "a full store evicts"
    assert store["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_autoscaler_and_budget_target_the_sidecar() -> None:
    [deployment] = manifests(KUBERNETES / "deployment.yaml")
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [autoscaler] = manifests(KUBERNETES / "autoscaler.yaml")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == name
    assert autoscaler["spec"]["minReplicas"] >= 2
    [budget] = manifests(KUBERNETES / "disruption-budget.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]
