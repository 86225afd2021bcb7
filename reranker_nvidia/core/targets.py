"""Where one request goes and with which key: precedence (request, collection, server), the
endpoint for the model, and the rule that keeps the operator's keys at home.

Every surface's options pass through ``TargetResolver.resolve``, so the checks here hold for
all of them: the model id matches the grammar, a caller-chosen base URL passes the SSRF checks,
and a key of the operator's (the server key, or an endpoint's own) is attached only to a final
URL the configuration allows (``ConfiguredBase.allows``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from reranker_nvidia.core.digests import Digests
from reranker_nvidia.core.endpoints import (
    ConfiguredBase,
    identity_text,
    is_hosted,
    resolve_endpoint,
)
from reranker_nvidia.core.keys import usable_key
from reranker_nvidia.core.model_ids import check_model_id
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


@dataclass(frozen=True, eq=False)
class Endpoint:
    """One NIM ranking endpoint for one model: the unit of trust, budgets and pauses."""

    url: str
    """The final URL a call is posted to."""
    name: str
    """What logs and metrics call it (never a credential)."""
    tag: bytes
    """A keyed digest of the URL's identity: verified keys, cached scores and NIM's pauses are
    recorded per endpoint under it."""
    key: str | None = field(repr=False)
    """The operator's key for it; a request's own key wins."""
    guarded: bool
    """Chosen by a caller and not allow-listed: its connections pass the SSRF address check."""


@dataclass(frozen=True, eq=False)
class Target:
    """Where and how one request is sent: fully resolved, nothing left to default."""

    model: str
    truncate: str | None
    route: str
    """What the endpoints are, as the cache scope and coalescing know it: the configured
    endpoints of the model, or one endpoint a caller chose."""
    endpoints: tuple[Endpoint, ...]
    request_key: str | None = field(repr=False)
    """The caller's own key, sent to whichever endpoint serves the call."""

    @property
    def guarded(self) -> bool:
        return self.endpoints[0].guarded

    def key_for(self, endpoint: Endpoint) -> str | None:
        return self.request_key if self.request_key is not None else endpoint.key


class TargetResolver:
    """Turns a request's options into a ``Target``, or refuses them.

    The server's key only ever goes to a final URL that a trusted base URL (the configured one
    or an allow-listed one) resolves to, reached by a base URL with no query, fragment or
    user-info; any other base URL must come with the request's own key and passes the SSRF
    checks.
    """

    def __init__(
        self,
        *,
        defaults: RankOptions,
        server_key: str | None,
        trusted_base_urls: Sequence[str],
        digests: Digests,
    ) -> None:
        if defaults.base_url is None or defaults.model is None:
            raise ValueError("the defaults must name a base URL and a model")
        self._defaults = defaults
        self._base_url = defaults.base_url
        self._model = defaults.model
        self._server_key = server_key
        self._trusted = tuple(ConfiguredBase(url) for url in trusted_base_urls)
        self._digests = digests
        self._endpoint = functools.lru_cache(maxsize=4096)(self._make_endpoint)

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
        model = check_model_id(chosen.model or self._model)
        endpoint = self._endpoint(base_url, model)
        if endpoint.guarded:
            check_url_text(base_url)
        if request_key is None and endpoint.key is None and is_hosted(base_url):
            raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
        if request_key is None and endpoint.guarded:
            raise RerankError(
                ErrorCode.PERMISSION_DENIED,
                f"base URL {redact_url(base_url)} is neither RERANKER_BASE_URL nor in "
                "RERANKER_ALLOWED_BASE_URLS, so the server's key is not sent there: send the "
                "request's own key (X-Nvidia-Api-Key, Authorization: Bearer, or gRPC "
                "metadata x-nvidia-api-key)",
            )
        return Target(model, truncate, identity_text(endpoint.url), (endpoint,), request_key)

    def _make_endpoint(self, base_url: str, model: str) -> Endpoint:
        url = resolve_endpoint(base_url, model)
        trusted = self._is_trusted(base_url, url)
        return Endpoint(
            url=url,
            name=redact_url(url),
            tag=self._digests.tag(identity_text(url)),
            key=self._server_key if trusted else None,
            guarded=not trusted,
        )

    def _is_trusted(self, base_url: str, url: str) -> bool:
        parts = parse_base_url(base_url)
        if parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc:
            return False
        return any(base.allows(url) for base in self._trusted)


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
