"""Where one request goes and with which key: precedence (request, collection, server), the
endpoint for the model, and the rule that keeps the server's key at home."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from reranker_nvidia.core.endpoints import (
    endpoint_identity,
    is_hosted,
    resolve_endpoint,
)
from reranker_nvidia.core.keys import usable_key
from reranker_nvidia.core.model_ids import normalise_model
from reranker_nvidia.core.redaction import redact_url
from reranker_nvidia.core.ssrf import check_url_text, parse_base_url
from reranker_nvidia.errors import ErrorCode, RerankError, invalid_argument
from reranker_nvidia.types import TRUNCATE_VALUES

NO_KEY_MESSAGE = (
    "no api key found neither in request header: X-Nvidia-Api-Key "
    "(gRPC metadata: x-nvidia-api-key) nor in environment variable under NVIDIA_APIKEY"
)


@dataclass(frozen=True)
class RankOptions:
    """Per-request choices; ``None`` means "use the next layer down" (collection, then server)."""

    model: str | None = None
    base_url: str | None = None
    truncate: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def over(self, fallback: RankOptions) -> RankOptions:
        """These options, with any unset or blank field taken from ``fallback``."""
        return RankOptions(
            model=_given(self.model) or fallback.model,
            base_url=_given(self.base_url) or fallback.base_url,
            truncate=_given(self.truncate) or fallback.truncate,
            api_key=_given(self.api_key) or fallback.api_key,
        )


@dataclass(frozen=True)
class Target:
    """Where and how one request is sent: fully resolved, nothing left to default."""

    endpoint: str
    model: str
    truncate: str | None
    api_key: str | None = field(repr=False)
    guarded: bool = False
    """A base URL the caller chose: its connections pass the SSRF address check."""


class TargetResolver:
    """Turns a request's options into a ``Target``, or refuses them.

    The server's key only ever goes to the endpoint a trusted base URL (the configured one or
    an allow-listed one) resolves to for the request's model, reached by a URL with no query,
    fragment or user-info; any other base URL must come with the request's own key and passes
    the SSRF checks.
    """

    def __init__(
        self,
        *,
        defaults: RankOptions,
        server_key: str | None,
        trusted_base_urls: Sequence[str],
    ) -> None:
        if defaults.base_url is None or defaults.model is None:
            raise ValueError("the defaults must name a base URL and a model")
        self._defaults = defaults
        self._base_url = defaults.base_url
        self._model = defaults.model
        self._server_key = server_key
        self._trusted_base_urls = tuple(trusted_base_urls)

    def resolve(self, options: RankOptions) -> Target:
        request_key = usable_key(options.api_key)
        if request_key is not None:
            check_key_text(request_key)
        chosen = RankOptions(options.model, options.base_url, options.truncate, request_key).over(
            self._defaults
        )
        base_url = (chosen.base_url or self._base_url).strip()
        parse_base_url(base_url)
        truncate = chosen.truncate.strip().upper() if chosen.truncate else None
        if truncate is not None and truncate not in TRUNCATE_VALUES:
            raise invalid_argument(f"truncate must be NONE or END, got {chosen.truncate!r}")
        model = normalise_model(chosen.model or self._model)
        endpoint = resolve_endpoint(base_url, model)
        trusted = self._is_trusted(base_url, endpoint, model)
        if not trusted:
            check_url_text(base_url)
        if request_key is None and self._server_key is None and is_hosted(base_url):
            raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
        if request_key is None and not trusted:
            raise RerankError(
                ErrorCode.PERMISSION_DENIED,
                f"base URL {redact_url(base_url)} is neither RERANKER_BASE_URL nor in "
                "RERANKER_ALLOWED_BASE_URLS, so the server's key is not sent there: send the "
                "request's own key (X-Nvidia-Api-Key, Authorization: Bearer, or gRPC "
                "metadata x-nvidia-api-key)",
            )
        api_key = request_key if request_key is not None else self._server_key
        return Target(endpoint, model, truncate, api_key, guarded=not trusted)

    def _is_trusted(self, base_url: str, endpoint: str, model: str) -> bool:
        parts = parse_base_url(base_url)
        if parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc:
            return False
        identity = endpoint_identity(endpoint)
        return any(_endpoint_of(trusted, model) == identity for trusted in self._trusted_base_urls)


@functools.lru_cache(maxsize=1024)
def _endpoint_of(base_url: str, model: str) -> tuple[str, str, int, str]:
    """Where a configured base URL sends ``model``: the same for every request, so kept."""
    return endpoint_identity(resolve_endpoint(base_url, model))


def check_key_text(key: str) -> None:
    """A key goes into an HTTP header: printable ASCII with no spaces, or it is no key."""
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise invalid_argument(
            "api key: must be printable ASCII without spaces (X-Nvidia-Api-Key, "
            "Authorization: Bearer, or gRPC metadata x-nvidia-api-key)"
        )


def _given(value: str | None) -> str | None:
    """Blank means "not given": a header sent empty must not override the next layer."""
    return value.strip() if value is not None and value.strip() else None
