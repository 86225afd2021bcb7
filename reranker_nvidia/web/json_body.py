"""Request bodies of the ranking routes: JSON parsed once by orjson (in C), then read field by
field, each refusal naming the field (as ``passages.2.text: Input should be a valid string``).

A body is refused before any field is read when it is not JSON, not UTF-8, or nested deeper
than ``MAX_DEPTH`` levels anywhere (orjson's own bound: no Python recursion is involved, and a
field the route ignores is bounded like any other). JSON may carry a lone surrogate escape
(``"\\ud800"``) that orjson refuses; such a body is read by the standard parser instead, so the
refusal names the field that holds it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from reranker_nvidia.core import all_text
from reranker_nvidia.errors import RerankError, invalid_argument

MAX_DEPTH = 1024

Json = dict[str, Any]


def parse_object(body: bytes) -> Json:
    """The body as a JSON object, or INVALID_ARGUMENT saying what is wrong with it."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        value = _second_look(body, str(error))
    if not isinstance(value, dict):
        raise invalid_argument("body: must be a JSON object")
    return value


def _second_look(body: bytes, reason: str) -> Any:
    if "depth" in reason or "recursion" in reason:
        raise _too_deep()
    if "surrogate" not in reason:
        raise invalid_argument("body: not valid JSON")
    try:
        return json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise invalid_argument("body: not valid JSON") from None


def _too_deep() -> RerankError:
    return invalid_argument(f"body: nested deeper than {MAX_DEPTH} levels")


def field_error(where: str, problem: str) -> RerankError:
    return invalid_argument(f"{where}: {problem}")


def required(value: Json, name: str, where: str = "") -> Any:
    if name not in value:
        raise field_error(where + name, "Field required")
    return value[name]


def string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise field_error(where, "Input should be a valid string")
    return value


def optional_string(value: object, where: str) -> str | None:
    return None if value is None else string(value, where)


def mapping(value: object, where: str) -> Json:
    if not isinstance(value, dict):
        raise field_error(where, "Input should be a valid dictionary")
    return value


def array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise field_error(where, "Input should be a valid list")
    return value


def strings(value: object, where: str) -> list[str]:
    """A list of strings; one pass in C, the first non-string named by its index."""
    items = array(value, where)
    if not all_text(items):
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise field_error(f"{where}.{index}", "Input should be a valid string")
    return items


def count(value: object, where: str) -> int | None:
    """An optional count of at least 1 (``top_n``, ``top_k``): an integer, or a float with no
    fraction."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise field_error(where, "Input should be a valid integer")
    if value < 1:
        raise field_error(where, "Input should be greater than or equal to 1")
    return value


def flag(value: object, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise field_error(where, "Input should be a valid boolean")


def choice(value: object, where: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if value not in choices:
        listed = " or ".join(repr(c) for c in choices)
        raise field_error(where, f"Input should be {listed}")
    return str(value)
