"""The composition root: every part of the core, built once from the settings, each handed
only what it uses."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from reranker_nvidia.core.admission import Admission
from reranker_nvidia.core.cache.score_cache import ScoreCache
from reranker_nvidia.core.cache.shared_cache import SharedScores
from reranker_nvidia.core.cache.store import SharedStore
from reranker_nvidia.core.coalescer import Coalescer
from reranker_nvidia.core.documents.images import ImageLimits
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.ranker import Ranker, RequestLimits
from reranker_nvidia.core.targets.catalog import Catalog
from reranker_nvidia.core.targets.endpoints import is_hosted
from reranker_nvidia.core.targets.target import RankOptions, TargetResolver
from reranker_nvidia.core.trust.digests import Digests, derive_secret
from reranker_nvidia.core.trust.ssrf import Resolver, system_resolver
from reranker_nvidia.core.trust.verified_keys import VerifiedKeys
from reranker_nvidia.core.upstream.budget import NimBudget
from reranker_nvidia.core.upstream.caller import Hedging, UpstreamCaller
from reranker_nvidia.core.upstream.hedging import HedgeBudget
from reranker_nvidia.core.upstream.nim_client import NimClient, shared_ssl_context
from reranker_nvidia.core.upstream.retry import RetryPolicy
from reranker_nvidia.core.upstream.retry_budget import RatioBudget, RetryBudget
from reranker_nvidia.core.upstream.routing.breaker import BreakerState, CircuitBreaker
from reranker_nvidia.core.upstream.routing.health import HealthPoller, health_url
from reranker_nvidia.core.upstream.routing.router import EndpointState, Router
from reranker_nvidia.core.upstream.routing.table import EndpointSpec, load_endpoint_table
from reranker_nvidia.settings import Settings
from reranker_nvidia.wire import HttpClient

log = logging.getLogger("reranker_nvidia.upstream")


@dataclass(frozen=True)
class Core:
    """The parts the surfaces and the server work with."""

    ranker: Ranker
    admission: Admission
    coalescer: Coalescer
    caller: UpstreamCaller
    cache: ScoreCache
    metrics: Metrics
    router: Router
    health: HealthPoller
    configured_from_file: bool
    secrets: tuple[str, ...]
    """Every secret the process holds (the settings' and the endpoint table's keys): masked
    in every log line."""
    store: SharedStore | None = None
    shared: SharedScores | None = None

    def start(self) -> None:
        """What runs in the background while serving: readiness polling."""
        self.health.start()

    async def aclose(self) -> None:
        await self.health.aclose()
        await self.caller.aclose()
        if self.shared is not None:
            await self.shared.flush()
        if self.store is not None:
            await self.store.aclose()


def endpoint_specs(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[EndpointSpec, ...]:
    """The configured endpoints: the table in ``RERANKER_ENDPOINTS_FILE``, or
    ``RERANKER_BASE_URL`` alone (``EndpointTableError`` for a table that cannot be used)."""
    if settings.endpoints_file is not None:
        return load_endpoint_table(
            settings.endpoints_file, os.environ if environ is None else environ
        )
    parts = urlsplit(settings.base_url)
    port = f":{parts.port}" if parts.port else ""
    return (
        EndpointSpec(
            index=0,
            url=settings.base_url,
            name=f"{parts.hostname}{port}",
            self_hosted=not is_hosted(settings.base_url),
            # One endpoint is called whatever its state; nothing to poll it for.
            health_path=None,
        ),
    )


def build_core(settings: Settings, *, resolver: Resolver = system_resolver) -> Core:
    specs = endpoint_specs(settings)
    secrets = settings.secret_values() + [spec.api_key for spec in specs if spec.api_key]
    metrics = Metrics()
    # Random per process unless replicas share a store (then the settings require it).
    digests = Digests(
        derive_secret(settings.cache_secret.get_secret_value() if settings.cache_secret else None)
    )
    store = shared = None
    if settings.cache_url is not None:
        store = SharedStore(
            settings.cache_url.get_secret_value(),
            password=(
                settings.cache_password.get_secret_value() if settings.cache_password else None
            ),
            timeout_s=settings.cache_timeout_ms / 1000,
            metrics=metrics,
        )
        shared = SharedScores(store, ttl_s=settings.cache_ttl_s, metrics=metrics, digests=digests)
    verified_keys = VerifiedKeys(ttl_s=settings.cache_ttl_s, shared=shared)
    router = Router([_endpoint_state(spec, settings) for spec in specs])
    client = NimClient(
        http=HttpClient(
            max_connections=settings.upstream_concurrency,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            ssl_context=shared_ssl_context(),
        ),
        max_answer_bytes=settings.max_upstream_bytes,
        resolver=resolver,
        secrets=secrets,
    )
    retry_budget = RetryBudget(settings.retry_budget, settings.retry_budget_min_per_s)
    hedging = None
    if settings.hedge_percentile is not None:
        hedging = Hedging(settings.hedge_percentile, HedgeBudget(settings.hedge_budget))
    caller = UpstreamCaller(
        client,
        retry=RetryPolicy(
            settings.max_retries, settings.retry_base_delay_s, settings.retry_max_delay_s
        ),
        retry_budget=retry_budget,
        hedging=hedging,
        concurrency=settings.upstream_concurrency,
        attempt_timeout_s=settings.upstream_timeout_s,
        max_retry_after_s=settings.max_retry_after_s,
        metrics=metrics,
        verified_keys=verified_keys,
        budget=NimBudget(
            settings.upstream_rpm,
            settings.upstream_tpm,
            metrics=metrics,
            store=store,
            max_pause_s=settings.max_retry_after_s,
        ),
        digests=digests,
    )

    async def probe(endpoint: EndpointState) -> bool:
        assert endpoint.spec.health_path is not None
        return await client.ready(health_url(endpoint.spec.url, endpoint.spec.health_path), 2.0)

    health = HealthPoller(router.endpoints, probe, interval_s=settings.health_interval_s)
    coalescer = Coalescer(
        caller.call,
        max_passages=settings.max_passages_per_call,
        window_s=settings.coalesce_window_ms / 1000,
        max_image_bytes=settings.max_request_image_bytes,
    )
    cache = ScoreCache(
        max_entries=settings.cache_size,
        max_bytes=settings.cache_max_bytes,
        ttl_s=settings.cache_ttl_s,
    )
    admission = Admission(settings.max_in_flight)
    from_file = settings.endpoints_file is not None
    ranker = Ranker(
        targets=TargetResolver(
            defaults=RankOptions(model=settings.model, truncate=settings.truncate),
            server_key=settings.server_key(),
            router=router,
            allowed_base_urls=settings.allowed_base_urls,
            digests=digests,
            single=not from_file,
        ),
        limits=RequestLimits(
            max_documents=settings.max_documents,
            max_properties=settings.max_properties,
            max_text_bytes=settings.max_text_bytes,
            request_timeout_s=settings.request_timeout_s,
            images=ImageLimits(settings.max_image_bytes, settings.max_request_image_bytes),
        ),
        cache=cache,
        cache_scope=settings.cache_scope,
        verified_keys=verified_keys,
        coalescer=coalescer,
        admission=admission,
        digests=digests,
        metrics=metrics,
        shared=shared,
        secrets=tuple(secrets),
        catalog=Catalog(extra_vision_models=settings.vl_models),
        score_scales=settings.score_scale,
        detect_image_blobs=settings.detect_image_blobs,
        fail_open=settings.fail_open,
    )
    metrics.read_at_scrape(
        lambda: {
            "reranker_cache_hits": cache.hits,
            "reranker_cache_misses": cache.misses,
            "reranker_coalesced_requests": coalescer.coalesced_requests,
            "reranker_coalesced_passages": coalescer.coalesced_passages,
            "reranker_requests_in_flight": admission.in_flight,
            "reranker_cache_entries": len(cache),
            "reranker_cache_bytes": cache.size_bytes,
        }
    )
    budgets: dict[str, RatioBudget] = {"retries": retry_budget}
    if hedging is not None:
        budgets["hedges"] = hedging.budget
    metrics.watch_endpoints(router.endpoints, budgets)
    return Core(
        ranker,
        admission,
        coalescer,
        caller,
        cache,
        metrics,
        router,
        health,
        from_file,
        tuple(secrets),
        store,
        shared,
    )


def _endpoint_state(spec: EndpointSpec, settings: Settings) -> EndpointState:
    def changed(old: BreakerState, new: BreakerState, reason: str) -> None:
        log.warning(
            "endpoint %s (tier %d) is %s, was %s: %s",
            spec.name,
            spec.tier,
            new.value.replace("_", "-"),
            old.value.replace("_", "-"),
            reason,
        )

    breaker = CircuitBreaker(
        failure_threshold=settings.breaker_failures,
        open_s=settings.breaker_open_s,
        max_open_s=max(settings.breaker_open_s, 60.0),
        on_change=changed,
    )
    return EndpointState(spec, breaker)
