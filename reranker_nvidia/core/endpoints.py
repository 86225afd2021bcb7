"""Where a ranking request goes: base URL + model -> the NIM endpoint URL.

Hosted NIM (``ai.api.nvidia.com``) serves each reranking model on its own path; a
self-hosted NIM serves whatever it runs on ``/v1/ranking``. Users write the base URL bare,
with ``/v1``, or as the full endpoint, and every form resolves to the same URL.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from reranker_nvidia.core.model_ids import normalise_model

HOSTED_HOSTS = frozenset({"ai.api.nvidia.com"})
# Hosted NIM serves this model (under either id) on the path without a model segment.
LEGACY_HOSTED_MODELS = frozenset({"nvidia/rerank-qa-mistral-4b", "nv-rerank-qa-mistral-4b:1"})

# Reranking models hosted NIM serves (and self-hosted NIM images exist for), as their ids go
# in a request body. GET /v1/models lists them, so clients that check a model against that
# list (LlamaIndex) accept each.
KNOWN_MODELS = (
    "nvidia/rerank-qa-mistral-4b",
    "nv-rerank-qa-mistral-4b:1",
    "nvidia/nv-rerankqa-mistral-4b-v3",
    "nvidia/llama-3.2-nv-rerankqa-1b-v1",
    "nvidia/llama-3.2-nv-rerankqa-1b-v2",
    "nvidia/llama-3.2-nemoretriever-500m-rerank-v2",
    "nvidia/llama-nemotron-rerank-1b-v2",
    "nvidia/llama-nemotron-rerank-vl-1b-v2",
)

_ENDPOINT_SUFFIXES = ("/ranking", "/reranking")


def is_hosted(base_url: str) -> bool:
    return (urlsplit(base_url.strip()).hostname or "").lower() in HOSTED_HOSTS


def endpoint_identity(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path): two URLs with the same identity reach the same endpoint."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower().rstrip("."), port, parts.path.rstrip("/")


def resolve_endpoint(base_url: str, model: str) -> str:
    """The URL to POST a ranking request for ``model`` to, given a user-written base URL."""
    # A fragment never reaches a server; a query stays at the end of the URL.
    base, _, query = base_url.strip().split("#", 1)[0].partition("?")
    base = base.rstrip("/")
    query = f"?{query}" if query else ""
    if base.endswith(_ENDPOINT_SUFFIXES):
        return base + query
    if is_hosted(base):
        root = _strip_suffix(_strip_suffix(base, "/retrieval"), "/v1")
        model = normalise_model(model)
        if model in LEGACY_HOSTED_MODELS:
            return f"{root}/v1/retrieval/nvidia/reranking{query}"
        return f"{root}/v1/retrieval/{model.replace('.', '_')}/reranking{query}"
    if base.endswith("/v1"):
        return f"{base}/ranking{query}"
    return f"{base}/v1/ranking{query}"


def _strip_suffix(value: str, suffix: str) -> str:
    return value[: -len(suffix)] if value.endswith(suffix) else value
