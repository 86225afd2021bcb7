"""The reranking models the sidecar knows, as data: where NVIDIA hosts each, its token limit,
and whether it ranks images (and in which formats).

A model the catalog does not know is still served: the sidecar then makes no assumption
about it (no client-side format check; NIM decides). ``RERANKER_VL_MODELS`` names further
vision-language models; ``Catalog(extra_vision_models=...)`` adds them.

Sources: NVIDIA's NIM support matrices and API reference, as summarised in the project's
CONTRACTS.md §1. Token limits are a model's own (the optimised profiles); a deployment may
serve less (a non-optimised 1B profile: 4096) or more (Nemotron 3.5 raised from 10240).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from reranker_nvidia.core.targets.model_ids import normalise_model

PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
GIF = "image/gif"
BMP = "image/bmp"
TIFF = "image/tiff"
# Every format the sidecar recognises by its bytes; each media type's short name for messages.
FORMAT_NAMES = {PNG: "PNG", JPEG: "JPEG", WEBP: "WebP", GIF: "GIF", BMP: "BMP", TIFF: "TIFF"}
ALL_FORMATS = frozenset(FORMAT_NAMES)
# What every vision-language NIM takes.
PNG_JPEG = frozenset({PNG, JPEG})
TEXT_ONLY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One reranking model.

    ``hosted_path`` is the path ``ai.api.nvidia.com`` serves it on, or ``None`` when NVIDIA
    does not host it (self-hosted NIM only). ``max_tokens`` is the query+passage limit, ``None``
    when unknown. ``image_formats`` is empty for a text-only model.
    """

    id: str
    max_tokens: int | None
    hosted_path: str | None
    image_formats: frozenset[str] = TEXT_ONLY

    @property
    def takes_images(self) -> bool:
        return bool(self.image_formats)


def _model(
    model: str, max_tokens: int, *, hosted: bool = True, formats: frozenset[str] = TEXT_ONLY
) -> ModelInfo:
    # Periods become underscores in the hosted path only; the body keeps the id as it is.
    path = f"/v1/retrieval/{model.replace('.', '_')}/reranking" if hosted else None
    return ModelInfo(model, max_tokens, path, formats)


# Hosted NIM serves this model, under either id, on the path without a model segment.
_LEGACY_PATH = "/v1/retrieval/nvidia/reranking"

KNOWN_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("nvidia/rerank-qa-mistral-4b", 512, _LEGACY_PATH),
    ModelInfo("nv-rerank-qa-mistral-4b:1", 512, _LEGACY_PATH),
    _model("nvidia/nv-rerankqa-mistral-4b-v3", 512),
    _model("nvidia/llama-3.2-nv-rerankqa-1b-v1", 512),
    _model("nvidia/llama-3.2-nv-rerankqa-1b-v2", 8192),
    _model("nvidia/llama-3.2-nemoretriever-500m-rerank-v2", 8192),
    _model("nvidia/llama-nemotron-rerank-1b-v2", 8192),
    _model("nvidia/llama-nemotron-rerank-500m-v2", 8192, hosted=False),
    # 8192 tokens in its first NIM releases.
    _model("nvidia/llama-nemotron-rerank-vl-1b-v2", 10240, formats=ALL_FORMATS),
    # Served with 10240 unless the deployment raises it.
    _model("nvidia/Nemotron-3.5-Rerank-8B-BF16", 32768, hosted=False, formats=PNG_JPEG),
)


class Catalog:
    """The known models by id, plus any extra vision-language ids from the settings.

    An extra id the catalog already knows becomes vision-language (keeping its formats if it
    was already); an unknown one is recorded as a self-hosted vision-language model taking
    every format the sidecar recognises, so that NIM, not the sidecar, decides on the format.
    Ids are looked up as NIM's body spells them (``normalise_model``: ``llama-3_2`` finds
    ``llama-3.2``).
    """

    __slots__ = ("_models",)

    def __init__(
        self,
        models: Iterable[ModelInfo] = KNOWN_MODELS,
        extra_vision_models: Iterable[str] = (),
    ) -> None:
        self._models = {model.id: model for model in models}
        for raw in extra_vision_models:
            model = normalise_model(raw)
            if not model:
                continue
            known = self._models.get(model)
            if known is None:
                self._models[model] = ModelInfo(model, None, None, ALL_FORMATS)
            elif not known.takes_images:
                self._models[model] = ModelInfo(
                    known.id, known.max_tokens, known.hosted_path, ALL_FORMATS
                )

    def get(self, model: str) -> ModelInfo | None:
        found = self._models.get(model)
        return found if found is not None else self._models.get(normalise_model(model))

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.get(model) is not None

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._models)

    def takes_images(self, model: str) -> bool | None:
        """Whether ``model`` ranks images; ``None`` when the catalog does not know it."""
        info = self.get(model)
        return None if info is None else info.takes_images

    def image_formats(self, model: str) -> frozenset[str] | None:
        """The media types ``model`` takes (empty: text only); ``None`` when unknown."""
        info = self.get(model)
        return None if info is None else info.image_formats


DEFAULT_CATALOG = Catalog()
