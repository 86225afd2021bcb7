"""Images made in code for the tests: PNGs written byte by byte (any colour type, any of the
five scanline filters, text chunks), the other formats by Pillow, and the two 4x4 squares of
the captured client requests (shared/wire/multimodal/)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Sequence

from PIL import Image as PillowImage

# The captured requests' images, as LangChain, LiteLLM and Weaviate sent them.
RED_SQUARE_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAEElEQVR4"
    "nGP4z8AARwzEcQCukw/x0F8jngAAAABJRU5ErkJggg=="
)
BLUE_SQUARE_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAEElEQVR4"
    "nGNgYPiPhIjiAACOsw/xs6MvMwAAAABJRU5ErkJggg=="
)
RED_SQUARE = base64.b64decode(RED_SQUARE_B64)
BLUE_SQUARE = base64.b64decode(BLUE_SQUARE_B64)

Pixel = tuple[int, ...]
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    to_left, to_up, to_corner = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    if to_left <= to_up and to_left <= to_corner:
        return left
    return up if to_up <= to_corner else corner


def _filtered(kind: int, line: bytes, previous: bytes, step: int) -> bytes:
    out = bytearray()
    for i, value in enumerate(line):
        left = line[i - step] if i >= step else 0
        up = previous[i]
        corner = previous[i - step] if i >= step else 0
        predicted = (0, left, up, (left + up) >> 1, _paeth(left, up, corner))[kind]
        out.append((value - predicted) & 0xFF)
    return bytes(out)


def png(
    rows: Sequence[Sequence[Pixel]],
    *,
    colour_type: int = 2,
    filters: Sequence[int] = (0,),
    palette: Sequence[tuple[int, int, int]] = (),
    text: dict[str, str] | None = None,
    itxt: dict[str, str] | None = None,
) -> bytes:
    """An 8-bit PNG of ``rows`` (pixels as the colour type holds them: (v,), (r, g, b), ...),
    row i filtered with ``filters[i % len(filters)]``."""
    height, width = len(rows), len(rows[0])
    step = _CHANNELS[colour_type]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    raw = bytearray()
    previous = bytes(width * step)
    for index, row in enumerate(rows):
        line = bytes(channel for pixel in row for channel in pixel)
        kind = filters[index % len(filters)]
        raw += bytes([kind]) + _filtered(kind, line, previous, step)
        previous = line
    chunks = [_chunk(b"IHDR", ihdr)]
    if palette:
        chunks.append(_chunk(b"PLTE", bytes(c for entry in palette for c in entry)))
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    for key, value in (itxt or {}).items():
        body = key.encode() + b"\0\1\0en\0\0" + zlib.compress(value.encode())
        chunks.append(_chunk(b"iTXt", body))
    chunks += [_chunk(b"IDAT", zlib.compress(bytes(raw))), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def square(
    rgb: tuple[int, int, int], size: int = 4, *, text: dict[str, str] | None = None
) -> bytes:
    return png([[rgb] * size for _ in range(size)], text=text)


def pillow(format_name: str, rgb: tuple[int, int, int] = (255, 0, 0), size: int = 8) -> bytes:
    """Real image bytes of ``format_name`` (JPEG, WEBP, GIF, BMP, TIFF, PNG) made by Pillow."""
    out = io.BytesIO()
    PillowImage.new("RGB", (size, size), rgb).save(out, format=format_name)
    return out.getvalue()


def jpeg_with_comment(comment: str) -> bytes:
    """A real JPEG with a COM segment right after SOI."""
    body = pillow("JPEG")
    segment = b"\xff\xfe" + struct.pack(">H", len(comment.encode()) + 2) + comment.encode()
    return body[:2] + segment + body[2:]
