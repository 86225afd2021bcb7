"""What a model id may be: the one grammar every model id is checked against, wherever it
comes from (a request body, a route path, gRPC options, a collection's module config, the
settings, the endpoint table), before it is put in a URL or a body.

    model id  = [org "/"] name [":" tag]
    org       = 1 to 64 of  A-Z a-z 0-9 . _ -   starting with a letter or digit
    name      = 1 to 128 of A-Z a-z 0-9 . _ -   starting with a letter or digit
    tag       = 1 to 32 of  A-Z a-z 0-9 . _ -   starting with a letter or digit

Every NIM reranking model id fits (``nvidia/llama-3.2-nv-rerankqa-1b-v2``,
``nv-rerank-qa-mistral-4b:1``, ``nvidia/Nemotron-3.5-Rerank-8B-BF16``). Nothing that ends,
re-roots or escapes a URL path does: no ``/`` beyond the one separator, no ``%``, ``?``,
``#``, ``\\``, space or control character, and no segment that is ``.`` or ``..``.
"""

from __future__ import annotations

import functools
import re

from reranker_nvidia.errors import RerankError, invalid_argument

MAX_MODEL_ID_CHARS = 64 + 1 + 128 + 1 + 32
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]"
MODEL_ID = re.compile(rf"(?:{_SEGMENT}{{0,63}}/)?{_SEGMENT}{{0,127}}(?::{_SEGMENT}{{0,31}})?")
GRAMMAR = (
    "[org/]name[:tag], each part letters, digits, '.', '_' or '-', starting with a letter or digit"
)
_DIGIT_UNDERSCORE_DIGIT = re.compile(r"(?<=\d)_(?=\d)")


def normalise_model(model: str) -> str:
    """Model id as NIM expects it in the request body.

    LiteLLM users write versions with underscores (``llama-3_2``) because that is how the
    hosted path spells them; the body wants periods (``llama-3.2``). Only an underscore between
    two digits is a version separator, so no other underscore is touched.
    """
    return _DIGIT_UNDERSCORE_DIGIT.sub(".", model.strip())


@functools.lru_cache(maxsize=1024)
def _checked(model: str) -> str | None:
    normalised = normalise_model(model)
    return normalised if MODEL_ID.fullmatch(normalised) else None


def check_model_id(model: str, field: str = "model") -> str:
    """``model`` normalised (``normalise_model``), or INVALID_ARGUMENT naming ``field``."""
    if len(model) > MAX_MODEL_ID_CHARS + 16:
        raise invalid_argument(f"{field}: longer than {MAX_MODEL_ID_CHARS} characters")
    checked = _checked(model)
    if checked is None:
        raise _refused(model, field)
    return checked


def _refused(model: str, field: str) -> RerankError:
    shown = model if model.isascii() and model.isprintable() and len(model) <= 80 else None
    what = f"{shown!r} is not a model id" if shown is not None else "not a model id"
    return invalid_argument(f"{field}: {what} ({GRAMMAR})")
