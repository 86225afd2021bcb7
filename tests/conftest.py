from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.processes import RedisServer
from reranker_nvidia.core.trust.ssrf import Resolver
from reranker_nvidia.server.assembly import build_core
from reranker_nvidia.server.sidecar import SidecarServer
from tests.support import (
    BackgroundLoop,
    CaptureServer,
    Emulator,
    Sidecar,
    clean_environment,
    sidecar_settings,
    start_emulator,
)

SidecarFactory = Callable[..., Sidecar]


def _trust_only_a_test_ca() -> None:
    """Every httpx client loads the CA bundle it trusts (~40 ms each, and the suite makes
    hundreds); no test reaches a public TLS server, so the tests, and the processes they start,
    trust one CA of their own instead. TLS tests pass their own CA explicitly."""
    import trustme

    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as bundle:
        bundle.write(trustme.CA().cert_pem.bytes())
    atexit.register(os.unlink, bundle.name)
    os.environ["SSL_CERT_FILE"] = bundle.name


_trust_only_a_test_ca()


@pytest.fixture(autouse=True)
def _no_settings_from_the_developer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NVIDIA_APIKEY", "NVIDIA_API_KEY", "NVIDIA_NIM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("RERANKER_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def background() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.finish_closing()
    loop.close()


@pytest.fixture(scope="session")
def store() -> Iterator[RedisServer]:
    """A real Redis server on loopback, shared by the tests that need one."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _emulator(background: BackgroundLoop) -> Iterator[Emulator]:
    emulator = start_emulator(background)
    yield emulator
    background.run(emulator.server.stop())


@pytest.fixture
def emulator(_emulator: Emulator) -> Iterator[Emulator]:
    _emulator.state.reset()
    yield _emulator
    _emulator.state.reset()


@pytest.fixture
def make_sidecar(background: BackgroundLoop, emulator: Emulator) -> Iterator[SidecarFactory]:
    started: list[SidecarServer] = []

    def make(resolver: Resolver | None = None, **overrides: Any) -> Sidecar:
        settings = sidecar_settings(emulator.url, **overrides)
        core = build_core(settings, resolver=resolver) if resolver else None
        server = SidecarServer(settings, core)
        background.run(server.start())
        started.append(server)
        return Sidecar(server)

    yield make
    for server in started:
        # Drained here, so nothing of this test reaches the emulator during the next one;
        # closed in the background, where shutting the listeners down costs the suite nothing.
        if background.run(server.drain(grace_s=1)):
            background.close_later(server.close())
        else:
            background.run(server.close())


@pytest.fixture
def sidecar(make_sidecar: SidecarFactory) -> Sidecar:
    return make_sidecar()


@pytest.fixture
def clean_env() -> dict[str, str]:
    return clean_environment()


@pytest.fixture
def capture(background: BackgroundLoop) -> Iterator[CaptureServer]:
    server = CaptureServer()
    background.run(server.start())
    yield server
    background.run(server.stop())
