"""The NIM emulator ranks images as NIM's vision-language models take them, over real HTTP:
data URLs only, NIM's 400 for anything else, and a transparent score whose order tests can
predict (the red square first for "Which picture shows a red square?")."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image as PillowImage

from reranker_nvidia.emulator import IMAGE_TOKENS, image_words, png_pixels, terms
from tests.image_samples import (
    BLUE_SQUARE,
    BLUE_SQUARE_B64,
    RED_SQUARE,
    RED_SQUARE_B64,
    data_url,
    jpeg_with_comment,
    pillow,
    png,
    square,
)
from tests.support import Emulator

VL = "nvidia/llama-nemotron-rerank-vl-1b-v2"
NEMOTRON = "nvidia/Nemotron-3.5-Rerank-8B-BF16"
QUERY = "Which picture shows a red square?"
RED = "data:image/png;base64," + RED_SQUARE_B64
BLUE = "data:image/png;base64," + BLUE_SQUARE_B64


def rank(
    emulator: Emulator, passages: list[dict[str, Any]], model: str = VL, **extra: Any
) -> httpx.Response:
    body = {"model": model, "query": {"text": QUERY}, "passages": passages, **extra}
    return httpx.post(emulator.url + "/v1/ranking", json=body)


def order(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [entry["index"] for entry in response.json()["rankings"]]


def test_the_red_square_ranks_first(emulator: Emulator) -> None:
    passages = [{"image": BLUE}, {"text": "A photo of the sea."}, {"image": RED}]
    response = rank(emulator, passages)
    assert order(response) == [2, 0, 1]
    query = len(terms(QUERY))
    tokens = 2 * (query + IMAGE_TOKENS) + query + len(terms("A photo of the sea."))
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    (call,) = emulator.state.calls
    assert (call.kinds, call.images, call.image_only_with_text) == (
        ("image", "text", "image"),
        2,
        False,
    )


def test_an_image_and_its_text_rank_together(emulator: Emulator) -> None:
    passages = [{"image": RED}, {"text": "A red square.", "image": RED}, {"text": "A red square."}]
    assert order(rank(emulator, passages))[0] == 1


@pytest.mark.parametrize(
    ("client", "blank_text"),
    [("langchain", True), ("litellm", False)],
    ids=["langchain", "litellm"],
)
def test_the_captured_clients_bodies_are_ranked_and_recorded(
    emulator: Emulator, client: str, blank_text: bool
) -> None:
    """shared/wire/multimodal/: LangChain sends "text": "" beside an image, LiteLLM no text."""
    image_only: dict[str, Any] = {"text": "", "image": BLUE} if blank_text else {"image": BLUE}
    passages = [
        {"text": "A red square.", "image": RED},
        image_only,
        {"text": "The weather today is sunny."},
    ]
    assert order(rank(emulator, passages)) == [0, 1, 2]
    (call,) = emulator.state.calls
    assert call.kinds == ("text+image", "image", "text") and call.images == 2
    assert call.image_only_with_text is blank_text


def test_a_caption_says_more_than_the_pixels(emulator: Emulator) -> None:
    """A PNG's Description and a JPEG's comment are their words; the colour only stands in."""
    captioned_blue = square((0, 0, 255), text={"Description": "a red square"})
    passages = [
        {"image": RED},
        {"image": data_url(captioned_blue)},
        {"image": data_url(jpeg_with_comment("a red square"), "image/jpeg")},
    ]
    ranked = order(rank(emulator, passages))
    assert ranked[-1] == 0, "red pixels alone match fewer query words than a caption"
    assert image_words(captioned_blue, "image/png") == ("a", "red", "square", "picture", "png")
    jpeg = jpeg_with_comment("a red square")
    assert image_words(jpeg, "image/jpeg") == ("a", "red", "square", "picture", "jpeg")
    assert image_words(pillow("WEBP"), "image/webp") == ("picture", "webp")


def detail(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str), "NIM's shape: {'detail': message}"
    return str(body["detail"])


PLEASE = "send the image itself as a data URL (data:image/png;base64,...)"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("https://example.com/red.png", f"image URLs are not fetched; {PLEASE}"),
        ("data:image/png;asset_id,5c6d1a2b", f"asset ids are not supported; {PLEASE}"),
        ("data:image/png;base64,%%%", "not valid base64"),
        (RED_SQUARE_B64, "not a data URL (data:image/png;base64,...)"),
        ("data:image/jpeg;base64," + RED_SQUARE_B64, "declared image/jpeg but the bytes are a PNG"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not a PNG, JPEG, WebP, GIF, BMP or TIFF image"),
    ],
)
def test_what_nim_refuses_is_a_400_naming_the_passage(
    emulator: Emulator, image: str, message: str
) -> None:
    response = rank(emulator, [{"text": "fine"}, {"image": image}])
    assert detail(response).startswith(f"passages[1].image: {message}")


def test_each_model_takes_its_own_formats(emulator: Emulator) -> None:
    webp = data_url(pillow("WEBP"), "image/webp")
    tiff = data_url(pillow("TIFF"), "image/tiff")
    jpeg = data_url(pillow("JPEG"), "image/jpeg")
    assert order(rank(emulator, [{"image": webp}, {"image": tiff}, {"image": jpeg}])) != []
    assert order(rank(emulator, [{"image": RED}, {"image": jpeg}], model=NEMOTRON)) != []
    assert detail(rank(emulator, [{"image": webp}], model=NEMOTRON)) == (
        f"passages[0].image: model {NEMOTRON!r} takes PNG or JPEG images, not WebP"
    )
    # A model the catalog does not know takes what every VL NIM takes.
    assert order(rank(emulator, [{"image": RED}], model="acme/vision")) == [0]
    assert "takes PNG or JPEG images, not TIFF" in detail(
        rank(emulator, [{"image": tiff}], model="acme/vision")
    )
    text_only = "nvidia/llama-3.2-nv-rerankqa-1b-v2"
    assert detail(rank(emulator, [{"text": "a"}, {"image": RED}], model=text_only)) == (
        f"passages[1].image: model {text_only!r} ranks text only, not images"
    )


def test_a_passage_with_neither_text_nor_image_is_a_422(emulator: Emulator) -> None:
    response = rank(emulator, [{"image": RED}, {}])
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "passages", 1]
    assert "a passage needs text, an image or both" in error["msg"]
    assert rank(emulator, [{"text": None, "image": None}]).status_code == 422


def test_an_image_counts_toward_the_pair_limit_and_truncation_cuts_text_only(
    emulator: Emulator,
) -> None:
    query = len(terms(QUERY))
    emulator.state.max_pair_tokens = query + IMAGE_TOKENS + 2
    long_text = {"text": "red " * 10, "image": RED}
    refused = rank(emulator, [long_text])
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "passages", 0, "text"]
    cut = rank(emulator, [long_text], truncate="END")
    assert cut.json()["usage"]["prompt_tokens"] == query + IMAGE_TOKENS + 2
    emulator.state.max_pair_tokens = query + IMAGE_TOKENS - 1
    too_big = rank(emulator, [{"image": RED}], truncate="END")
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["loc"] == ["body", "passages", 0, "image"]


# The emulator's PNG decoder, against the pixels the tests wrote and against Pillow.


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(
    ("colour_type", "pixel", "rgb"),
    [
        (0, lambda x, y: (x * 17 + y,), lambda p: (p[0], p[0], p[0])),
        (2, lambda x, y: (x * 31 % 256, y * 47 % 256, (x * y) % 256), lambda p: p),
        (4, lambda x, y: (x * 13, 255), lambda p: (p[0], p[0], p[0])),
        (6, lambda x, y: (x * 9, y * 11, 200, 255), lambda p: p[:3]),
    ],
)
def test_every_scanline_filter_and_colour_type_decodes(
    kind: int, colour_type: int, pixel: Any, rgb: Any
) -> None:
    rows = [[pixel(x, y) for x in range(7)] for y in range(5)]
    data = png(rows, colour_type=colour_type, filters=(kind, (kind + 1) % 5))
    assert png_pixels(data) == [tuple(rgb(p)) for row in rows for p in row]


def test_palette_images_and_transparent_pixels() -> None:
    palette = [(255, 0, 0), (0, 0, 255)]
    data = png([[(0,), (0,), (1,)]], colour_type=3, palette=palette)
    assert png_pixels(data) == [(255, 0, 0), (255, 0, 0), (0, 0, 255)]
    assert image_words(data, "image/png") == ("red", "picture", "png")
    clear_blue_on_red = png([[(0, 0, 255, 0)] * 3 + [(255, 0, 0, 255)]], colour_type=6)
    assert image_words(clear_blue_on_red, "image/png") == ("red", "picture", "png")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_the_decoder_reads_what_pillow_writes(mode: str) -> None:
    gradient = PillowImage.new("RGB", (23, 9))
    gradient.putdata(
        [(x * 11 % 256, y * 29 % 256, (x + y) * 7 % 256) for y in range(9) for x in range(23)]
    )
    image = gradient.convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    flat = image.convert("RGB").tobytes()
    expected = list(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))
    assert png_pixels(out.getvalue()) == expected


def test_what_the_decoder_does_not_read_leaves_the_kind_words() -> None:
    large = io.BytesIO()
    PillowImage.new("RGB", (300, 300), (255, 0, 0)).save(large, format="PNG")
    assert png_pixels(large.getvalue()) is None, "over 65536 pixels"
    assert image_words(large.getvalue(), "image/png") == ("picture", "png")
    red = square((255, 0, 0))
    interlaced = red[:28] + b"\1" + red[29:]  # IHDR's interlace method (the CRC is not read)
    assert png_pixels(red) is not None and png_pixels(interlaced) is None
    sixteen_bit = io.BytesIO()
    PillowImage.new("I;16", (4, 4)).save(sixteen_bit, format="PNG")
    assert png_pixels(sixteen_bit.getvalue()) is None
    assert png_pixels(RED_SQUARE[:40]) is None
    assert image_words(RED_SQUARE, "image/png") == ("red", "picture", "png")
    assert image_words(BLUE_SQUARE, "image/png") == ("blue", "picture", "png")
