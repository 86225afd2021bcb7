"""What every log line of a request carries: its id, and the secrets no line may show."""

from __future__ import annotations

import contextvars
import os
import re

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The key the request being served sends upstream, so that no log line of it shows the key.
request_secrets: contextvars.ContextVar[tuple[str | None, ...]] = contextvars.ContextVar(
    "request_secrets", default=()
)

REQUEST_ID_HEADER = "X-Request-Id"
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id(given: str | None) -> str:
    """The caller's id when it is a plain token (it may be logged), else a fresh one."""
    if given is not None and _ACCEPTABLE_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as random as a UUID's 122 bits, at a third of the cost
