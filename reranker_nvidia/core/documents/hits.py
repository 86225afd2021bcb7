"""Reranking search hits: the text each hit is ranked by, and the order they come back in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reranker_nvidia.core.documents.images import ImageBudget, parse_image
from reranker_nvidia.core.documents.passages import ImagePassage, Passage
from reranker_nvidia.core.ranker import Ranker, check_count, check_top_n
from reranker_nvidia.core.targets.target import RankOptions
from reranker_nvidia.errors import invalid_argument
from reranker_nvidia.types import Hit, RerankedHit, RerankedHits

MODULE_CONFIG_KEY = "reranker-nvidia"
PROPERTY_SEPARATOR = "\n"


def hit_text(hit: Hit, properties: Sequence[str]) -> str:
    """The text a hit is ranked by: its string (or string-array) properties, joined.

    Properties that are missing, not text, or blank contribute nothing.
    """
    values = hit.properties
    if not values:
        return ""
    parts: list[str] = []
    for name in properties:
        value = values.get(name)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (list, tuple)):
            parts.extend(item for item in value if isinstance(item, str))
    return PROPERTY_SEPARATOR.join(part for part in parts if part.strip())


def hit_passage(hit: Hit, position: int, properties: Sequence[str], images: ImageBudget) -> Passage:
    """What a hit is ranked by: its text, and the first of its rerank properties that holds
    bytes (a Weaviate ``blob`` sent as ``binary_properties``) as its image. "" when it has
    neither: such hits are not sent to NIM."""
    text = hit_text(hit, properties)
    for name in properties:
        value = hit.properties.get(name)
        if isinstance(value, bytes):
            field = f"hits[{position}].binary_properties.{name}"
            return ImagePassage(text, parse_image(value, field, images))
    return text


def collection_options(module_config: Mapping[str, Any] | None) -> RankOptions:
    """Options from a collection's module config.

    Accepts what weaviate-client emits, ``{"reranker-nvidia": {"model": ..., "baseURL": ...}}``,
    or the inner object alone.
    """
    if not module_config:
        return RankOptions()
    config = module_config.get(MODULE_CONFIG_KEY, module_config)
    if not isinstance(config, Mapping):
        raise invalid_argument(f"module_config.{MODULE_CONFIG_KEY} must be an object")
    model = config.get("model")
    base_url = config.get("baseURL", config.get("base_url"))
    for name, value in (("model", model), ("baseURL", base_url)):
        if value is not None and not isinstance(value, str):
            raise invalid_argument(f"module_config.{MODULE_CONFIG_KEY}.{name} must be a string")
    return RankOptions(model=model, base_url=base_url)


def rerank_properties(ranker: Ranker, properties: Sequence[str], hit_count: int) -> list[str]:
    """The distinct property names to rank by, once the request's counts are within the
    ranker's limits.

    Checked before any hit is looked at: the work of a request is hits x properties.
    """
    limits = ranker.limits
    check_count("hits", hit_count, limits.max_documents, "RERANKER_MAX_DOCUMENTS")
    check_count("properties", len(properties), limits.max_properties, "RERANKER_MAX_PROPERTIES")
    names = list(dict.fromkeys(name for name in properties if name.strip()))
    if not names:
        raise invalid_argument("properties must name at least one property to rerank by")
    return names


async def rerank_hits(
    ranker: Ranker,
    hits: Sequence[Hit],
    *,
    properties: Sequence[str],
    query: str,
    options: RankOptions = RankOptions(),
    collection: RankOptions = RankOptions(),
    top_n: int | None = None,
    budget_s: float | None = None,
) -> RerankedHits:
    """Hits sorted by rerank score, best first, then the hits with no text in their old order.

    Request ``options`` win over the ``collection``'s, which win over the server's settings.
    """
    properties = rerank_properties(ranker, properties, len(hits))
    check_top_n(top_n)
    images = ranker.image_budget(len(hits))
    texts = [hit_passage(hit, position, properties, images) for position, hit in enumerate(hits)]
    ranked_positions = [position for position, text in enumerate(texts) if text]
    ranking = await ranker.rank(
        query,
        [texts[position] for position in ranked_positions],
        options.over(collection),
        surface="grpc",
        budget_s=budget_s,
        blobs=True,
        images=images,
    )
    scored = [
        RerankedHit(hits[ranked_positions[i]], ranked_positions[i], ranking.scores[i])
        for i in ranking.order()
    ]
    unscored = [
        RerankedHit(hit, position, None) for position, hit in enumerate(hits) if not texts[position]
    ]
    result = scored + unscored
    return RerankedHits(
        model=ranking.model,
        usage=ranking.usage,
        hits=result if top_n is None else result[:top_n],
        fallback=ranking.fallback,
    )
