"""What the sidecar says about itself (``GET /meta``, gRPC ``GetMeta``): never a key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reranker_nvidia import __version__
from reranker_nvidia.core.score_scale import SURFACES
from reranker_nvidia.core.targets.catalog import Catalog
from reranker_nvidia.core.targets.endpoints import resolve_endpoint
from reranker_nvidia.core.trust.redaction import redact_url
from reranker_nvidia.core.upstream.routing.router import EndpointState
from reranker_nvidia.settings import Settings
from reranker_nvidia.types import Meta

NAME = "reranker-nvidia"


def describe(settings: Settings) -> Meta:
    model = settings.model
    return Meta(
        name=NAME,
        version=__version__,
        model=model,
        base_url=redact_url(settings.base_url),
        endpoint=redact_url(resolve_endpoint(settings.base_url, model)),
        max_passages_per_call=settings.max_passages_per_call,
        max_documents=settings.max_documents,
        server_key_configured=settings.api_key is not None,
    )


def live_meta(
    meta: Meta, settings: Settings, endpoints: Sequence[EndpointState]
) -> Callable[[], dict[str, Any]]:
    """What ``GET /meta`` shows: ``meta``, the score scale of each surface, fail-open, and
    each configured endpoint as it is now (state, load, counters; never a key)."""
    fixed = {
        **meta.as_dict(),
        "score_scales": {surface: settings.score_scale.of(surface) for surface in SURFACES},
        "fail_open": settings.fail_open,
        "endpoints_file": str(settings.endpoints_file) if settings.endpoints_file else None,
    }

    def document() -> dict[str, Any]:
        return {**fixed, "endpoints": endpoint_states(endpoints)}

    return document


def endpoint_states(endpoints: Sequence[EndpointState]) -> list[dict[str, Any]]:
    """Each configured endpoint's state, for ``/meta`` and ``/health/endpoints``."""
    return [{**endpoint.describe(), "url": redact_url(endpoint.spec.url)} for endpoint in endpoints]


def served_models(settings: Settings) -> list[str]:
    """Model ids the sidecar offers: the default first, then ``RERANKER_MODELS``, then every
    reranking model the catalog knows (``RERANKER_VL_MODELS`` included); each once."""
    known = Catalog(extra_vision_models=settings.vl_models).ids
    ids = (settings.model, *settings.models, *known)
    return list(dict.fromkeys(ids))
