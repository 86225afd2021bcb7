"""A passage sent as an object, as the NIM and Cohere/Jina contracts both take it: ``text``,
``image``, or both."""

from __future__ import annotations

from reranker_nvidia.core import ImageBudget, ImagePassage, Passage, parse_image
from reranker_nvidia.web.json_body import Json, field_error, optional_string, string


def text_or_image(item: Json, where: str, images: ImageBudget) -> Passage:
    """``item`` (at ``where``) as a passage: its text, or its image beside its text if any; the
    image is checked here, where it enters."""
    text = optional_string(item.get("text"), f"{where}.text")
    image = item.get("image")
    if image is None:
        if text is None:
            raise field_error(f"{where}.text", "Field required (or an image)")
        return text
    found = parse_image(string(image, f"{where}.image"), f"{where}.image", images)
    return ImagePassage(text or "", found)
