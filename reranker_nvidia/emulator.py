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

Images, as NIM's vision-language models take them: a passage is ``{"text": ...}``,
``{"image": "data:image/png;base64,..."}`` or both; one with neither is a 422. An image must
be a base64 data URL: a URL, an asset id, bare base64, bad base64, bytes that are no image, an
image sent to a text-only model and a format the model does not take are each a 400
``{"detail": "..."}`` (formats from ``core/targets/catalog.py``; a model the catalog does not know
takes PNG and JPEG, as every VL NIM does). ``"text": ""`` beside an image is accepted, as a
lenient NIM would (LangChain sends it; NIM's API wants ``text`` left out of an image-only
passage), and recorded: ``RecordedCall.image_only_with_text`` lets tests check that the
sidecar leaves it out.

An image is scored as words, with the same function:

    image words   = its caption (a PNG's tEXt/zTXt/iTXt "Title", "Description", "Caption"
                    or "Comment"; a JPEG's COM segment), else the name of its dominant colour
                    (a PNG of 8-bit gray, gray+alpha, RGB, RGBA or palette, not interlaced, up
                    to 65536 pixels: the nearest of COLOURS to the most of its opaque pixels),
                    then "picture" and the format's name ("png", "jpeg", "webp", ...)
    passage terms = terms(text) + image words

so for "Which picture shows a red square?" a red square outranks a blue one (2 of 6 query
terms against 1). An image counts IMAGE_TOKENS tokens in the pair's tokens and in ``usage``
(its words count none); ``truncate: "END"`` cuts the text only.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from reranker_nvidia.core.documents.images import Image, ImageLimits, parse_image
from reranker_nvidia.core.targets.catalog import DEFAULT_CATALOG, FORMAT_NAMES, PNG_JPEG
from reranker_nvidia.errors import RerankError, invalid_argument
from reranker_nvidia.nim_schema import (
    NIM_MAX_PASSAGES,
    NimRanking,
    NimRankingResponse,
    NimText,
    NimTruncate,
    NimUsage,
)

_TOKEN = re.compile(r"\w+")
# What one image counts toward a pair's tokens and the usage: one tile of a VL model's encoder.
IMAGE_TOKENS = 256
# NIM's hosted API takes an image string of up to 14,598,366 characters: about this many bytes.
MAX_IMAGE_BYTES = 10 * 1024 * 1024


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


class NimPassage(BaseModel):
    """Text, an image (a data URL), or both."""

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _text_or_image(self) -> NimPassage:
        if self.text is None and self.image is None:
            raise ValueError("a passage needs text, an image or both")
        return self

    @property
    def kind(self) -> str:
        if self.image is None:
            return "text"
        return "image" if not (self.text or "").strip() else "text+image"


class NimRankingRequest(BaseModel):
    """What NIM itself accepts: a model is required, and at most 512 passages."""

    model: str
    query: NimText
    passages: list[NimPassage] = Field(min_length=1, max_length=NIM_MAX_PASSAGES)
    truncate: NimTruncate | None = None


@dataclass(frozen=True)
class RecordedCall:
    """What one request to the emulator carried, for tests to assert on.

    ``kinds`` says, passage by passage, "text", "image" or "text+image"; ``images`` counts
    the passages with an image; ``image_only_with_text`` is whether an image-only passage
    carried a ``text`` key all the same (``""``, blank or null).
    """

    path: str
    model: str
    passages: int
    truncate: str | None
    authorization: str | None
    kinds: tuple[str, ...] = ()
    images: int = 0
    image_only_with_text: bool = False

    @classmethod
    def of(cls, path: str, body: NimRankingRequest, authorization: str | None) -> RecordedCall:
        kinds = tuple(passage.kind for passage in body.passages)
        text_key = any(
            passage.kind == "image" and "text" in passage.model_fields_set
            for passage in body.passages
        )
        images = len(kinds) - kinds.count("text")
        return cls(
            path, body.model, len(kinds), body.truncate, authorization, kinds, images, text_key
        )


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
    """Settings and a record of calls; tests hold it to configure and inspect the emulator.

    ``delay_s`` delays every call; ``tail_delay_s`` more a random ``tail_share`` of them (a
    replica with a latency tail, for the benchmark's hedging row).
    """

    api_key: str | None = None
    max_pair_tokens: int = 512
    delay_s: float = 0.0
    tail_share: float = 0.0
    tail_delay_s: float = 0.0
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
        self.tail_share = 0.0
        self.tail_delay_s = 0.0
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
        state.calls.append(RecordedCall.of(request.url.path, body, authorization))
        if state.api_key is not None and authorization != f"Bearer {state.api_key}":
            return JSONResponse({"detail": "Authentication failed"}, status_code=401)
        if path_model is not None and path_model != body.model.replace(".", "_"):
            return JSONResponse(
                {"detail": f"model {body.model!r} is not served at {request.url.path}"},
                status_code=404,
            )
        try:
            images = _images(body)
        except RerankError as error:
            return JSONResponse({"detail": error.message}, status_code=400)
        fault = state.take_fault(body.query.text)
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            delay = fault.delay_s if fault is not None else state.delay_s
            if fault is None and state.tail_share and random.random() < state.tail_share:
                delay += state.tail_delay_s
            if delay:
                await asyncio.sleep(delay)
            if fault is not None:
                return fault.response()
            return _score(body, images, state.max_pair_tokens)
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


def _images(body: NimRankingRequest) -> dict[int, Image]:
    """Each passage's image, checked as NIM checks it; a ``RerankError`` for a 400."""
    found: dict[int, Image] = {}
    budget = ImageLimits(MAX_IMAGE_BYTES, NIM_MAX_PASSAGES * MAX_IMAGE_BYTES).budget()
    known = DEFAULT_CATALOG.get(body.model)
    formats = known.image_formats if known is not None else PNG_JPEG
    for index, passage in enumerate(body.passages):
        if passage.image is None:
            continue
        name = f"passages[{index}].image"
        if not formats:
            raise invalid_argument(f"{name}: model {body.model!r} ranks text only, not images")
        value = passage.image.strip()
        # Bare base64 has no ':'; a data URL or any other URL has one near the start.
        if ":" not in value[:40]:
            raise invalid_argument(f"{name}: not a data URL (data:image/png;base64,...)")
        image = parse_image(value, name, budget)
        if image.media_type not in formats:
            allowed = " or ".join(label for kind, label in FORMAT_NAMES.items() if kind in formats)
            raise invalid_argument(
                f"{name}: model {body.model!r} takes {allowed} images, not "
                f"{FORMAT_NAMES[image.media_type]}"
            )
        found[index] = image
    return found


def _score(body: NimRankingRequest, images: dict[int, Image], max_pair_tokens: int) -> JSONResponse:
    query_terms = terms(body.query.text)
    budget = max_pair_tokens - len(query_terms)
    if budget < 1:
        return _too_long(["body", "query", "text"], len(query_terms), max_pair_tokens)
    logits: list[float] = []
    tokens_used = 0
    for index, passage in enumerate(body.passages):
        passage_terms = terms(passage.text or "")
        image = images.get(index)
        image_tokens = IMAGE_TOKENS if image is not None else 0
        room = budget - image_tokens
        if len(passage_terms) > room:
            if body.truncate != "END" or room < 0:
                pair = len(query_terms) + image_tokens + len(passage_terms)
                loc: list[str | int] = ["body", "passages", index, "text" if room >= 0 else "image"]
                return _too_long(loc, pair, max_pair_tokens)
            passage_terms = passage_terms[:room]
        tokens_used += len(query_terms) + image_tokens + len(passage_terms)
        if image is not None:
            passage_terms = [*passage_terms, *_words_of(image)]
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


# Named colours an image's pixels are matched to, nearest first by squared RGB distance.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "red": (255, 0, 0),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "green": (0, 170, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "magenta": (255, 0, 255),
    "pink": (255, 192, 203),
    "brown": (139, 69, 19),
}
_CAPTION_KEYS = frozenset({"title", "description", "caption", "comment"})
_MAX_COLOUR_PIXELS = 1 << 16
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Channels per pixel of each 8-bit PNG colour type: gray, RGB, palette, gray+alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


# Words by image digest: a benchmark sends the same images again and again.
_WORDS: dict[bytes, tuple[str, ...]] = {}
_MAX_WORDS_CACHED = 1024


def _words_of(image: Image) -> tuple[str, ...]:
    words = _WORDS.get(image.digest)
    if words is None:
        if len(_WORDS) >= _MAX_WORDS_CACHED:
            _WORDS.clear()
        words = _WORDS[image.digest] = image_words(image.data, image.media_type)
    return words


def image_words(data: bytes, media_type: str) -> tuple[str, ...]:
    """The words an image is scored by; see the module docstring."""
    caption: str | None = None
    colour: str | None = None
    if media_type == "image/png":
        caption = _png_caption(data)
        if caption is None:
            colour = _png_colour(data)
    elif media_type == "image/jpeg":
        caption = _jpeg_comment(data)
    words = terms(caption) if caption else ([colour] if colour else [])
    return (*words, "picture", FORMAT_NAMES[media_type].lower())


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        yield kind, data[position + 8 : position + 8 + length]
        if kind == b"IEND":
            return
        position += 12 + length


def _inflate(data: bytes, limit: int) -> bytes | None:
    try:
        return zlib.decompressobj().decompress(data, limit)
    except zlib.error:
        return None


def _png_caption(data: bytes) -> str | None:
    found: list[str] = []
    for kind, body in _png_chunks(data):
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, _, rest = body.partition(b"\0")
        if key.decode("latin-1").lower() not in _CAPTION_KEYS:
            continue
        text: bytes | None = rest
        encoding = "latin-1"
        if kind == b"zTXt":
            text = _inflate(rest[1:], 1 << 16)
        elif kind == b"iTXt":
            compressed = rest[:1] == b"\1"
            _language, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            text = _inflate(text, 1 << 16) if compressed else text
            encoding = "utf-8"
        if text:
            found.append(text.decode(encoding, "replace"))
    return " ".join(found) or None


def _png_colour(data: bytes) -> str | None:
    """The colour name most opaque pixels are nearest to, or ``None`` if not decodable here."""
    pixels = png_pixels(data)
    if not pixels:
        return None
    names: Counter[str] = Counter()
    for rgb, count in Counter(pixels).items():
        names[_nearest_colour(rgb)] += count
    return names.most_common(1)[0][0]


def png_pixels(data: bytes) -> list[tuple[int, int, int]] | None:
    """A PNG's opaque pixels as RGB, row by row (fully transparent ones left out), or ``None``
    for a PNG this decoder does not read: other than 8-bit, interlaced, or over 65536 pixels."""
    header = data[16:29]
    if len(header) < 13:
        return None
    width = int.from_bytes(header[0:4], "big")
    height = int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    channels = _PNG_CHANNELS.get(colour_type)
    if depth != 8 or interlace or channels is None or not 0 < width * height <= _MAX_COLOUR_PIXELS:
        return None
    chunks = list(_png_chunks(data))
    palette = b"".join(body for kind, body in chunks if kind == b"PLTE")
    stride = width * channels
    raw = _inflate(
        b"".join(body for kind, body in chunks if kind == b"IDAT"), (stride + 1) * height
    )
    if raw is None or len(raw) != (stride + 1) * height:
        return None
    pixels: list[tuple[int, int, int]] = []
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        line = _unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        if line is None:
            return None
        pixels.extend(_pixels(line, colour_type, palette))
        previous = line
    return pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, step: int) -> bytearray | None:
    """PNG's five scanline filters, undone in place."""
    if kind == 0:
        return line
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        up = previous[i]
        if kind == 1:
            predicted = left
        elif kind == 2:
            predicted = up
        elif kind == 3:
            predicted = (left + up) >> 1
        elif kind == 4:
            corner = previous[i - step] if i >= step else 0
            estimate = left + up - corner
            to_left, to_up, to_corner = (
                abs(estimate - left),
                abs(estimate - up),
                abs(estimate - corner),
            )
            if to_left <= to_up and to_left <= to_corner:
                predicted = left
            elif to_up <= to_corner:
                predicted = up
            else:
                predicted = corner
        else:
            return None
        line[i] = (line[i] + predicted) & 0xFF
    return line


def _pixels(line: bytearray, colour_type: int, palette: bytes) -> Iterator[tuple[int, int, int]]:
    """The opaque pixels of a scanline as RGB (fully transparent ones are left out)."""
    if colour_type == 0:
        yield from ((v, v, v) for v in line)
    elif colour_type == 4:
        yield from ((v, v, v) for v, alpha in zip(line[0::2], line[1::2], strict=True) if alpha)
    elif colour_type == 2:
        yield from zip(line[0::3], line[1::3], line[2::3], strict=True)
    elif colour_type == 6:
        for r, g, b, alpha in zip(line[0::4], line[1::4], line[2::4], line[3::4], strict=True):
            if alpha:
                yield r, g, b
    else:
        for index in line:
            entry = palette[index * 3 : index * 3 + 3]
            if len(entry) == 3:
                yield entry[0], entry[1], entry[2]


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    return min(
        COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, COLOURS[name], strict=True))
    )


def _jpeg_comment(data: bytes) -> str | None:
    """The text of a JPEG's COM segments, read up to the scan."""
    found: list[str] = []
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker in (0xDA, 0xD9):
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xFE:
            found.append(data[position + 4 : position + 2 + length].decode("utf-8", "replace"))
        position += 2 + length
    return " ".join(found) or None
