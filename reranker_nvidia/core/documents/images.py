"""Images: the one place an image enters the sidecar, from any surface.

An image arrives as a data URL (``data:image/png;base64,...``: NIM's own form, LangChain,
LiteLLM), as bare base64 (a Weaviate ``blob`` property; Jina's API) or as raw bytes (gRPC).
Whatever its form, it leaves as an ``Image``: the decoded bytes, the media type their magic
numbers say, the data URL NIM receives, and a digest for cache keys.

What is refused, each a 400 naming the field:

- URLs of any scheme (``https://...``): the sidecar never fetches one (SSRF). NIM refuses
  them too; so it does asset ids (``data:image/png;asset_id,...``).
- Anything that is not strict base64 (RFC 4648's standard alphabet, ``=`` padding only at
  the end; URL-safe ``-``/``_`` is not base64 here). Whitespace inside the base64 is the one
  leniency: MIME-wrapped base64 (``base64`` without ``-w0``: a newline every 76 characters)
  is accepted, and NIM gets it without the whitespace.
- Bytes that are not a PNG, JPEG, WebP, GIF, BMP or TIFF image by their magic numbers, and a
  data URL whose declared type is not what its bytes are.
- An image over ``RERANKER_MAX_IMAGE_BYTES`` (decoded; default 5 MiB: a page screenshot or a
  300 dpi scan of a page is 0.1 to 3 MB, and NIM's own request ceiling leaves no room for much
  more), or a request whose images together are over ``RERANKER_MAX_REQUEST_IMAGE_BYTES``
  (default 32 MiB: the top 20 or 30 pages of a visual search, as VL reranking is used). Both
  are checked from the base64's length before any of it is decoded.

What a model takes is the catalog's business (``core/targets/catalog.py``); ``check_model_takes``
applies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
from dataclasses import dataclass, field

from reranker_nvidia.core.targets.catalog import (
    BMP,
    DEFAULT_CATALOG,
    FORMAT_NAMES,
    GIF,
    JPEG,
    PNG,
    TIFF,
    WEBP,
    Catalog,
)
from reranker_nvidia.errors import RerankError, invalid_argument

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_REQUEST_IMAGE_BYTES",
    "Image",
    "ImageBudget",
    "ImageLimits",
    "check_model_takes",
    "detect_blob",
    "image_formats",
    "parse_image",
    "sniff",
]

DEFAULT_MAX_IMAGE_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_REQUEST_IMAGE_BYTES = 32 * 1024 * 1024

_FORMAT_LIST = "a PNG, JPEG, WebP, GIF, BMP or TIFF image"
_SEND_DATA_URL = "send the image itself as a data URL (data:image/png;base64,...)"
# Declared types some clients write for a format; NIM gets the canonical one.
_TYPE_ALIASES = {"image/jpg": JPEG, "image/pjpeg": JPEG, "image/x-ms-bmp": BMP, "image/x-bmp": BMP}
# A URI scheme (RFC 3986), looked for only near the start: base64 has no ':'.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_SCHEME_SEARCH_CHARS = 40
# A data URL's header: "data:" type parameters ";base64" ",".
_HEADER_SEARCH_CHARS = 256
_WHITESPACE = (" ", "\n", "\r", "\t", "\f", "\v")
# The start of each format's magic number as base64: a document that starts with none of these
# is not an image, whatever follows.
_BLOB_PREFIXES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk", "SUkqAA", "TU0AKg")
# Enough base64 for every format's signature check (a PNG's needs 33 bytes, to the IHDR's end).
_BLOB_HEAD_CHARS = 44
# The sizes of the BMP info headers that exist (BITMAPCOREHEADER .. BITMAPV5HEADER, OS/2 2.x).
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True, slots=True, repr=False)
class Image:
    """An image as the sidecar holds it: checked, decoded, ready to send.

    ``data_url`` is what NIM receives: the caller's own data URL when it sent one in canonical
    form, else built once from the base64 or the bytes. ``digest`` is a 16-byte BLAKE2b of
    ``data``: the same image has the same digest whatever form it came in.
    """

    data: bytes
    media_type: str
    data_url: str = field(compare=False)
    digest: bytes

    def __repr__(self) -> str:
        return f"Image({self.media_type}, {len(self.data)} bytes, {self.digest.hex()})"


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """``RERANKER_MAX_IMAGE_BYTES`` and ``RERANKER_MAX_REQUEST_IMAGE_BYTES``: decoded bytes."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_request_image_bytes: int = DEFAULT_MAX_REQUEST_IMAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_image_bytes < 1 or self.max_request_image_bytes < 1:
            raise ValueError("image limits must be at least 1 byte")

    def budget(self) -> ImageBudget:
        """A fresh accumulator for one request."""
        return ImageBudget(self)


class ImageBudget:
    """What one request's images have taken so far; each image is charged as it is parsed."""

    __slots__ = ("limits", "used")

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits
        self.used = 0

    def check(self, size: int, field: str) -> None:
        """Refuse an image of ``size`` bytes that would break a limit; charge nothing."""
        if size > self.limits.max_image_bytes:
            raise invalid_argument(
                f"{field}: {size} bytes, at most {self.limits.max_image_bytes} allowed per "
                "image (RERANKER_MAX_IMAGE_BYTES)"
            )
        total = self.used + size
        if total > self.limits.max_request_image_bytes:
            raise invalid_argument(
                f"{field}: {size} bytes would bring the request's images to {total} bytes, "
                f"at most {self.limits.max_request_image_bytes} allowed per request "
                "(RERANKER_MAX_REQUEST_IMAGE_BYTES)"
            )

    def charge(self, size: int, field: str) -> None:
        self.check(size, field)
        self.used += size


def sniff(data: bytes) -> str | None:
    """The media type ``data``'s magic numbers say, or ``None`` for none the sidecar knows."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        # The IHDR chunk (25 bytes) always comes first: a signature alone is not an image.
        return PNG if data[12:16] == b"IHDR" and len(data) >= 33 else None
    if data.startswith(b"\xff\xd8\xff"):
        # SOI, then a marker: APPn, DQT, SOFn, DHT, COM and the like all lie in C0..FE.
        return JPEG if len(data) > 3 and 0xC0 <= data[3] <= 0xFE else None
    if data.startswith((b"GIF87a", b"GIF89a")):
        return GIF if len(data) >= 13 else None
    if data.startswith(b"RIFF"):
        return WEBP if data[8:12] == b"WEBP" else None
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF if len(data) >= 8 else None
    if data.startswith(b"BM") and len(data) >= 18:
        # "BM" is two letters: the info header's size must be one that exists.
        return BMP if int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES else None
    return None


class _NotBase64(Exception):
    pass


class _NotAnImage(Exception):
    pass


def parse_image(
    value: str | bytes | bytearray | memoryview, field: str, budget: ImageBudget
) -> Image:
    """The image ``value`` holds: a data URL, bare base64, or raw bytes. Any refusal is a
    ``RerankError`` (INVALID_ARGUMENT) whose message starts with ``field``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        budget.check(len(data), field)
        media_type = sniff(data)
        if media_type is None:
            raise _not_an_image(field)
        budget.charge(len(data), field)
        return _image(data, media_type, None)
    if not isinstance(value, str):
        raise invalid_argument(f"{field}: must be a data URL or base64 string")
    text = value.strip()
    colon = text.find(":", 0, _SCHEME_SEARCH_CHARS)
    if colon > 0 and _SCHEME.fullmatch(text, 0, colon):
        if text[:colon].lower() != "data":
            raise invalid_argument(f"{field}: image URLs are not fetched; {_SEND_DATA_URL}")
        return _parse_data_url(text, field, budget)
    try:
        return _from_base64(text, None, field, budget)
    except _NotBase64:
        raise _not_base64(field) from None
    except _NotAnImage:
        raise _not_an_image(field) from None


def detect_blob(text: str, field: str, budget: ImageBudget) -> Image | None:
    """The image a document holds when it is wholly the base64 of one (Weaviate's ``blob``),
    else ``None``: the document stays text.

    Ordinary text costs a prefix comparison. Only a document that starts as an image's
    base64 does, and has no space, is decoded; one whose first bytes are an image's signature
    but that breaks a size limit is refused (an image that cannot be sent is an error, not
    text to rank).
    """
    if not text.startswith(_BLOB_PREFIXES) or " " in text:
        return None
    head = text[:_BLOB_HEAD_CHARS]
    try:
        if sniff(_b64decode(head[: len(head) // 4 * 4])) is None:
            return None
    except (binascii.Error, ValueError):
        return None
    try:
        return _from_base64(text, None, field, budget)
    except (_NotBase64, _NotAnImage):
        return None


def image_formats(model: str, catalog: Catalog = DEFAULT_CATALOG) -> frozenset[str] | None:
    """The media types ``model`` takes (empty: text only), or ``None`` for a model the catalog
    does not know: then NIM decides."""
    return catalog.image_formats(model)


def check_model_takes(
    image: Image, model: str, field: str, catalog: Catalog = DEFAULT_CATALOG
) -> None:
    """Refuse ``image`` when the catalog knows ``model`` does not take it."""
    formats = catalog.image_formats(model)
    if formats is None or image.media_type in formats:
        return
    if not formats:
        raise invalid_argument(f"{field}: model {model!r} ranks text only; it takes no images")
    names = [name for media_type, name in FORMAT_NAMES.items() if media_type in formats]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise invalid_argument(
        f"{field}: model {model!r} takes {listed} images, not {FORMAT_NAMES[image.media_type]}"
    )


def _parse_data_url(text: str, field: str, budget: ImageBudget) -> Image:
    comma = text.find(",", 0, _HEADER_SEARCH_CHARS)
    if comma < 0:
        raise invalid_argument(f"{field}: not a data URL; {_SEND_DATA_URL}")
    declared, *parameters = (part.strip().lower() for part in text[5:comma].split(";"))
    if "asset_id" in parameters:
        raise invalid_argument(f"{field}: asset ids are not supported; {_SEND_DATA_URL}")
    if parameters[-1:] != ["base64"]:
        raise invalid_argument(f"{field}: not a base64 data URL; {_SEND_DATA_URL}")
    media_type = _TYPE_ALIASES.get(declared, declared)
    if media_type not in FORMAT_NAMES:
        shown = declared if declared.isprintable() and len(declared) <= 40 else "its type"
        raise invalid_argument(f"{field}: declared {shown or 'no type'}, not {_FORMAT_LIST}")
    try:
        image = _from_base64(text[comma + 1 :], text, field, budget)
    except _NotBase64:
        raise _not_base64(field) from None
    except _NotAnImage:
        raise _not_an_image(field) from None
    if image.media_type != media_type:
        raise invalid_argument(
            f"{field}: declared {declared} but the bytes are a "
            f"{FORMAT_NAMES[image.media_type]} image"
        )
    return image


def _from_base64(payload: str, data_url: str | None, field: str, budget: ImageBudget) -> Image:
    """The image in ``payload``; ``data_url`` is the caller's URL it came in, if any."""
    if not payload:
        raise _NotBase64
    clean = payload
    size = _decoded_size(payload)
    if size > budget.limits.max_image_bytes or budget.used + size > (
        budget.limits.max_request_image_bytes
    ):
        # Over a limit: it may only be the whitespace counted as base64.
        clean = _without_whitespace(payload)
        size = _decoded_size(clean)
        budget.check(size, field)
    try:
        data = _b64decode(clean)
    except (binascii.Error, ValueError):
        if clean is not payload:
            raise _NotBase64 from None
        clean = _without_whitespace(payload)
        if clean is payload:
            raise _NotBase64 from None
        try:
            data = _b64decode(clean)
        except (binascii.Error, ValueError):
            raise _NotBase64 from None
    media_type = sniff(data)
    if media_type is None:
        raise _NotAnImage
    budget.charge(len(data), field)
    prefix = f"data:{media_type};base64,"
    # The caller's own URL when it is exactly what would be built: no copy of the payload.
    canonical = (
        data_url is not None
        and clean is payload
        and len(data_url) == len(prefix) + len(payload)
        and data_url.startswith(prefix)
    )
    return _image(data, media_type, data_url if canonical else prefix + clean)


def _image(data: bytes, media_type: str, data_url: str | None) -> Image:
    if data_url is None:
        encoded = binascii.b2a_base64(data, newline=False).decode("ascii")
        data_url = f"data:{media_type};base64,{encoded}"
    digest = hashlib.blake2b(data, digest_size=16).digest()
    return Image(data, media_type, data_url, digest)


def _decoded_size(payload: str) -> int:
    """The bytes ``payload`` decodes to, if it is clean base64 (an over-estimate otherwise)."""
    padding = 2 if payload.endswith("==") else 1 if payload.endswith("=") else 0
    return max(0, len(payload) * 3 // 4 - padding)


def _without_whitespace(payload: str) -> str:
    if any(space in payload for space in _WHITESPACE):
        return "".join(payload.split())
    return payload


if sys.version_info >= (3, 11):

    def _b64decode(payload: str) -> bytes:
        return binascii.a2b_base64(payload, strict_mode=True)

else:  # pragma: no cover - Python 3.10

    def _b64decode(payload: str) -> bytes:
        # validate=True refuses characters outside the alphabet; a2b_base64 then the padding.
        return base64.b64decode(payload, validate=True)


def _not_base64(field: str) -> RerankError:
    return invalid_argument(f"{field}: not valid base64")


def _not_an_image(field: str) -> RerankError:
    return invalid_argument(f"{field}: not {_FORMAT_LIST}")
