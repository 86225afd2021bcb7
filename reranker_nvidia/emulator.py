"""A NIM ranking API emulator: a real HTTP server for tests, demos and offline use.

It speaks NIM's request and response shapes on ``/v1/ranking`` (self-hosted NIM) and
``/v1/retrieval/{org}[/{model}]/reranking`` (hosted NIM), checks requests as NIM does, and
scores with a transparent *lexical* function, not a neural model:

    terms(t)  = the lower-cased word tokens (regex ``\\w+``) of text t
    coverage  = |distinct query terms found in the passage| / |distinct query terms|
    density   = sum over found terms of (1 + ln tf) / (1 + ln(1 + passage length in tokens))
    logit     = 6 * coverage + density - 5

A score depends on nothing but its own query and passage (as a cross-encoder's does), so
splitting a request into chunks gives the same scores as sending it whole. A passage that
shares no term with the query scores -5; a passage with none at all too.

Token limits: a pair's tokens are the query's plus the passage's. Over ``max_pair_tokens``,
``truncate: "END"`` cuts the passage's tail; ``"NONE"`` or no truncate is a 422, as on
self-hosted NIM.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, deque
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from reranker_nvidia.nim_schema import (
    NIM_MAX_PASSAGES,
    NimRanking,
    NimRankingResponse,
    NimText,
    NimTruncate,
    NimUsage,
)

_TOKEN = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lexical_logit(query_terms: list[str], passage_terms: list[str]) -> float:
    """The emulator's relevance score; see the module docstring."""
    distinct = set(query_terms)
    if not distinct:
        return -5.0
    counts = Counter(passage_terms)
    found = [term for term in distinct if counts[term]]
    coverage = len(found) / len(distinct)
    density = sum(1 + math.log(counts[term]) for term in found) / (
        1 + math.log(1 + len(passage_terms))
    )
    return 6 * coverage + density - 5


class NimRankingRequest(BaseModel):
    """What NIM itself accepts: a model is required, and at most 512 passages."""

    model: str
    query: NimText
    passages: list[NimText] = Field(min_length=1, max_length=NIM_MAX_PASSAGES)
    truncate: NimTruncate | None = None


@dataclass(frozen=True)
class RecordedCall:
    """What one request to the emulator carried, for tests to assert on."""

    path: str
    model: str
    passages: int
    truncate: str | None
    authorization: str | None


@dataclass(frozen=True)
class Fault:
    """An answer to give instead of a ranking: any status, JSON or raw body, and headers.

    With ``for_query`` set, only a request for that query text gets it.
    """

    status: int
    body: object = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    for_query: str | None = None

    def response(self) -> Response:
        if self.raw is not None:
            return Response(self.raw, status_code=self.status, headers=self.headers)
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


@dataclass
class EmulatorState:
    """Settings and a record of calls; tests hold it to configure and inspect the emulator."""

    api_key: str | None = None
    max_pair_tokens: int = 512
    delay_s: float = 0.0
    faults: deque[Fault] = field(default_factory=deque)
    calls: list[RecordedCall] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def take_fault(self, query: str) -> Fault | None:
        for fault in self.faults:
            if fault.for_query is None or fault.for_query == query:
                self.faults.remove(fault)
                return fault
        return None

    def reset(self) -> None:
        self.api_key = None
        self.max_pair_tokens = 512
        self.delay_s = 0.0
        self.faults.clear()
        self.calls.clear()
        self.in_flight = 0
        self.peak_in_flight = 0


def create_emulator_app(state: EmulatorState | None = None) -> FastAPI:
    state = state if state is not None else EmulatorState()
    app = FastAPI(title="NIM ranking emulator (lexical scoring)", docs_url=None, redoc_url=None)
    app.state.emulator = state

    async def rank(request: Request, body: NimRankingRequest, path_model: str | None) -> Response:
        authorization = request.headers.get("authorization")
        state.calls.append(
            RecordedCall(
                request.url.path, body.model, len(body.passages), body.truncate, authorization
            )
        )
        if state.api_key is not None and authorization != f"Bearer {state.api_key}":
            return JSONResponse({"detail": "Authentication failed"}, status_code=401)
        if path_model is not None and path_model != body.model.replace(".", "_"):
            return JSONResponse(
                {"detail": f"model {body.model!r} is not served at {request.url.path}"},
                status_code=404,
            )
        fault = state.take_fault(body.query.text)
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            delay = fault.delay_s if fault is not None else state.delay_s
            if delay:
                await asyncio.sleep(delay)
            return fault.response() if fault is not None else _score(body, state.max_pair_tokens)
        finally:
            state.in_flight -= 1

    @app.post("/v1/ranking")
    async def ranking(request: Request, body: NimRankingRequest) -> Response:
        return await rank(request, body, None)

    @app.post("/v1/retrieval/{org}/reranking")
    async def hosted_legacy(request: Request, org: str, body: NimRankingRequest) -> Response:
        return await rank(request, body, None)

    @app.post("/v1/retrieval/{org}/{model}/reranking")
    async def hosted_model(
        request: Request, org: str, model: str, body: NimRankingRequest
    ) -> Response:
        return await rank(request, body, f"{org}/{model}")

    @app.get("/v1/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _score(body: NimRankingRequest, max_pair_tokens: int) -> JSONResponse:
    query_terms = terms(body.query.text)
    budget = max_pair_tokens - len(query_terms)
    if budget < 1:
        return _too_long(["body", "query", "text"], len(query_terms), max_pair_tokens)
    logits: list[float] = []
    tokens_used = 0
    for index, passage in enumerate(body.passages):
        passage_terms = terms(passage.text)
        if len(passage_terms) > budget:
            if body.truncate != "END":
                pair = len(query_terms) + len(passage_terms)
                return _too_long(["body", "passages", index, "text"], pair, max_pair_tokens)
            passage_terms = passage_terms[:budget]
        tokens_used += len(query_terms) + len(passage_terms)
        logits.append(lexical_logit(query_terms, passage_terms))
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    answer = NimRankingResponse(
        rankings=[NimRanking(index=i, logit=logits[i]) for i in order],
        usage=NimUsage(prompt_tokens=tokens_used, total_tokens=tokens_used),
    )
    return JSONResponse(answer.model_dump())


def _too_long(loc: list[str | int], tokens: int, limit: int) -> JSONResponse:
    message = (
        f"Input length {tokens} exceeds maximum allowed token size {limit}; "
        "set truncate to END to cut passages"
    )
    return JSONResponse(
        {"detail": [{"type": "value_error", "loc": loc, "msg": message}]}, status_code=422
    )
