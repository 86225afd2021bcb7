"""Several NIM endpoints behind one sidecar: three emulators on loopback, two in tier 1 and one
in tier 2, named in a RERANKER_ENDPOINTS_FILE.

A replica killed mid-load loses no request; all of tier 1 down, tier 2 answers; a restarted
replica is found by its readiness probe and gets traffic again; a retry storm against a failing
NIM stays within the retry budget; a slow replica's calls are hedged; fail-open answers in input
order with its marker on every surface, and is off by default.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reranker_nvidia.emulator import EmulatorState, Fault, create_emulator_app, lexical_logit, terms
from reranker_nvidia.server.asgi import AsgiServer
from tests.conftest import SidecarFactory
from tests.support import SCRIPT, BackgroundLoop, Emulator, Sidecar, clean_environment, eventually
from tests.surfaces import SURFACES, Call, Surface

QUERY = "which way should i go"


@dataclass
class Replica:
    """An emulator that can be stopped and started again on the same port."""

    background: BackgroundLoop
    state: EmulatorState
    server: AsgiServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = AsgiServer(create_emulator_app(self.state), "127.0.0.1", self.port)
        self.background.run(self.server.start())
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.background.run(self.server.stop(0.5))
            self.server = None


@pytest.fixture
def replicas(background: BackgroundLoop) -> Iterator[list[Replica]]:
    started = [Replica(background, EmulatorState()) for _ in range(3)]
    for replica in started:
        replica.start()
    yield started
    for replica in started:
        replica.stop()


def table(path: Path, replicas: list[Replica], **extra: str) -> Path:
    entries = []
    for index, (replica, tier) in enumerate(zip(replicas, (1, 1, 2), strict=True)):
        lines = [f'url = "{replica.url}"', f"tier = {tier}", f'name = "nim-{index}"']
        lines += [f"{key} = {value}" for key, value in extra.items()]
        entries.append("[[endpoints]]\n" + "\n".join(lines))
    path.write_text("\n\n".join(entries) + "\n")
    return path


def rerank(sidecar: Sidecar, documents: list[str]) -> httpx.Response:
    return httpx.post(
        sidecar.http_url + "/rerank", json={"query": QUERY, "documents": documents}, timeout=60
    )


def expected(documents: list[str]) -> list[float]:
    return [lexical_logit(terms(QUERY), terms(document)) for document in documents]


def scores(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [entry["score"] for entry in response.json()["scores"]]


def test_tier_one_shares_the_calls_and_tier_two_waits(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(endpoints_file=table(tmp_path / "endpoints.toml", replicas))
    for n in range(20):
        assert scores(rerank(sidecar, [f"way {n}"])) == pytest.approx(expected([f"way {n}"]))
    calls = [len(replica.state.calls) for replica in replicas]
    assert calls[0] == calls[1] == 10, calls
    assert calls[2] == 0


def test_killing_a_tier_one_replica_mid_load_loses_no_request(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas), max_retries=2
    )
    answers: list[httpx.Response] = []
    killed = threading.Event()

    def load(worker: int) -> None:
        for n in range(15):
            if worker == 0 and n == 5:
                replicas[0].stop()
                killed.set()
            answers.append(rerank(sidecar, [f"go this way {worker} {n}", "bananas"]))

    threads = [threading.Thread(target=load, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert killed.is_set()
    assert len(answers) == 60
    for response in answers:
        documents = [entry["document"] for entry in response.json()["scores"]]
        assert scores(response) == pytest.approx(expected(documents))
    assert len(replicas[1].state.calls) > 0


def test_all_of_tier_one_down_tier_two_answers(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas), max_retries=2
    )
    replicas[0].stop()
    replicas[1].stop()
    for n in range(8):
        assert scores(rerank(sidecar, [f"way {n}"])) == pytest.approx(expected([f"way {n}"]))
    assert len(replicas[2].state.calls) == 8
    metrics = httpx.get(sidecar.http_url + "/metrics").text
    assert re.search(r'reranker_endpoint_state\{endpoint="nim-0"\} 2', metrics), "nim-0 open"
    assert 'reranker_endpoint_calls_total{endpoint="nim-2"} 8.0' in metrics


def test_a_restarted_replica_is_found_by_its_probe_and_gets_traffic_again(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas),
        health_interval_s=0.05,
        max_retries=2,
    )
    router = sidecar.server.core.router
    first = router.endpoints[0]
    replicas[0].stop()
    asyncio.run(eventually(lambda: first.ready is False))
    for n in range(4):
        scores(rerank(sidecar, [f"way {n}"]))
    assert first.state.value == "open"
    calls_before = len(replicas[0].state.calls)
    replicas[0].start()
    asyncio.run(eventually(lambda: first.ready is True))
    for n in range(6):
        scores(rerank(sidecar, [f"back {n}"]))
    assert len(replicas[0].state.calls) > calls_before, "the restarted replica got no call"
    assert first.state.value == "closed"


def test_a_retry_storm_stays_within_the_retry_budget(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas),
        max_retries=5,
        retry_base_delay_s=0,
        retry_budget=0.2,
        retry_budget_min_per_s=0,
        breaker_failures=1000,
    )
    for replica in replicas:
        replica.state.faults.extend(Fault(503, {"detail": "overloaded"}) for _ in range(1000))
    requests = 40
    for n in range(requests):
        assert rerank(sidecar, [f"way {n}"]).status_code == 502
    calls = sum(len(replica.state.calls) for replica in replicas)
    # Without the budget: 40 x 6 = 240 calls.
    assert requests <= calls <= requests * 1.2 + 1, calls
    metrics = httpx.get(sidecar.http_url + "/metrics").text
    refused = re.search(r'reranker_retries_total\{outcome="refused"\} (\S+)', metrics)
    assert refused is not None and float(refused[1]) > 0


def test_a_slow_replica_is_hedged(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas),
        hedge_percentile=90,
        hedge_budget=1.0,
    )
    for n in range(60):  # every tier-1 endpoint learns its latency
        scores(rerank(sidecar, [f"warm {n}"]))
    replicas[0].state.delay_s = 30.0
    for n in range(4):
        documents = [f"hedged {n}"]
        assert scores(rerank(sidecar, documents)) == pytest.approx(expected(documents))
    router = sidecar.server.core.router
    assert router.endpoints[1].hedges_won >= 1


@pytest.mark.parametrize("surface", SURFACES, ids=str)
def test_fail_open_answers_in_input_order_with_its_marker(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path, surface: Surface
) -> None:
    path = table(tmp_path / "endpoints.toml", replicas)
    documents = ("bananas", "go this way", "which way should i go")
    closed = make_sidecar(endpoints_file=path)
    for replica in replicas:
        replica.stop()
    refused = surface.send(closed, Call(documents))
    assert refused.kind == "unavailable", refused
    opened = make_sidecar(endpoints_file=path, fail_open=True)
    answered = surface.send(opened, Call(documents))
    assert answered.kind == "ok", answered
    assert answered.scores is not None
    assert answered.scores == sorted(answered.scores, reverse=True), "input order"
    assert len(set(answered.scores)) == len(documents), "strictly descending"
    assert answered.headers is not None
    assert answered.headers.get("x-reranker-fallback") == "passthrough"
    metrics = httpx.get(opened.http_url + "/metrics").text
    assert re.search(r"reranker_fallbacks_total\{surface=\"\w+\"\} 1\.0", metrics)


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ('[[endpoints]]\nurl = "http://nim:8000"\ntier = "two"\n', "endpoints[0].tier"),
        ('[[endpoints]]\nurl = "ftp://nim"\n', "endpoints[0].url"),
        (
            '[[endpoints]]\nurl = "http://a:1"\n[[endpoints]]\nurl = "http://b:1"\nweight = 0\n',
            "endpoints[1].weight",
        ),
        ('[[endpoints]]\nurl = "http://a:1"\nmodels = ["../x"]\n', "endpoints[0].models"),
        (
            '[[endpoints]]\nurl = "http://a:1"\napi_key_env = "NOT_SET_ANYWHERE_0"\n',
            "endpoints[0].api_key_env",
        ),
        ('[[endpoints]]\nurl = "http://a:1"\nurls = "typo"\n', "endpoints[0].urls"),
        ("[[endpoints]\n", "not valid TOML"),
    ],
)
def test_a_table_with_an_error_exits_2_with_one_line(
    tmp_path: Path, content: str, names: str
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(content)
    env = {**clean_environment(), "RERANKER_ENDPOINTS_FILE": str(path)}
    result = subprocess.run(
        [SCRIPT, "serve", "--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and names in lines[0], lines[0]


def test_the_summary_and_meta_show_the_table(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path, emulator: Emulator
) -> None:
    sidecar = make_sidecar(endpoints_file=table(tmp_path / "endpoints.toml", replicas))
    meta = httpx.get(sidecar.http_url + "/meta").json()
    assert [endpoint["name"] for endpoint in meta["endpoints"]] == ["nim-0", "nim-1", "nim-2"]
    detail = httpx.get(sidecar.http_url + "/health/endpoints").json()
    assert [endpoint["state"] for endpoint in detail["endpoints"]] == ["closed"] * 3
    assert [endpoint["tier"] for endpoint in detail["endpoints"]] == [1, 1, 2]


def test_a_callers_short_deadline_does_not_open_a_shared_breaker(
    make_sidecar: SidecarFactory, replicas: list[Replica], tmp_path: Path
) -> None:
    """Calls cut short by the caller's own deadline say nothing about the endpoint: however
    many, tier 1 stays up for everyone else."""
    for replica in replicas:
        replica.state.delay_s = 0.3
    sidecar = make_sidecar(
        endpoints_file=table(tmp_path / "endpoints.toml", replicas), breaker_failures=2
    )
    for index in range(6):
        cut = httpx.post(
            sidecar.http_url + "/rerank",
            json={"query": f"{QUERY} {index}", "documents": ["a way"]},
            headers={"X-Request-Timeout": "0.05"},
            timeout=30,
        )
        assert cut.status_code == 504, cut.text
    detail = httpx.get(sidecar.http_url + "/health/endpoints").json()
    assert [endpoint["state"] for endpoint in detail["endpoints"]] == ["closed"] * 3
    calls = len(replicas[2].state.calls)
    assert scores(rerank(sidecar, ["a way"])) == expected(["a way"])
    assert len(replicas[2].state.calls) == calls  # tier 2 was not needed
