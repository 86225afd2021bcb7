"""What the sidecar says about itself (``GET /meta``, gRPC ``GetMeta``): never a key."""

from __future__ import annotations

from reranker_nvidia import __version__
from reranker_nvidia.core.endpoints import KNOWN_MODELS, resolve_endpoint
from reranker_nvidia.core.redaction import redact_url
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


def served_models(settings: Settings) -> list[str]:
    """Model ids the sidecar offers: the default first, then ``RERANKER_MODELS``, then every
    reranking model NIM is known to serve; each once."""
    ids = (settings.model, *settings.models, *KNOWN_MODELS)
    return list(dict.fromkeys(ids))
