"""The names the score cache keeps pairs under: one name per (request context, passage), and
no two different pairs under one name, whichever way names are made (keyed string hashes
where only this process reads them, keyed BLAKE2b where replicas share a store). A shared
name is a cached score given to the wrong request, so every hostile form that tries to make
two pairs meet runs against both ways."""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import AsyncIterator, Sequence
from itertools import combinations

import pytest
from pydantic import SecretStr

from reranker_nvidia.core import RankOptions
from reranker_nvidia.core.documents.images import ImageBudget, ImageLimits, parse_image
from reranker_nvidia.core.documents.passages import ImagePassage, Passage
from reranker_nvidia.core.ranker import Ranker
from reranker_nvidia.core.trust import digests as digests_module
from reranker_nvidia.server.assembly import Core, build_core
from reranker_nvidia.settings import Settings
from tests.image_samples import BLUE_SQUARE, RED_SQUARE

QUERY = "which way should i go"


def image_passage(text: str, data: bytes) -> ImagePassage:
    budget = ImageBudget(ImageLimits())
    return ImagePassage(text, parse_image(data, "image", budget))


@pytest.fixture(params=["process-hash", "keyed-digest"])
async def core(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Core]:
    if request.param == "keyed-digest":
        # As when PYTHONHASHSEED is fixed: the string hash is then not a secret, so names
        # fall back to the keyed digests a shared store uses.
        monkeypatch.setattr(digests_module, "_HASHES_ARE_RANDOM", False)
    settings = Settings(api_key=SecretStr("nvapi-operator"), cache_size=100, cache_scope="key")
    built = build_core(settings)
    yield built
    await built.aclose()


def names(
    ranker: Ranker, documents: Sequence[Passage], query: str = QUERY, **options: str
) -> list[object]:
    target = ranker.resolve(RankOptions(**options))
    text_only = all(isinstance(d, str) for d in documents)
    return list(ranker.pair_keys(target, query, documents, text_only))


@functools.cache
def image_with_ascii_digest() -> bytes:
    """A PNG (bytes after its end, which readers skip) whose digest is all ASCII, so that a text
    passage can spell out the digest exactly: the image a forger would pick. Found in about
    10^5 tries (a digest byte is below 0x80 one time in two)."""
    for counter in itertools.count():
        data = RED_SQUARE + counter.to_bytes(4, "big")
        if hashlib.blake2b(data, digest_size=16).digest().isascii():
            return data
    raise AssertionError("unreachable")


def hostile_passages() -> list[Passage]:
    """Passages that differ as little as text and images allow, and texts that spell out what
    an image passage is named by."""
    red, blue = image_passage("", RED_SQUARE), image_passage("", BLUE_SQUARE)
    red_text = image_passage("a", RED_SQUARE)
    forged = image_passage("a", image_with_ascii_digest())
    digest = forged.image.digest.decode("ascii")
    return [
        "a",
        "a ",
        "A",
        "",
        "\x00",
        "a\x00",
        "\ud800",  # a lone surrogate, as JSON allows
        "é",
        "e\u0301",  # the same letter, decomposed
        forged,
        digest + "a",
        "a" + digest,
        "a\x00image\x00" + digest,
        digest,
        red,
        blue,
        red_text,
        image_passage("b", RED_SQUARE),
        image_passage("a", BLUE_SQUARE),
    ]


def test_no_two_different_passages_share_a_name(core: Core) -> None:
    passages = hostile_passages()
    named = names(core.ranker, passages)
    assert len(set(map(repr, named))) == len(passages)
    for (left, left_name), (right, right_name) in combinations(
        zip(passages, named, strict=True), 2
    ):
        assert left_name != right_name, (left, right)


def test_a_pair_keeps_its_name_across_requests_and_positions(core: Core) -> None:
    passages = hostile_passages()
    forwards = names(core.ranker, passages)
    backwards = names(core.ranker, passages[::-1])
    assert forwards == backwards[::-1]
    # A text-only request names its texts as a mixed request does.
    texts = [p for p in passages if isinstance(p, str)]
    assert names(core.ranker, texts) == [
        n for p, n in zip(passages, forwards, strict=True) if isinstance(p, str)
    ]


@pytest.mark.parametrize(
    ("query", "options"),
    [
        ("which way should i go ", {}),
        ("which way should i go\x00", {}),
        ("", {}),
        (QUERY, {"model": "nvidia/nv-rerankqa-mistral-4b-v3"}),
        (QUERY, {"truncate": "END"}),
        (QUERY, {"api_key": "nvapi-someone-else"}),
    ],
    ids=["query-space", "query-nul", "query-empty", "model", "truncate", "caller-key"],
)
def test_every_part_of_the_context_changes_the_name(
    core: Core, query: str, options: dict[str, str]
) -> None:
    passages = hostile_passages()
    base = names(core.ranker, passages)
    other = names(core.ranker, passages, query, **options)
    assert not set(map(repr, base)) & set(map(repr, other))


async def test_names_differ_between_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (or a restart) name the same pair differently unless they share the
    secret, so a name learned from one tells nothing about another."""
    monkeypatch.setattr(digests_module, "_HASHES_ARE_RANDOM", False)
    first = build_core(Settings(api_key=SecretStr("nvapi-operator"), cache_size=10))
    second = build_core(Settings(api_key=SecretStr("nvapi-operator"), cache_size=10))
    try:
        assert names(first.ranker, ["a"]) != names(second.ranker, ["a"])
    finally:
        await first.aclose()
        await second.aclose()


async def test_process_hash_names_are_only_used_where_the_hash_is_keyed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = build_core(Settings(api_key=SecretStr("nvapi-operator"), cache_size=10))
    try:
        monkeypatch.setattr(digests_module, "_HASHES_ARE_RANDOM", True)
        assert all(isinstance(name, int) for name in names(core.ranker, ["a", "b"]))
        monkeypatch.setattr(digests_module, "_HASHES_ARE_RANDOM", False)
        digest_names = names(core.ranker, ["a", "b"])
        assert all(isinstance(name, bytes) and len(name) == 16 for name in digest_names)
    finally:
        await core.aclose()
