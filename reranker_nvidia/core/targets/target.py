"""Where one request goes and with which key: precedence (request, collection, server), the
endpoints for the model, and the rule that keeps the operator's keys at home.

Every surface's options pass through ``TargetResolver.resolve``, so the checks here hold for
all of them: the model id matches the grammar, a caller-chosen base URL passes the SSRF checks,
and a key of the operator's (the server key, or an endpoint's own) is attached only to a final
URL the configuration allows (``ConfiguredBase.allows``).

A request that names no base URL goes to the configured endpoints (``RERANKER_ENDPOINTS_FILE``,
else ``RERANKER_BASE_URL`` alone), picked per call by the router; a request that names one goes
there only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from reranker_nvidia.core.targets.endpoints import (
    ConfiguredBase,
    identity_text,
    is_hosted,
    resolve_endpoint,
)
from reranker_nvidia.core.targets.model_ids import check_model_id
from reranker_nvidia.core.trust.digests import Digests
from reranker_nvidia.core.trust.keys import usable_key
from reranker_nvidia.core.trust.redaction import redact_url
from reranker_nvidia.core.trust.ssrf import check_url_text, parse_base_url
from reranker_nvidia.core.upstream.routing.router import EndpointState, Router
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
    key_id: bytes = b""
    """The digest of ``key``: who the operator's key is, for trust and budgets."""
    state: EndpointState | None = None
    """The configured endpoint's run-time state (breaker, load); None for a caller's choice."""


@dataclass(frozen=True, eq=False)
class Route:
    """The endpoints a model's calls may go to: the configured ones, picked per call by
    ``router``, or the one a caller chose (``router`` None)."""

    id: str
    """What the cache scope and coalescing call the route."""
    endpoints: tuple[Endpoint, ...]
    router: Router | None = None
    by_state: dict[EndpointState, Endpoint] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Target:
    """Where and how one request is sent: fully resolved, nothing left to default."""

    model: str
    truncate: str | None
    route: Route
    request_key: str | None = field(repr=False)
    """The caller's own key, sent to whichever endpoint serves the call."""
    request_key_id: bytes = b""
    """The digest of the caller's key (of no key when it brought none)."""

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.route.endpoints

    @property
    def guarded(self) -> bool:
        return self.route.endpoints[0].guarded

    def key_for(self, endpoint: Endpoint) -> str | None:
        return self.request_key if self.request_key is not None else endpoint.key

    def key_id_for(self, endpoint: Endpoint) -> bytes:
        """The digest of ``key_for(endpoint)``."""
        return self.request_key_id if self.request_key is not None else endpoint.key_id


class TargetResolver:
    """Turns a request's options into a ``Target``, or refuses them.

    An operator's key only ever goes where the configuration sends it: a configured endpoint
    gets the key configured for it (and only the models it serves), an allow-listed base URL
    (``RERANKER_ALLOWED_BASE_URLS``) the server's key, in both cases reached by a base URL with
    no query, fragment or user-info; any other base URL must come with the request's own key
    and passes the SSRF checks.
    """

    def __init__(
        self,
        *,
        defaults: RankOptions,
        server_key: str | None,
        router: Router,
        allowed_base_urls: Sequence[str],
        digests: Digests,
        single: bool = True,
    ) -> None:
        """``router``: the configured endpoints; ``allowed_base_urls``: where else the server's
        key may go; ``single``: the endpoints are ``RERANKER_BASE_URL`` alone (no table), so
        naming that URL is the same route as naming none."""
        if defaults.model is None:
            raise ValueError("the defaults must name a model")
        self._defaults = defaults
        self._model = defaults.model
        self._server_key = server_key
        self._router = router
        self._single = single
        self._allowed = tuple(ConfiguredBase(url) for url in allowed_base_urls)
        self._digests = digests
        self._no_key_id = digests.key(None)
        self._chosen = functools.lru_cache(maxsize=4096)(self._chosen_route)
        self._configured = functools.lru_cache(maxsize=1024)(self._configured_route)

    @property
    def router(self) -> Router:
        return self._router

    def resolve(self, options: RankOptions) -> Target:
        request_key = usable_key(options.api_key)
        if request_key is not None:
            check_key_text(request_key)
        chosen = RankOptions(options.model, options.base_url, options.truncate, request_key).over(
            self._defaults
        )
        truncate = chosen.truncate.strip().upper() if chosen.truncate else None
        if truncate is not None and truncate not in TRUNCATE_VALUES:
            raise invalid_argument(f"truncate must be NONE or END, got {chosen.truncate!r}")
        model = check_model_id(chosen.model or self._model)
        base_url = _given(options.base_url)
        if base_url is None:
            route = self._configured(model)
            if request_key is None and all(
                endpoint.key is None and is_hosted(endpoint.url) for endpoint in route.endpoints
            ):
                raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
            return Target(model, truncate, route, request_key, self._key_id(request_key))
        parse_base_url(base_url)
        route = self._chosen(base_url, model)
        endpoint = route.endpoints[0]
        if endpoint.guarded:
            check_url_text(base_url)
        if request_key is None and endpoint.key is None and is_hosted(base_url):
            raise RerankError(ErrorCode.UNAUTHENTICATED, NO_KEY_MESSAGE)
        if request_key is None and endpoint.guarded:
            raise RerankError(
                ErrorCode.PERMISSION_DENIED,
                f"base URL {redact_url(base_url)} is neither a configured endpoint nor in "
                "RERANKER_ALLOWED_BASE_URLS, so the server's key is not sent there: send the "
                "request's own key (X-Nvidia-Api-Key, Authorization: Bearer, or gRPC "
                "metadata x-nvidia-api-key)",
            )
        return Target(model, truncate, route, request_key, self._key_id(request_key))

    def _key_id(self, request_key: str | None) -> bytes:
        return self._no_key_id if request_key is None else self._digests.key(request_key)

    def _configured_route(self, model: str) -> Route:
        """The configured endpoints that serve ``model``, each with its final URL."""
        states = [state for state in self._router.endpoints if state.spec.serves(model)]
        if not states:
            raise invalid_argument(
                f"model: no endpoint in RERANKER_ENDPOINTS_FILE serves {model!r}"
            )
        endpoints = []
        for state in states:
            spec = state.spec
            url = resolve_endpoint(spec.url, model)
            if not ConfiguredBase(spec.url).allows(url):
                raise invalid_argument(f"model: {model!r} cannot be sent to {spec.name}")
            endpoints.append(
                Endpoint(
                    url=url,
                    name=spec.name,
                    tag=self._digests.tag(identity_text(url)),
                    key=spec.key(self._server_key),
                    guarded=False,
                    key_id=self._digests.key(spec.key(self._server_key)),
                    state=state,
                )
            )
        route_id = identity_text(endpoints[0].url) if self._single else "configured endpoints"
        by_state = {endpoint.state: endpoint for endpoint in endpoints if endpoint.state}
        return Route(route_id, tuple(endpoints), self._router, by_state)

    def _chosen_route(self, base_url: str, model: str) -> Route:
        """The one endpoint a caller named. A configured endpoint is used as configured: its
        own key (or none), for the models it serves only; an allow-listed one gets the
        server's key; any other none (and is guarded)."""
        url = resolve_endpoint(base_url, model)
        tag = self._digests.tag(identity_text(url))
        plain = self._is_plain(base_url)
        if plain:
            configured = [
                state
                for state in self._router.endpoints
                if ConfiguredBase(state.spec.url).allows(url)
            ]
            if configured:
                for endpoint in self._configured_endpoints(model):
                    if endpoint.tag == tag:
                        if self._single:
                            return self._configured(model)
                        return Route(identity_text(url), (endpoint,))
                names = ", ".join(state.spec.name for state in configured)
                raise invalid_argument(
                    f"model: {model!r} is not served by the configured endpoint named by the "
                    f"base URL ({names}; RERANKER_ENDPOINTS_FILE)"
                )
        trusted = plain and any(base.allows(url) for base in self._allowed)
        endpoint = Endpoint(
            url=url,
            name=redact_url(url),
            tag=tag,
            key=self._server_key if trusted else None,
            guarded=not trusted,
            key_id=self._digests.key(self._server_key if trusted else None),
        )
        return Route(identity_text(url), (endpoint,))

    def _configured_endpoints(self, model: str) -> tuple[Endpoint, ...]:
        try:
            return self._configured(model).endpoints
        except RerankError:
            return ()

    @staticmethod
    def _is_plain(base_url: str) -> bool:
        """No query, fragment or user-info: the only base URLs a key may be sent through."""
        parts = parse_base_url(base_url)
        return not (
            parts.query or parts.fragment or parts.username is not None or "@" in parts.netloc
        )


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
