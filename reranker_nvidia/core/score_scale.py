"""The scale each surface's scores are on (``RERANKER_SCORE_SCALE``), applied in one place: the
ranker's answer.

NIM and Weaviate's built-in module give raw logits; reranker-transformers (what Weaviate's
``/rerank`` users replace) and Cohere give probabilities in [0, 1]. Users write score
thresholds and autocut against the scale they know, so each surface may have its own:
``logit`` (NIM's own number, the default everywhere) or ``sigmoid`` (``1 / (1 + e^-logit)``,
the probability a cross-encoder's logit stands for). Both keep the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Surface = Literal["weaviate", "nim", "cohere", "grpc"]
Scale = Literal["logit", "sigmoid"]
SURFACES: tuple[Surface, ...] = get_args(Surface)
SCALES: tuple[Scale, ...] = get_args(Scale)


@dataclass(frozen=True)
class ScoreScales:
    weaviate: Scale = "logit"
    nim: Scale = "logit"
    cohere: Scale = "logit"
    grpc: Scale = "logit"

    @classmethod
    def parse(cls, text: str) -> ScoreScales:
        """``logit``, ``sigmoid``, or ``surface=scale`` pairs separated by commas (surfaces
        not named keep ``logit``); ValueError naming what is wrong."""
        text = text.strip().lower()
        if text in SCALES:
            return cls(text, text, text, text)
        chosen: dict[str, Scale] = {}
        for part in filter(None, (item.strip() for item in text.split(","))):
            surface, equals, scale = (piece.strip() for piece in part.partition("="))
            if not equals or surface not in SURFACES or scale not in SCALES:
                raise ValueError(
                    f"{part!r} is not surface=scale (surfaces: {', '.join(SURFACES)}; scales: "
                    f"{', '.join(SCALES)}), and the whole is not one scale"
                )
            chosen[surface] = scale
        if not chosen:
            raise ValueError(f"must be {' or '.join(SCALES)}, or surface=scale pairs")
        return cls(**chosen)

    def of(self, surface: Surface) -> Scale:
        scale: Scale = getattr(self, surface)
        return scale

    def describe(self) -> str:
        scales = {surface: self.of(surface) for surface in SURFACES}
        if len(set(scales.values())) == 1:
            return f"{scales['weaviate']} on every surface"
        return ", ".join(f"{surface} {scale}" for surface, scale in scales.items())


def scaled(scale: Scale, logits: Sequence[float]) -> list[float]:
    """``logits`` on ``scale``."""
    if scale == "logit":
        return list(logits)
    return [_sigmoid(logit) for logit in logits]


def _sigmoid(logit: float) -> float:
    # The two forms keep exp() from overflowing at either end.
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)
