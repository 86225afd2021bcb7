"""The composition root: every part of the core, built once from the settings, each handed
only what it uses."""

from __future__ import annotations

from dataclasses import dataclass

from reranker_nvidia.core.admission import Admission
from reranker_nvidia.core.coalescer import Coalescer
from reranker_nvidia.core.digests import Digests, derive_secret
from reranker_nvidia.core.metrics import Metrics
from reranker_nvidia.core.ranker import Ranker, RequestLimits
from reranker_nvidia.core.score_cache import ScoreCache
from reranker_nvidia.core.shared_cache import SharedScores
from reranker_nvidia.core.ssrf import Resolver, system_resolver
from reranker_nvidia.core.store import SharedStore
from reranker_nvidia.core.targets import RankOptions, TargetResolver
from reranker_nvidia.core.upstream.budget import NimBudget
from reranker_nvidia.core.upstream.caller import UpstreamCaller
from reranker_nvidia.core.upstream.nim_client import NimClient
from reranker_nvidia.core.upstream.retry import RetryPolicy
from reranker_nvidia.core.verified_keys import VerifiedKeys
from reranker_nvidia.settings import Settings


@dataclass(frozen=True)
class Core:
    """The parts the surfaces and the server work with."""

    ranker: Ranker
    admission: Admission
    coalescer: Coalescer
    caller: UpstreamCaller
    cache: ScoreCache
    metrics: Metrics
    store: SharedStore | None = None
    shared: SharedScores | None = None

    async def aclose(self) -> None:
        await self.caller.aclose()
        if self.shared is not None:
            await self.shared.flush()
        if self.store is not None:
            await self.store.aclose()


def build_core(settings: Settings, *, resolver: Resolver = system_resolver) -> Core:
    secrets = settings.secret_values()
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
    caller = UpstreamCaller(
        NimClient(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_concurrency,
            max_answer_bytes=settings.max_upstream_bytes,
            resolver=resolver,
            secrets=secrets,
        ),
        retry=RetryPolicy(
            settings.max_retries, settings.retry_base_delay_s, settings.retry_max_delay_s
        ),
        concurrency=settings.upstream_concurrency,
        attempt_timeout_s=settings.upstream_timeout_s,
        max_retry_after_s=settings.max_retry_after_s,
        metrics=metrics,
        digests=digests,
        verified_keys=verified_keys,
        budget=NimBudget(
            settings.upstream_rpm, settings.upstream_tpm, metrics=metrics, store=store
        ),
    )
    coalescer = Coalescer(
        caller.call,
        max_passages=settings.max_passages_per_call,
        window_s=settings.coalesce_window_ms / 1000,
    )
    cache = ScoreCache(
        max_entries=settings.cache_size,
        max_bytes=settings.cache_max_bytes,
        ttl_s=settings.cache_ttl_s,
    )
    admission = Admission(settings.max_in_flight)
    ranker = Ranker(
        targets=TargetResolver(
            defaults=RankOptions(
                model=settings.model, base_url=settings.base_url, truncate=settings.truncate
            ),
            server_key=settings.server_key(),
            trusted_base_urls=(settings.base_url, *settings.allowed_base_urls),
            digests=digests,
        ),
        limits=RequestLimits(
            max_documents=settings.max_documents,
            max_properties=settings.max_properties,
            max_text_bytes=settings.max_text_bytes,
            request_timeout_s=settings.request_timeout_s,
        ),
        cache=cache,
        cache_scope=settings.cache_scope,
        verified_keys=verified_keys,
        coalescer=coalescer,
        admission=admission,
        digests=digests,
        shared=shared,
        secrets=tuple(secrets),
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
    return Core(ranker, admission, coalescer, caller, cache, metrics, store, shared)
