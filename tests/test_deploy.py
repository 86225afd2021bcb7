"""The Dockerfile, the Weaviate compose file and the Kubernetes manifests agree with each other
and with the settings.

No Docker engine or cluster runs here: the files are parsed and checked (the manifests against
the Kubernetes schemas, the endpoint tables with the sidecar's own loader), and the image's
health check command is run against a real sidecar.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from reranker_nvidia.core.upstream.routing.table import (
    READY_PATH,
    EndpointSpec,
    load_endpoint_table,
)
from reranker_nvidia.settings import KEY_VARIABLES, Settings
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


# What the manifests' Secret holds, as a test may stand it in.
SECRET_STAND_INS = {"NVIDIA_APIKEY": "nvapi-stand-in", "RERANKER_CACHE_SECRET": "0" * 64}


def compose_commands() -> list[tuple[dict[str, str], list[str]]]:
    """(variables, profiles) of each `docker compose` command the compose file's comments give."""
    text = (REPO / "docker-compose.weaviate.yml").read_text()
    comments = "\n".join(
        line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")
    )
    commands = []
    for line in re.sub(r"\\\n", " ", comments).splitlines():
        if "docker compose" not in line:
            continue
        words = shlex.split(line)
        variables = dict(word.split("=", 1) for word in words[: words.index("docker")])
        profiles = [words[i + 1] for i, word in enumerate(words) if word == "--profile"]
        commands.append((variables, profiles))
    return commands


def interpolated(value: str, shell: Mapping[str, str]) -> str:
    """A compose value with its ${NAME} and ${NAME:-default} replaced as compose does."""

    def replace(match: re.Match[str]) -> str:
        found = shell.get(match[1], "")
        return found if found or match[2] is None else match[2]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}", replace, value)


def container_environment(service: dict[str, Any], shell: Mapping[str, str]) -> dict[str, str]:
    """The environment compose gives the service's container, run from ``shell``: a name with
    no value is passed through when the shell sets it and left out when it does not."""
    env = {}
    for name, value in service["environment"].items():
        if value is None:
            if name in shell:
                env[name] = shell[name]
        else:
            env[name] = interpolated(str(value), shell)
    return env


def on_host(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a bind mount of the service shows at ``container_path``."""
    volumes: list[str] = service.get("volumes", [])
    for volume in volumes:
        source, target, *_ = volume.split(":")
        inside = target.rstrip("/") + "/"
        if container_path.startswith(inside):
            return REPO / source / container_path.removeprefix(inside)
    raise AssertionError(f"{container_path} is on no volume of the service")


def settings_of(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process started with exactly ``env``'s keys and RERANKER_ variables reads."""
    for name in os.environ:
        if name.startswith("RERANKER_") or name in KEY_VARIABLES:
            monkeypatch.delenv(name)
    fields = set(Settings.model_fields)
    for name, value in env.items():
        if name.startswith("RERANKER_"):
            assert name.removeprefix("RERANKER_").lower() in fields, f"{name} is no setting"
        if name.startswith("RERANKER_") or name in KEY_VARIABLES:
            monkeypatch.setenv(name, value)
    return Settings()


def check_self_hosted_first(specs: tuple[EndpointSpec, ...], model: str) -> EndpointSpec:
    """Tier 1 a self-hosted NIM polled for readiness, sent no key and serving ``model``; tier 2
    hosted NIM with the server's key. Returns tier 1."""
    tiers = {spec.tier: spec for spec in specs}
    assert len(tiers) == len(specs) == 2, "one endpoint in each of two tiers"
    local, hosted = tiers[1], tiers[2]
    assert local.self_hosted and local.health_path == READY_PATH
    assert local.url.startswith("http://")
    assert (local.uses_server_key, local.key("server key")) == (False, None), (
        "the hosted key is not sent to the self-hosted NIM over plain HTTP"
    )
    assert local.serves(model), f"tier 1 serves {model}, which requests naming none ask for"
    assert not hosted.self_hosted and urlsplit(hosted.url).hostname == "ai.api.nvidia.com"
    assert hosted.uses_server_key and hosted.key("server key") == "server key"
    assert hosted.models is None, "hosted NIM answers for every model, tier 1's included"
    return local


def test_compose_passes_the_endpoint_table_through_only_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset in the shell, RERANKER_ENDPOINTS_FILE is left out of the container (an empty value
    would name no file and stop the sidecar), so the plain commands keep RERANKER_BASE_URL."""
    sidecar = compose()["services"]["reranker-nvidia"]
    assert "RERANKER_ENDPOINTS_FILE" in sidecar["environment"]
    assert sidecar["environment"]["RERANKER_ENDPOINTS_FILE"] is None
    assert all(volume.endswith(":ro") for volume in sidecar["volumes"])
    plain = [
        variables
        for variables, _ in compose_commands()
        if "RERANKER_ENDPOINTS_FILE" not in variables
    ]
    assert len(plain) == 2, "hosted NIM, and the emulator by RERANKER_BASE_URL"
    for variables in plain:
        env = container_environment(sidecar, {**variables, "NVIDIA_APIKEY": "nvapi-stand-in"})
        assert "RERANKER_ENDPOINTS_FILE" not in env
        settings = settings_of(env, monkeypatch)
        assert settings.endpoints_file is None
        assert settings.base_url == variables.get("RERANKER_BASE_URL", "https://ai.api.nvidia.com")


def test_compose_tables_put_a_self_hosted_nim_first_and_hosted_nim_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each command of the comments that names a table: the file is in the repository where
    the mount shows it, the sidecar's own loader takes it, the settings validate, and tier 1
    is a service of that command's profile on the port it listens on."""
    services = compose()["services"]
    sidecar = services["reranker-nvidia"]
    checked = set()
    for variables, profiles in compose_commands():
        if "RERANKER_ENDPOINTS_FILE" not in variables:
            continue
        shell = {**variables, "NVIDIA_APIKEY": "nvapi-stand-in"}
        env = container_environment(sidecar, shell)
        table = on_host(sidecar, env["RERANKER_ENDPOINTS_FILE"])
        assert table.is_file(), f"{table} is not in the repository"
        settings = settings_of({**env, "RERANKER_ENDPOINTS_FILE": str(table)}, monkeypatch)
        assert settings.endpoints_file == table
        local = check_self_hosted_first(load_endpoint_table(table, env), settings.model)

        [profile] = profiles
        in_profile = {name for name, s in services.items() if profile in s.get("profiles", ())}
        host, port = urlsplit(local.url).hostname, urlsplit(local.url).port
        assert host in in_profile, f"{local.url} is no service of the {profile} profile"
        nim = services[host]
        command = nim.get("command", [])
        listens = int(command[command.index("--port") + 1]) if "--port" in command else 8000
        assert port == listens, f"{local.url}: {host} listens on {listens}"
        if nim["image"].startswith("nvcr.io/nim/"):
            # NIM's image is named for the one model it runs.
            model = nim["image"].removeprefix("nvcr.io/nim/").rpartition(":")[0]
            assert local.models == frozenset({model}) and settings.model == model
        checked.add((profile, table.name))
    assert checked == {
        ("self-hosted-nim", "endpoints.toml"),
        ("offline", "endpoints-offline.toml"),
    }


def test_compose_offers_self_hosted_nim_as_a_profile() -> None:
    nim = compose()["services"]["nim"]
    assert nim["profiles"] == ["self-hosted-nim"]
    assert nim["image"].startswith("nvcr.io/nim/")
    devices = nim["deploy"]["resources"]["reservations"]["devices"]
    assert ["gpu"] in [device["capabilities"] for device in devices]


KUBERNETES = REPO / "deploy/kubernetes"
# The oldest Kubernetes minor these manifests are written for (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.30"


def test_every_kubernetes_manifest_validates_against_the_schemas() -> None:
    """Offline, against the schemas kubernetes-validate ships, strictly (no unknown field)."""
    import kubernetes_validate

    files = sorted(KUBERNETES.glob("*.yaml"))
    resources = [f for f in files if f.name != "kustomization.yaml"]
    nim = [f for f in sorted(KUBERNETES.glob("nim/*.yaml")) if f.name != "kustomization.yaml"]
    assert {doc["kind"] for f in resources for doc in manifests(f)} >= {
        "Deployment",
        "Service",
        "Secret",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "StatefulSet",
    }
    assert {doc["kind"] for f in nim for doc in manifests(f)} == {"Deployment", "Service"}
    for path in resources + nim:
        for doc in manifests(path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    [kustomization] = manifests(KUBERNETES / "kustomization.yaml")
    assert set(kustomization["resources"]) == {
        f.name for f in resources if f.name != "secret.yaml"
    }, "every manifest but the Secret (whose value is the operator's) is applied with -k"
    [nim_kustomization] = manifests(KUBERNETES / "nim/kustomization.yaml")
    assert set(nim_kustomization["resources"]) == {f.name for f in nim}


def test_kubernetes_endpoint_table_is_the_config_map_mounted_where_the_setting_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [deployment] = manifests(KUBERNETES / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert "RERANKER_BASE_URL" not in env, "a table is given: RERANKER_BASE_URL is not used"
    where = Path(env["RERANKER_ENDPOINTS_FILE"])

    # The ConfigMap mounted as a directory (a subPath mount never sees an edit), read-only, on a
    # root filesystem that stays read-only.
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == where.parent]
    assert mount["readOnly"] is True and "subPath" not in mount
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    [config_map] = manifests(KUBERNETES / "endpoints.yaml")
    assert config_map["kind"] == "ConfigMap"
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert "items" not in volume["configMap"], "every key shows under its own name"
    table = tmp_path / where.name
    table.write_text(config_map["data"][where.name])

    [secret] = manifests(KUBERNETES / "secret.yaml")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    secrets = {name: SECRET_STAND_INS[name] for name in secret["stringData"]}
    settings = settings_of({**env, **secrets, "RERANKER_ENDPOINTS_FILE": str(table)}, monkeypatch)
    assert settings.endpoints_file == table and settings.cache_secret is not None
    local = check_self_hosted_first(load_endpoint_table(table, {**env, **secrets}), settings.model)

    # Tier 1 is the example NIM's Service, whose pods probe the readiness the sidecar polls.
    service, nim = manifests(KUBERNETES / "nim/nim-reranker.yaml")
    url = urlsplit(local.url)
    assert url.hostname == service["metadata"]["name"]
    [port] = service["spec"]["ports"]
    assert url.port == port["port"]
    labels = nim["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [nim_container] = nim["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in nim_container["ports"]}
    model = nim_container["image"].removeprefix("nvcr.io/nim/").rpartition(":")[0]
    assert local.models == frozenset({model}) and settings.model == model
    assert nim_container["readinessProbe"]["httpGet"]["path"] == local.health_path
    assert nim_container["startupProbe"]["httpGet"]["path"] == local.health_path
    assert int(nim_container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


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
