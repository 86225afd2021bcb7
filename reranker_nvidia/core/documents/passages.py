"""What a passage is between the surfaces and NIM: text (a ``str``, the common case, kept as it
is so that text-only requests pay nothing for images), or text beside an image, or an image
alone (``ImagePassage`` with ``text`` empty)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reranker_nvidia.core.documents.images import Image


@dataclass(frozen=True, slots=True)
class ImagePassage:
    """A passage that carries an image; ``text`` is "" for an image-only passage, which goes
    to NIM without ``text`` (NIM wants it left out, not empty)."""

    text: str
    image: Image

    def wire(self) -> dict[str, str]:
        if self.text:
            return {"text": self.text, "image": self.image.data_url}
        return {"image": self.image.data_url}


Passage = str | ImagePassage

_STR = frozenset({str})


def all_text(values: Sequence[object]) -> bool:
    """Whether every value is a ``str`` (a text passage; JSON makes no subclass of it),
    checked in C: the common case every surface and the ranker look for first."""
    return set(map(type, values)) <= _STR


def wire_passages(passages: Sequence[Passage]) -> list[Any]:
    """The ``passages`` of a NIM request."""
    return [
        {"text": passage} if isinstance(passage, str) else passage.wire() for passage in passages
    ]


def image_cache_bytes(passage: ImagePassage) -> bytes:
    """What an image passage's cache key is made of: its image's digest (fixed length, so no
    text can shift it), then its text. Text passages are keyed by their text alone, under a
    different personalisation (``Digests.pairs``), so no text can pass for an image."""
    return passage.image.digest + passage.text.encode("utf-8", "surrogatepass")


def cache_item(passage: Passage) -> str | tuple[str, bytes]:
    """The name of a passage in keys only this process reads: the text itself, or the text
    with its image's digest."""
    if isinstance(passage, str):
        return passage
    return (passage.text, passage.image.digest)


def image_bytes(passages: Sequence[Passage]) -> int:
    """The image bytes ``passages`` carry (0 for text)."""
    return sum(len(p.image.data) for p in passages if p.__class__ is ImagePassage)
