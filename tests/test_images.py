"""Images enter the sidecar in one place, core/documents/images.py: every form a client sends
is read, everything hostile is refused with a message naming the field, and the limits hold
before any decoding. The catalog says which model takes what."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker_nvidia.core.documents.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_REQUEST_IMAGE_BYTES,
    Image,
    ImageBudget,
    ImageLimits,
    check_model_takes,
    detect_blob,
    image_formats,
    parse_image,
    sniff,
)
from reranker_nvidia.core.targets.catalog import (
    ALL_FORMATS,
    DEFAULT_CATALOG,
    PNG_JPEG,
    Catalog,
)
from reranker_nvidia.core.targets.endpoints import resolve_endpoint
from reranker_nvidia.errors import ErrorCode, RerankError
from tests.image_samples import RED_SQUARE, RED_SQUARE_B64, data_url, pillow, square

FIELD = "passages[2].image"
VL = "nvidia/llama-nemotron-rerank-vl-1b-v2"
NEMOTRON = "nvidia/Nemotron-3.5-Rerank-8B-BF16"

# Each format as real bytes: PNG written in code, the rest by Pillow.
SAMPLES = {
    "image/png": square((255, 0, 0)),
    "image/jpeg": pillow("JPEG"),
    "image/webp": pillow("WEBP"),
    "image/gif": pillow("GIF"),
    "image/bmp": pillow("BMP"),
    "image/tiff": pillow("TIFF"),
}


def budget(per_image: int = DEFAULT_MAX_IMAGE_BYTES, per_request: int | None = None) -> ImageBudget:
    return ImageLimits(per_image, per_request or DEFAULT_MAX_REQUEST_IMAGE_BYTES).budget()


def refusal(value: str | bytes, within: ImageBudget | None = None) -> str:
    with pytest.raises(RerankError) as raised:
        parse_image(value, FIELD, within or budget())
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    return raised.value.message


@pytest.mark.parametrize("media_type", sorted(SAMPLES))
def test_every_form_of_every_format_is_the_same_image(media_type: str) -> None:
    data = SAMPLES[media_type]
    encoded = base64.b64encode(data).decode()
    url = f"data:{media_type};base64,{encoded}"
    forms = [parse_image(form, FIELD, budget()) for form in (data, encoded, url)]
    for image in forms:
        assert (image.data, image.media_type, image.data_url) == (data, media_type, url)
    assert forms[0] == forms[1] == forms[2]
    assert len({image.digest for image in forms}) == 1 and len(forms[0].digest) == 16
    assert sniff(data) == media_type


def test_a_canonical_data_url_reaches_nim_as_the_callers_own_string() -> None:
    url = "data:image/png;base64," + RED_SQUARE_B64
    assert parse_image(url, FIELD, budget()).data_url is url, "no copy of the payload"


@pytest.mark.parametrize(
    "written",
    [
        "DATA:IMAGE/PNG;BASE64,{}",
        "data:image/png;name=red.png;base64,{}",
        "  data:image/png;base64,{}\n",
    ],
)
def test_a_data_url_in_another_spelling_reaches_nim_canonical(written: str) -> None:
    image = parse_image(written.format(RED_SQUARE_B64), FIELD, budget())
    assert image.data_url == "data:image/png;base64," + RED_SQUARE_B64


def test_declared_type_aliases_reach_nim_as_the_canonical_type() -> None:
    jpeg = SAMPLES["image/jpeg"]
    image = parse_image(data_url(jpeg, "image/jpg"), FIELD, budget())
    assert image.media_type == "image/jpeg"
    assert image.data_url == data_url(jpeg, "image/jpeg")


def test_line_wrapped_base64_is_accepted_and_sent_without_whitespace() -> None:
    encoded = base64.encodebytes(pillow("PNG", size=64)).decode()  # MIME: a newline every 76
    assert "\n" in encoded.strip()
    for value in (encoded, "data:image/png;base64," + encoded):
        image = parse_image(value, FIELD, budget())
        assert image.data_url == "data:image/png;base64," + "".join(encoded.split())


def test_raw_bytes_get_a_data_url_built_once() -> None:
    image = parse_image(bytearray(RED_SQUARE), FIELD, budget())
    assert image.data == RED_SQUARE and isinstance(image.data, bytes)
    assert image.data_url == "data:image/png;base64," + RED_SQUARE_B64


PLEASE = "send the image itself as a data URL (data:image/png;base64,...)"
NOT_AN_IMAGE = f"{FIELD}: not a PNG, JPEG, WebP, GIF, BMP or TIFF image"
NOT_BASE64 = f"{FIELD}: not valid base64"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://example.com/red.png", f"{FIELD}: image URLs are not fetched; {PLEASE}"),
        ("http://169.254.169.254/latest", f"{FIELD}: image URLs are not fetched; {PLEASE}"),
        ("HTTPS://EXAMPLE.COM/a.png", f"{FIELD}: image URLs are not fetched; {PLEASE}"),
        ("file:///etc/passwd", f"{FIELD}: image URLs are not fetched; {PLEASE}"),
        ("s3://bucket/key.png", f"{FIELD}: image URLs are not fetched; {PLEASE}"),
        ("data:image/png;asset_id,5c6d1a", f"{FIELD}: asset ids are not supported; {PLEASE}"),
        ("data:image/png,%89PNG", f"{FIELD}: not a base64 data URL; {PLEASE}"),
        ("data:image/png;base64", f"{FIELD}: not a data URL; {PLEASE}"),
        (
            "data:image/jpeg;base64," + RED_SQUARE_B64,
            f"{FIELD}: declared image/jpeg but the bytes are a PNG image",
        ),
        (
            "data:image/svg+xml;base64,PHN2Zz4=",
            f"{FIELD}: declared image/svg+xml, not a PNG, JPEG, WebP, GIF, BMP or TIFF image",
        ),
        (
            "data:;base64," + RED_SQUARE_B64,
            f"{FIELD}: declared no type, not a PNG, JPEG, WebP, GIF, BMP or TIFF image",
        ),
        ("data:image/png;base64,!!!!", NOT_BASE64),
        ("data:image/png;base64," + RED_SQUARE_B64[:-1], NOT_BASE64),
        ("data:image/png;base64," + RED_SQUARE_B64 + "AAAA", NOT_BASE64),
        ("data:image/png;base64,", NOT_BASE64),
        ("", NOT_BASE64),
        ("=" + RED_SQUARE_B64, NOT_BASE64),
        (RED_SQUARE_B64.replace("/", "_"), NOT_BASE64),
        ("iVBORw0KGgo\u00e9AAAA", NOT_BASE64),
        (base64.b64encode(b"just some text, not an image").decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n").decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"BM" + b"\0" * 30).decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"\xff\xd8\xff").decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"GIF89a").decode(), NOT_AN_IMAGE),
        (base64.b64encode(b"RIFF\0\0\0\0WAVE").decode(), NOT_AN_IMAGE),
    ],
)
def test_hostile_and_broken_images_are_refused_naming_the_field(value: str, message: str) -> None:
    assert refusal(value) == message


@pytest.mark.parametrize(
    "value", [b"", b"hello", b"data:image/png;base64," + RED_SQUARE_B64.encode()]
)
def test_bytes_must_be_the_image_itself(value: bytes) -> None:
    assert refusal(value) == NOT_AN_IMAGE


def test_a_value_of_another_type_is_refused() -> None:
    with pytest.raises(RerankError, match=r"must be a data URL or base64 string"):
        parse_image(42, FIELD, budget())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(17),
        b"\xff\xd8\xff\xe0",
        b"GIF87a" + b"\0" * 7,
        b"GIF89a" + b"\0" * 7,
        b"RIFF\x10\0\0\0WEBPVP8 ",
        b"II*\0\x08\0\0\0",
        b"MM\0*\0\0\0\x08",
        b"BM" + b"\0" * 12 + struct.pack("<I", 40),
    ],
)
def test_each_formats_magic_numbers_are_recognised(header: bytes) -> None:
    assert sniff(header) is not None
    assert sniff(header[:-1] if header.startswith(b"BM") else b"x" + header) is None


def test_an_image_over_the_per_image_limit_is_refused_before_decoding() -> None:
    # 7 MiB of characters that are not base64: only the length can have been looked at.
    payload = "*" * (7340034 // 3 * 4)
    assert refusal("data:image/png;base64," + payload) == (
        f"{FIELD}: 7340034 bytes, at most 5242880 allowed per image (RERANKER_MAX_IMAGE_BYTES)"
    )
    assert refusal(b"\x89PNG" + bytes(5242880)) == (
        f"{FIELD}: 5242884 bytes, at most 5242880 allowed per image (RERANKER_MAX_IMAGE_BYTES)"
    )


def test_an_image_exactly_at_the_limit_is_taken() -> None:
    size = len(RED_SQUARE)
    image = parse_image(RED_SQUARE_B64, FIELD, budget(per_image=size, per_request=size))
    assert image.data == RED_SQUARE


def test_whitespace_does_not_count_toward_the_limit() -> None:
    size = len(RED_SQUARE)
    wrapped = "\n".join(RED_SQUARE_B64[i : i + 4] for i in range(0, len(RED_SQUARE_B64), 4))
    assert parse_image(wrapped, FIELD, budget(per_image=size)).data == RED_SQUARE


def test_the_request_wide_limit_is_charged_image_by_image() -> None:
    size = len(RED_SQUARE)
    request = budget(per_image=size, per_request=2 * size + 10)
    parse_image(RED_SQUARE, "passages[0].image", request)
    parse_image(RED_SQUARE_B64, "passages[1].image", request)
    assert request.used == 2 * size
    with pytest.raises(RerankError) as raised:
        parse_image(RED_SQUARE, FIELD, request)
    assert raised.value.message == (
        f"{FIELD}: {size} bytes would bring the request's images to {3 * size} bytes, at most "
        f"{2 * size + 10} allowed per request (RERANKER_MAX_REQUEST_IMAGE_BYTES)"
    )
    assert request.used == 2 * size, "a refused image is not charged"
    with pytest.raises(RerankError):
        parse_image("data:image/png;base64,!!!!", FIELD, request)
    assert request.used == 2 * size


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ImageLimits(0, 10)
    assert (ImageLimits().max_image_bytes, ImageLimits().max_request_image_bytes) == (
        5 * 1024 * 1024,
        32 * 1024 * 1024,
    )


def test_an_images_repr_shows_no_payload() -> None:
    image = parse_image(RED_SQUARE, FIELD, budget())
    assert repr(image) == f"Image(image/png, {len(RED_SQUARE)} bytes, {image.digest.hex()})"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.text().map(lambda t: "data:image/png;base64," + t)))
def test_any_input_is_an_image_or_a_refusal(value: str | bytes) -> None:
    try:
        image = parse_image(value, FIELD, budget())
    except RerankError as error:
        assert error.code is ErrorCode.INVALID_ARGUMENT and error.message.startswith(FIELD)
    else:
        assert isinstance(image, Image) and sniff(image.data) == image.media_type


# Blob detection: a document that is wholly an image's base64 is an image; anything else text.


@pytest.mark.parametrize(
    "text",
    [
        "A photo of the sea.",
        "",
        "Qk",
        "Qkwhat about this one",
        "/9j/",
        "/9j/ is how a JPEG's base64 starts",
        "iVBORw0KGgo but then prose",
        RED_SQUARE_B64[:40],
        RED_SQUARE_B64 + "!",
        base64.b64encode(b"plain bytes that are no image at all").decode(),
        base64.b64encode(b"BM and then no bitmap header at all, just text").decode(),
        "R0lGODlh" + "A" * 7 + "-",
    ],
)
def test_text_stays_text(text: str) -> None:
    assert detect_blob(text, FIELD, budget()) is None


@pytest.mark.parametrize("media_type", sorted(SAMPLES))
def test_a_document_that_is_wholly_an_images_base64_is_that_image(media_type: str) -> None:
    data = SAMPLES[media_type]
    image = detect_blob(base64.b64encode(data).decode(), FIELD, budget())
    assert image is not None and (image.data, image.media_type) == (data, media_type)
    assert image.data_url == data_url(data, media_type)


def test_a_blob_unmistakably_an_image_but_over_the_limit_is_an_error() -> None:
    encoded = base64.b64encode(pillow("PNG", size=64)).decode()
    with pytest.raises(RerankError, match=r"RERANKER_MAX_IMAGE_BYTES"):
        detect_blob(encoded, "documents[0]", budget(per_image=100))
    request = budget(per_request=len(RED_SQUARE) + 1)
    assert detect_blob(RED_SQUARE_B64, "documents[0]", request) is not None
    with pytest.raises(RerankError, match=r"RERANKER_MAX_REQUEST_IMAGE_BYTES"):
        detect_blob(RED_SQUARE_B64, "documents[1]", request)


def test_prose_costs_no_decoding_whatever_its_length() -> None:
    """Prose never reaches the base64 decoder: the limit would refuse it if it did."""
    tiny = budget(per_image=1, per_request=1)
    assert detect_blob("word " * 1_000_000, FIELD, tiny) is None
    assert detect_blob("Qk" + "x" * 1_000_000 + " end", FIELD, tiny) is None


# The catalog and what each model takes.


def test_the_catalog_keeps_every_known_model_and_adds_the_new_ones() -> None:
    earlier = {
        "nvidia/rerank-qa-mistral-4b",
        "nv-rerank-qa-mistral-4b:1",
        "nvidia/nv-rerankqa-mistral-4b-v3",
        "nvidia/llama-3.2-nv-rerankqa-1b-v1",
        "nvidia/llama-3.2-nv-rerankqa-1b-v2",
        "nvidia/llama-3.2-nemoretriever-500m-rerank-v2",
        "nvidia/llama-nemotron-rerank-1b-v2",
        "nvidia/llama-nemotron-rerank-vl-1b-v2",
    }
    assert earlier <= set(DEFAULT_CATALOG.ids)
    nemotron = DEFAULT_CATALOG.get(NEMOTRON)
    assert nemotron is not None
    assert (nemotron.hosted_path, nemotron.max_tokens, nemotron.image_formats) == (
        None,
        32768,
        PNG_JPEG,
    )
    small = DEFAULT_CATALOG.get("nvidia/llama-nemotron-rerank-500m-v2")
    assert small is not None and small.hosted_path is None and not small.takes_images
    vl = DEFAULT_CATALOG.get(VL)
    assert vl is not None and vl.image_formats == ALL_FORMATS and vl.max_tokens == 10240


def test_hosted_paths_are_the_ones_the_endpoint_resolver_builds() -> None:
    for model in DEFAULT_CATALOG:
        if model.hosted_path is not None:
            url = resolve_endpoint("https://ai.api.nvidia.com", model.id)
            assert url == "https://ai.api.nvidia.com" + model.hosted_path
    vl = DEFAULT_CATALOG.get(VL)
    assert vl is not None
    assert vl.hosted_path == "/v1/retrieval/nvidia/llama-nemotron-rerank-vl-1b-v2/reranking"


def test_models_are_found_as_litellm_users_write_them() -> None:
    assert DEFAULT_CATALOG.get("nvidia/llama-3_2-nv-rerankqa-1b-v2") is not None
    assert "nvidia/llama-3_2-nv-rerankqa-1b-v2" in DEFAULT_CATALOG
    assert DEFAULT_CATALOG.get("nvidia/unknown") is None and 42 not in DEFAULT_CATALOG


def test_extra_vision_models_come_from_the_settings() -> None:
    catalog = Catalog(
        extra_vision_models=["acme/vision-rerank", "nvidia/llama-nemotron-rerank-1b-v2", NEMOTRON]
    )
    assert catalog.image_formats("acme/vision-rerank") == ALL_FORMATS
    assert catalog.image_formats("nvidia/llama-nemotron-rerank-1b-v2") == ALL_FORMATS
    assert catalog.image_formats(NEMOTRON) == PNG_JPEG, "a known VL model keeps its formats"
    assert len(catalog) == len(DEFAULT_CATALOG) + 1
    assert DEFAULT_CATALOG.takes_images("nvidia/llama-nemotron-rerank-1b-v2") is False
    assert DEFAULT_CATALOG.takes_images("acme/vision-rerank") is None


def test_what_each_model_takes() -> None:
    red = parse_image(RED_SQUARE, FIELD, budget())
    webp = parse_image(SAMPLES["image/webp"], FIELD, budget())
    tiff = parse_image(SAMPLES["image/tiff"], FIELD, budget())
    for image in (red, webp, tiff):
        check_model_takes(image, VL, FIELD)
        check_model_takes(image, "acme/unknown-model", FIELD)
    check_model_takes(red, NEMOTRON, FIELD)
    with pytest.raises(RerankError) as raised:
        check_model_takes(webp, NEMOTRON, FIELD)
    assert raised.value.message == (
        f"{FIELD}: model {NEMOTRON!r} takes PNG or JPEG images, not WebP"
    )
    with pytest.raises(RerankError) as raised:
        check_model_takes(red, "nvidia/rerank-qa-mistral-4b", FIELD)
    assert raised.value.message == (
        f"{FIELD}: model 'nvidia/rerank-qa-mistral-4b' ranks text only; it takes no images"
    )
    assert image_formats(NEMOTRON) == PNG_JPEG
    assert image_formats("nvidia/rerank-qa-mistral-4b") == frozenset()
    assert image_formats("acme/unknown-model") is None
