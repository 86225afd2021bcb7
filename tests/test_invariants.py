"""The security invariants, each tested over its whole class on every surface (each HTTP
contract, gRPC Rank and Rerank, Weaviate's module config, the model in a route path).

1. Trust is per (endpoint, key).
2. Outbound URLs are built from validated parts only (the model-id grammar).
3. Everything NIM answers is data to validate.
4. Every layer is bounded before work is done on it (request nesting here; the transport
   bounds in tests/test_wire_server.py and tests/test_grpc_abuse.py).
5. A NIM pause is scoped to the (endpoint, key) it answered, and capped.
6. NIM call slots are shared fairly.
7. The shared store is untrusted storage.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from bench.processes import RedisServer
from reranker_nvidia.core.targets.endpoints import ConfiguredBase, resolve_endpoint
from reranker_nvidia.core.targets.model_ids import MODEL_ID
from reranker_nvidia.core.upstream.fair_slots import FairSlots
from reranker_nvidia.emulator import lexical_logit, terms
from reranker_nvidia.errors import RerankError
from reranker_nvidia.web.json_body import MAX_DEPTH
from tests.conftest import SidecarFactory
from tests.support import (
    REQUEST_KEY,
    BackgroundLoop,
    Emulator,
    Sidecar,
    eventually,
    start_emulator,
)
from tests.surfaces import MODEL_SURFACES, QUERY, SURFACES, Call, Outcome, Surface

MADE_UP_KEY = "nvapi-made-up-key-000000"
DOCUMENTS = ("go this way", "bananas")


def expected(documents: tuple[str, ...] = DOCUMENTS, query: str = QUERY) -> list[float]:
    return [lexical_logit(terms(query), terms(document)) for document in documents]


@pytest.fixture
def other_emulator(background: BackgroundLoop) -> Iterator[Emulator]:
    """A second NIM that answers any key: a caller-chosen or allow-listed endpoint."""
    emulator = start_emulator(background)
    yield emulator
    background.run(emulator.server.stop())


class RawUpstream:
    """A TCP server on loopback answering every request with the exact bytes it is given."""

    def __init__(self) -> None:
        self.answer = b""
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if b"connection: close" in self.answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def raw_upstream(background: BackgroundLoop) -> Iterator[RawUpstream]:
    server = RawUpstream()
    background.run(server.start())
    yield server
    background.run(server.stop())


def answer(status: int, body: bytes = b"", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


def rankings(*entries: bytes, usage: bytes = b"") -> bytes:
    return b'{"rankings": [' + b", ".join(entries) + b"]" + usage + b"}"


def beside_a_good_one(entry: bytes) -> bytes:
    """A 200 whose second ranking is fine and whose first is ``entry``."""
    return answer(200, rankings(entry, b'{"index": 1, "logit": 1}'))


# 1. Trust is per (endpoint, key).


@pytest.mark.parametrize("surface", SURFACES, ids=str)
def test_a_key_another_endpoint_accepted_is_not_served_this_endpoints_scores(
    make_sidecar: SidecarFactory,
    emulator: Emulator,
    other_emulator: Emulator,
    surface: Surface,
) -> None:
    sidecar = make_sidecar(cache_size=1000, allowed_base_urls=(other_emulator.url,))
    emulator.state.api_key = REQUEST_KEY
    paid = surface.send(sidecar, Call(DOCUMENTS, key=REQUEST_KEY))
    assert paid.kind == "ok", paid
    calls = len(emulator.state.calls)
    # The allow-listed endpoint answers 200 to anything, the made-up key included.
    vouched = surface.send(sidecar, Call(DOCUMENTS, key=MADE_UP_KEY, base_url=other_emulator.url))
    assert vouched.kind == "ok", vouched
    # At the configured endpoint the made-up key is NIM's to judge, not the cache's.
    refused = surface.send(sidecar, Call(DOCUMENTS, key=MADE_UP_KEY))
    assert refused.kind in ("unauthenticated", "denied"), refused
    assert len(emulator.state.calls) == calls + 1
    # The key that paid still reads the cache.
    assert surface.send(sidecar, Call(DOCUMENTS, key=REQUEST_KEY)).scores == paid.scores
    assert len(emulator.state.calls) == calls + 1


@pytest.mark.slow
@pytest.mark.parametrize("surface", [SURFACES[0], SURFACES[6]], ids=str)
def test_trust_per_endpoint_holds_across_replicas_sharing_a_store(
    make_sidecar: SidecarFactory,
    emulator: Emulator,
    other_emulator: Emulator,
    store: RedisServer,
    background: BackgroundLoop,
    surface: Surface,
) -> None:
    settings: dict[str, Any] = {
        "cache_size": 1000,
        "cache_url": store.url,
        "allowed_base_urls": (other_emulator.url,),
    }
    first, second = make_sidecar(**settings), make_sidecar(**settings)
    emulator.state.api_key = REQUEST_KEY
    documents = (f"go this way {id(surface)}", "bananas")
    assert surface.send(first, Call(documents, key=REQUEST_KEY)).kind == "ok"
    vouched = surface.send(first, Call(documents, key=MADE_UP_KEY, base_url=other_emulator.url))
    assert vouched.kind == "ok"
    background.run(_flush(first))
    calls = len(emulator.state.calls)
    refused = surface.send(second, Call(documents, key=MADE_UP_KEY))
    assert refused.kind in ("unauthenticated", "denied"), refused
    assert len(emulator.state.calls) == calls + 1


async def _flush(sidecar: Sidecar) -> None:
    shared = sidecar.server.core.shared
    assert shared is not None
    await shared.flush()


# 2. Outbound URLs are built from validated parts only.

HOSTILE_MODELS = [
    "../admin",
    "nvidia/../../admin",
    "nvidia/..",
    "..",
    ".",
    "nvidia/.",
    "nvidia/%2e%2e",
    "nvidia%2F..%2Fadmin",
    "nvidia/x%2Fy",
    "nvidia/x?next=/admin",
    "nvidia/x#/admin",
    "a/b/c",
    "nvidia//x",
    "/nvidia/x",
    "nvidia/x/",
    "nvidia/x@evil.example",
    "@evil.example",
    "http://evil.example/x",
    "nvidia/x\\..\\admin",
    "nvidia/x;y",
    "nvidia/ x",
    "nvidia/x\r\nHost: evil.example",
    "nvidia/x\x00",
    "nvidia/\u00e9",
    "nvidia/\u2215admin",
    "x" * 300,
    "nvidia/" + "y" * 200,
    ":tag",
    "nvidia/x:../..",
    "-x/y",
]


@pytest.mark.parametrize("surface", MODEL_SURFACES, ids=str)
def test_a_hostile_model_id_is_refused_before_anything_is_sent(
    sidecar: Sidecar, emulator: Emulator, surface: Surface
) -> None:
    for model in HOSTILE_MODELS:
        outcome = surface.send(sidecar, Call(DOCUMENTS, model=model, key=REQUEST_KEY))
        if surface.name == "nim model in path":
            # Repeated slashes in a path route like one (Weaviate sends //v1/...).
            routed = re.sub("/+", "/", model).strip("/")
            if not _fits_the_route(routed):
                # No route has this many segments: nothing reached the core.
                assert outcome.status == 404, (model, str(outcome))
                continue
            if routed != model and MODEL_ID.fullmatch(routed):
                assert outcome.kind == "ok", (model, str(outcome))
                continue
        assert outcome.kind == "invalid", (model, str(outcome))
        assert "model" in outcome.detail, (model, outcome.detail)
    assert all(call.model == "nvidia/x" for call in emulator.state.calls)


def _fits_the_route(model: str) -> bool:
    """``/v1/retrieval/{segment}/reranking`` or ``/v1/retrieval/{org}/{model}/reranking``."""
    return model.count("/") <= 1 and all(model.split("/"))


@pytest.mark.parametrize("model", HOSTILE_MODELS)
@pytest.mark.parametrize(
    "base_url",
    ["https://ai.api.nvidia.com", "https://ai.api.nvidia.com/v1", "http://nim:8000/v1"],
)
def test_no_hostile_model_id_reaches_a_url(base_url: str, model: str) -> None:
    try:
        url = resolve_endpoint(base_url, model)
    except RerankError:
        return
    # A self-hosted NIM's URL does not depend on the model at all.
    assert url == resolve_endpoint(base_url, "nvidia/rerank-qa-mistral-4b")


def test_every_model_id_resolves_to_a_url_its_base_allows() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    hosted = ConfiguredBase("https://ai.api.nvidia.com")

    @settings(max_examples=2000, deadline=None)
    @given(st.text(min_size=1, max_size=80))
    def check(model: str) -> None:
        try:
            url = resolve_endpoint("https://ai.api.nvidia.com", model)
        except RerankError:
            return
        assert hosted.allows(url), url
        assert "/../" not in url and "/./" not in url and "%" not in url

    check()


@pytest.mark.parametrize(
    ("key_setting", "sent"),
    [("false", None), ('"NIM_0_KEY"', "Bearer nvapi-nim-0-own-key")],
    ids=["configured-without-key", "configured-with-its-own-key"],
)
@pytest.mark.parametrize("surface", MODEL_SURFACES, ids=str)
def test_a_configured_endpoint_named_by_a_caller_keeps_its_own_key_and_models(
    make_sidecar: SidecarFactory,
    emulator: Emulator,
    other_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    surface: Surface,
    key_setting: str,
    sent: str | None,
) -> None:
    """A caller naming a table endpoint's URL reaches it as configured: with the key the table
    gives it (never the server's) and for the models it lists only; any other model is
    refused, not sent there with another key."""
    monkeypatch.setenv("NIM_0_KEY", "nvapi-nim-0-own-key")
    served, other = "nvidia/llama-3.2-nv-rerankqa-1b-v2", "nvidia/rerank-qa-mistral-4b"
    table = tmp_path / "endpoints.toml"
    table.write_text(
        f'[[endpoints]]\nurl = "{emulator.url}"\nname = "nim-0"\n'
        f'models = ["{served}"]\napi_key_env = {key_setting}\n\n'
        f'[[endpoints]]\nurl = "{other_emulator.url}"\nname = "nim-1"\ntier = 2\n'
    )
    sidecar = make_sidecar(endpoints_file=table)
    answered = surface.send(sidecar, Call(DOCUMENTS, base_url=emulator.url, model=served))
    assert answered.kind == "ok", answered
    refused = surface.send(sidecar, Call(DOCUMENTS, base_url=emulator.url, model=other))
    assert refused.kind == "invalid", refused
    assert "nim-0" in refused.detail and other in refused.detail, refused
    assert [(call.model, call.authorization) for call in emulator.state.calls] == [(served, sent)]


# 3. Everything NIM answers is data to validate.

BAD_ANSWERS: dict[str, bytes] = {
    "a 400-digit logit": answer(
        200, rankings(b'{"index": 0, "logit": 1' + b"0" * 400 + b"}", b'{"index": 1, "logit": 1}')
    ),
    "logit 1e400": beside_a_good_one(b'{"index": 0, "logit": 1e400}'),
    "logit NaN": beside_a_good_one(b'{"index": 0, "logit": NaN}'),
    "logit -Infinity": beside_a_good_one(b'{"index": 0, "logit": -Infinity}'),
    "logit 1e7": beside_a_good_one(b'{"index": 0, "logit": 1e7}'),
    "logit a string": beside_a_good_one(b'{"index": 0, "logit": "1"}'),
    "logit true": beside_a_good_one(b'{"index": 0, "logit": true}'),
    "logit null": beside_a_good_one(b'{"index": 0, "logit": null}'),
    "index 1.0": answer(200, rankings(b'{"index": 0, "logit": 1}', b'{"index": 1.0, "logit": 1}')),
    "index true": answer(
        200, rankings(b'{"index": 0, "logit": 1}', b'{"index": true, "logit": 1}')
    ),
    "index -1": answer(200, rankings(b'{"index": 0, "logit": 1}', b'{"index": -1, "logit": 1}')),
    "index 2 of 2": answer(200, rankings(b'{"index": 0, "logit": 1}', b'{"index": 2, "logit": 1}')),
    "a 400-digit index": answer(
        200, rankings(b'{"index": 0, "logit": 1}', b'{"index": 1' + b"0" * 400 + b', "logit": 1}')
    ),
    "index twice": answer(200, rankings(b'{"index": 0, "logit": 1}', b'{"index": 0, "logit": 2}')),
    "one ranking for two": answer(200, rankings(b'{"index": 0, "logit": 1}')),
    "a ranking not an object": answer(200, rankings(b"[0, 1]", b'{"index": 1, "logit": 1}')),
    "no rankings": answer(200, b'{"data": []}'),
    "rankings not a list": answer(200, b'{"rankings": {"index": 0}}'),
    "negative usage": answer(
        200,
        rankings(
            b'{"index": 0, "logit": 1}',
            b'{"index": 1, "logit": 1}',
            usage=b', "usage": {"prompt_tokens": -5, "total_tokens": -5}',
        ),
    ),
    "a 400-digit usage": answer(
        200,
        rankings(
            b'{"index": 0, "logit": 1}',
            b'{"index": 1, "logit": 1}',
            usage=b', "usage": {"prompt_tokens": 1' + b"0" * 400 + b"}",
        ),
    ),
    "fractional usage": answer(
        200,
        rankings(
            b'{"index": 0, "logit": 1}',
            b'{"index": 1, "logit": 1}',
            usage=b', "usage": {"total_tokens": 1.5}',
        ),
    ),
    "usage not an object": answer(
        200,
        rankings(b'{"index": 0, "logit": 1}', b'{"index": 1, "logit": 1}', usage=b', "usage": 7'),
    ),
    "nested 100,000 deep": answer(200, b"[" * 100_000 + b"]" * 100_000),
    "nested 1,100 deep in a field": answer(
        200,
        rankings(
            b'{"index": 0, "logit": 1}',
            b'{"index": 1, "logit": 1, "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        ),
    ),
    "not JSON": answer(200, b"<html>ok</html>"),
    "empty": answer(200),
    "a list": answer(200, b"[]"),
    "not UTF-8": answer(200, b'{"rankings": "\xff\xfe"}'),
    "status 204": answer(204),
    "status 304": answer(304),
    "status 201": answer(201, rankings(b'{"index": 0, "logit": 1}', b'{"index": 1, "logit": 1}')),
    "status 302": answer(302, extra=b"location: http://127.0.0.1:1/\r\n"),
    "status 600": answer(600, b'{"detail": "x"}'),
    "status 999": answer(999, b'{"detail": "x"}'),
}
NIM_ERRORS: dict[str, bytes] = {
    "500 nested 100,000 deep": answer(500, b"[" * 100_000 + b"]" * 100_000),
    "503 with a 400-digit Retry-After": answer(
        503, b"{}", b"retry-after: 1" + b"0" * 400 + b"\r\n"
    ),
    "429 with a date Retry-After": answer(
        429, b'{"detail": "slow down"}', b"retry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
    ),
    "400 whose detail is a huge list": answer(400, b'{"detail": [' + b"1," * 50000 + b"1]}"),
}


@pytest.mark.parametrize("surface", SURFACES, ids=str)
def test_every_bad_answer_is_502_and_leaves_no_trace(
    make_sidecar: SidecarFactory,
    raw_upstream: RawUpstream,
    surface: Surface,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = make_sidecar(base_url=raw_upstream.url, cache_size=1000)
    core = sidecar.server.core
    caplog.set_level(logging.WARNING)
    for name, raw in BAD_ANSWERS.items():
        raw_upstream.answer = raw
        outcome = surface.send(sidecar, Call(DOCUMENTS))
        assert outcome.kind == "unavailable", (name, str(outcome))
        assert "NIM at" in outcome.detail, (name, outcome.detail)
        assert len(core.cache) == 0, f"{name}: a score from a bad answer was cached"
        assert len(core.ranker.verified_keys) == 0, f"{name}: a key was verified by it"
    for name, raw in NIM_ERRORS.items():
        raw_upstream.answer = raw
        outcome = surface.send(sidecar, Call(DOCUMENTS))
        assert outcome.kind != "ok", name
        assert "internal error" not in outcome.detail, (name, str(outcome))
        assert len(core.cache) == 0 and len(core.ranker.verified_keys) == 0, name
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"
    metrics = httpx.get(sidecar.http_url + "/metrics").text
    tokens = re.findall(r"^reranker_upstream_tokens_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert all(float(value) >= 0 for value in tokens)


# 4. Every layer is bounded before work is done on it: a request nested past the limit.

HTTP_SURFACES = [surface for surface in SURFACES if not surface.name.startswith("grpc")]
NESTED = {
    "/rerank": b'{"query": "q", "documents": ["a"], "x": %s}',
    "/v1/ranking": b'{"query": {"text": "q"}, "passages": [{"text": "a"}], "x": %s}',
    "/v1/retrieval/nvidia/reranking": b'{"query": {"text": "q"}, "passages": %s}',
    "/v1/rerank": b'{"query": "q", "documents": %s}',
    "/v2/rerank": b'{"query": "q", "documents": ["a"], "model": %s}',
}


@pytest.mark.parametrize("path", sorted(NESTED))
@pytest.mark.parametrize("depth", [1_025, 5_000, 200_000])
def test_a_body_nested_past_the_limit_is_400(
    sidecar: Sidecar, emulator: Emulator, path: str, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    response = httpx.post(sidecar.http_url + path, content=NESTED[path] % nested, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert f"nested deeper than {MAX_DEPTH} levels" in response.text
    assert emulator.state.calls == []


@pytest.mark.parametrize("path", sorted(NESTED))
def test_a_body_nested_within_the_limit_in_a_field_nobody_reads_is_served(
    sidecar: Sidecar, emulator: Emulator, path: str
) -> None:
    if b'"x": %s' not in NESTED[path]:
        return
    nested = b"[" * 1_000 + b"]" * 1_000
    response = httpx.post(sidecar.http_url + path, content=NESTED[path] % nested, timeout=30)
    assert response.status_code == 200, response.text


ROUTE_PATHS = [
    ("POST", "/rerank", "error"),
    ("POST", "/v1/ranking", "detail"),
    ("POST", "/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking", "detail"),
    ("POST", "/v2/rerank", "message"),
    ("GET", "/meta", "error"),
    ("GET", "/metrics", "error"),
    ("GET", "/.well-known/ready", "error"),
]


def _raw_exchange(port: int, head: bytes, chunks: int = 64, chunk: bytes = b"") -> bytes:
    """Send ``head`` and then up to ``chunks`` more pieces while the server still reads; the
    answer's bytes (the server answers, and stops reading, before the client is done)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        try:
            connection.sendall(head)
            for _ in range(chunks):
                connection.sendall(chunk)
        except OSError:
            pass  # refused and closed while still sending: what is tested
        answer = b""
        try:
            while piece := connection.recv(65536):
                answer += piece
        except OSError:
            pass
        return answer


def test_a_huge_header_or_url_is_refused_before_it_is_buffered(
    sidecar: Sidecar, emulator: Emulator
) -> None:
    port = sidecar.server.http_port
    for method, path, field in ROUTE_PATHS:
        # A header value of 1 MiB (the engine's own tests show it stops reading at the bound
        # whatever follows): 431 after the first 32 KiB, in the contract's shape.
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode()
        answer = _raw_exchange(port, head, 1, b"a" * 1024 * 1024)
        assert answer.startswith(b"HTTP/1.1 431"), (path, answer[:200])
        assert b"RERANKER_MAX_HEADER_BYTES" in answer
        assert f'"{field}"'.encode() in answer, (path, answer[-200:])
        # A URL of 1 MiB likewise: 414.
        answer = _raw_exchange(port, f"{method} {path}?q=".encode(), 1, b"b" * 1024 * 1024)
        assert answer.startswith(b"HTTP/1.1 414"), (path, answer[:200])
        assert b"RERANKER_MAX_URL_BYTES" in answer
    assert emulator.state.calls == []


# 5. A NIM pause is scoped to the (endpoint, key) that was answered, and capped.


@pytest.mark.parametrize("surface", SURFACES, ids=str)
def test_a_429_pauses_only_the_endpoint_that_said_it_and_for_at_most_the_cap(
    make_sidecar: SidecarFactory, emulator: Emulator, raw_upstream: RawUpstream, surface: Surface
) -> None:
    sidecar = make_sidecar(
        upstream_rpm=1000,
        max_retry_after_s=30,
        request_timeout_s=10,
        allowed_base_urls=(raw_upstream.url,),
    )
    raw_upstream.answer = answer(429, b'{"detail": "slow down"}', b"retry-after: 999999999\r\n")
    # A keyless request (the server's key) to the allow-listed endpoint is told to wait.
    told = surface.send(sidecar, Call(DOCUMENTS, base_url=raw_upstream.url))
    assert told.kind == "exhausted", told
    # The configured endpoint is not paused, keyless or keyed.
    assert surface.send(sidecar, Call(DOCUMENTS)).scores == pytest.approx(expected())
    assert surface.send(sidecar, Call(DOCUMENTS, key=REQUEST_KEY)).kind == "ok"
    # The allow-listed endpoint is paused for that key, for the cap at most.
    paused = surface.send(sidecar, Call(DOCUMENTS, base_url=raw_upstream.url))
    assert paused.kind == "exhausted", paused
    assert raw_upstream.requests == 1, "the paused endpoint was not called again"
    assert paused.headers is not None
    assert 1 <= int(paused.headers["retry-after"]) <= 30


# 6. Call slots are shared fairly: a small request does not queue behind a flood.


async def test_a_freed_slot_goes_to_the_waiter_holding_the_fewest() -> None:
    slots = FairSlots(2)
    order: list[str] = []
    release = asyncio.Event()

    async def call(key: str, flow: str, name: str) -> None:
        async with slots.slot(key, flow):
            order.append(name)
            await release.wait()

    flood = [asyncio.create_task(call("big", "flood", f"flood-{i}")) for i in range(8)]
    await asyncio.sleep(0)
    small = asyncio.create_task(call("small", "one", "small"))
    await asyncio.sleep(0)
    assert order == ["flood-0", "flood-1"]
    release.set()
    await asyncio.gather(*flood, small)
    assert order[2] == "small", order


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    slots = FairSlots(1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot("k", "a"):
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await holder
    async with slots.slot("k", "b"):
        assert slots.waiting == 0


def test_a_small_request_is_not_queued_behind_a_flood(
    make_sidecar: SidecarFactory, emulator: Emulator
) -> None:
    sidecar = make_sidecar(
        upstream_concurrency=2, max_passages_per_call=2, coalesce_window_ms=0, max_in_flight=64
    )
    emulator.state.delay_s = 0.05
    flood = [f"flooding passage {i}" for i in range(40)]

    def send_flood(n: int) -> None:
        httpx.post(
            sidecar.http_url + "/rerank",
            json={"query": f"flood {n}", "documents": flood},
            timeout=60,
        )

    threads = [threading.Thread(target=send_flood, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    asyncio.run(eventually(lambda: len(emulator.state.calls) >= 4))
    seen = len(emulator.state.calls)
    small = httpx.post(
        sidecar.http_url + "/rerank", json={"query": "small one", "documents": ["x"]}, timeout=60
    )
    assert small.status_code == 200
    position = next(i for i, call in enumerate(emulator.state.calls) if call.passages == 1)
    for thread in threads:
        thread.join(60)
    assert len(emulator.state.calls) == 61
    # A first-come queue would put it behind the ~56 flood calls queued; shared fairly it
    # waits for two calls in flight and at most one turn of the three flood flows.
    assert position <= seen + 6, (position, seen)


# 7. The shared store is untrusted storage.


@pytest.mark.slow
def test_tampered_or_foreign_store_entries_are_misses(
    make_sidecar: SidecarFactory, emulator: Emulator, store: RedisServer
) -> None:
    client = redis.Redis(port=store.port)
    client.flushall()
    writer = make_sidecar(cache_size=1000, cache_url=store.url)
    documents = ("tampered one way", "tampered another way", "a third way")
    assert _rerank(writer, documents) == pytest.approx(expected(documents))
    _wait_for_store(client, len(documents) + 1)
    names = sorted(name for name in cast(list[bytes], client.keys("*")) if b"score:" in name)
    assert len(names) == len(documents)
    values = [cast(bytes, client.get(name)) for name in names]
    # Swap two authentic values, flip a byte of the third's logit.
    client.set(names[0], values[1])
    client.set(names[1], values[0])
    assert values[2] is not None
    client.set(names[2], bytes([values[2][0] ^ 1]) + values[2][1:])
    calls = len(emulator.state.calls)
    reader = make_sidecar(cache_size=1000, cache_url=store.url)
    assert _rerank(reader, documents) == pytest.approx(expected(documents))
    assert len(emulator.state.calls) == calls + 1, "a tampered entry was served"
    assert emulator.state.calls[-1].passages == 3
    # A replica with another secret can read nothing the first ones wrote.
    stranger = make_sidecar(
        cache_size=1000, cache_url=store.url, cache_secret="another-secret-of-32-characters-x"
    )
    assert _rerank(stranger, documents) == pytest.approx(expected(documents))
    assert len(emulator.state.calls) == calls + 2


def _rerank(sidecar: Sidecar, documents: tuple[str, ...]) -> list[float]:
    outcome: Outcome = SURFACES[0].send(sidecar, Call(documents))
    assert outcome.scores is not None, outcome
    return outcome.scores


def _wait_for_store(client: redis.Redis, count: int) -> None:
    asyncio.run(eventually(lambda: len(cast(list[bytes], client.keys("*"))) >= count))
