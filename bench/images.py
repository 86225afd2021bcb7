"""Images for the benchmark's image row: PNGs of random pixels (so they do not compress),
10 to 50 KB each, all distinct, each with a caption (the emulator scores a captioned image by
its caption and need not decode its pixels)."""

from __future__ import annotations

import base64
import random
import struct
import zlib

VL_MODEL = "nvidia/llama-nemotron-rerank-vl-1b-v2"


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def noise_png(side: int, caption: str) -> bytes:
    """A ``side`` x ``side`` 8-bit RGB PNG of random pixels with a ``Title`` caption."""
    rows = b"".join(b"\0" + random.randbytes(side * 3) for _ in range(side))
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)),
            _chunk(b"tEXt", b"Title\0" + caption.encode("latin-1")),
            _chunk(b"IDAT", zlib.compress(rows, 1)),
            _chunk(b"IEND", b""),
        )
    )


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_urls(count: int = 20) -> list[str]:
    """``count`` distinct PNGs as data URLs, from about 10 KB to about 50 KB."""
    low, high = 58, 128  # sides: 58 x 58 x 3 bytes is ~10 KB, 128 x 128 x 3 ~49 KB
    sides = [low + (high - low) * i // max(1, count - 1) for i in range(count)]
    return [data_url(noise_png(side, f"search figure number {i}")) for i, side in enumerate(sides)]
