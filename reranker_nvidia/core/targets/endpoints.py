"""Where a ranking request goes: base URL + model -> the NIM endpoint URL, and which final
URLs a configured base URL may resolve to.

Hosted NIM (``ai.api.nvidia.com``) serves each reranking model on its own path; a
self-hosted NIM serves whatever it runs on ``/v1/ranking``. Users write the base URL bare,
with ``/v1``, or as the full endpoint, and every form resolves to the same URL. The only part
of a URL a request's content ever reaches is the hosted path's model segments, and those are
built from a model id that matched the grammar (``model_ids.py``), each segment encoded.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, urlsplit

from reranker_nvidia.core.targets.model_ids import check_model_id
from reranker_nvidia.errors import invalid_argument

HOSTED_HOSTS = frozenset({"ai.api.nvidia.com"})
# Hosted NIM serves this model (under either id) on the path without a model segment.
LEGACY_HOSTED_MODELS = frozenset({"nvidia/rerank-qa-mistral-4b", "nv-rerank-qa-mistral-4b:1"})

_ENDPOINT_SUFFIXES = ("/ranking", "/reranking")
# What a hosted path's model part may be once built: one or two segments of these characters
# (periods became underscores; nothing else of a model id reaches a path).
_HOSTED_MODEL_PATH = re.compile(
    r"/v1/retrieval/[A-Za-z0-9_-]{1,64}(?:/[A-Za-z0-9_-]{1,128})?/reranking"
)


def is_hosted(base_url: str) -> bool:
    return (urlsplit(base_url.strip()).hostname or "").lower() in HOSTED_HOSTS


def endpoint_identity(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path): two URLs with the same identity reach the same endpoint."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower().rstrip("."), port, parts.path.rstrip("/")


def identity_text(url: str) -> str:
    """``endpoint_identity`` as one string: what an endpoint's trust tag is a digest of."""
    return "|".join(map(str, endpoint_identity(url)))


def resolve_endpoint(base_url: str, model: str) -> str:
    """The URL to POST a ranking request for ``model`` to, given a user-written base URL.
    ``model`` must match the model-id grammar (400 naming ``model`` otherwise)."""
    # A fragment never reaches a server; a query stays at the end of the URL.
    base, _, query = base_url.strip().split("#", 1)[0].partition("?")
    base = base.rstrip("/")
    query = f"?{query}" if query else ""
    if base.endswith(_ENDPOINT_SUFFIXES):
        return base + query
    if is_hosted(base):
        root = _strip_suffix(_strip_suffix(base, "/retrieval"), "/v1")
        return f"{root}/v1/retrieval/{hosted_model_path(model)}/reranking{query}"
    if base.endswith("/v1"):
        return f"{base}/ranking{query}"
    return f"{base}/v1/ranking{query}"


@functools.lru_cache(maxsize=1024)
def hosted_model_path(model: str) -> str:
    """The model's segments in a hosted NIM path: ``nvidia`` for the first reranking model,
    else ``org/name`` with periods as underscores, each segment percent-encoded."""
    model = check_model_id(model)
    if model in LEGACY_HOSTED_MODELS:
        return "nvidia"
    if ":" in model:
        raise invalid_argument(
            f"model: {model!r} has a tag, and hosted NIM serves no tagged model ids"
        )
    return "/".join(quote(part.replace(".", "_"), safe="") for part in model.split("/"))


class ConfiguredBase:
    """A base URL the operator configured (or allow-listed), and the final URLs it may
    resolve to: the one endpoint of a self-hosted NIM or of a full endpoint URL, or, on hosted
    NIM, a per-model path of the grammar's characters under the same root."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.strip()
        base = self.base_url.split("#", 1)[0].split("?", 1)[0].rstrip("/")
        self._per_model = is_hosted(base) and not base.endswith(_ENDPOINT_SUFFIXES)
        if self._per_model:
            root = _strip_suffix(_strip_suffix(base, "/retrieval"), "/v1")
            self._identity = endpoint_identity(root)
        else:
            self._identity = endpoint_identity(resolve_endpoint(base, LEGACY_MODEL))

    def allows(self, endpoint: str) -> bool:
        """Whether ``endpoint`` (a final URL) is one this base URL resolves to for some model."""
        if "?" in endpoint or "#" in endpoint or "@" in endpoint or "%" in endpoint:
            return False
        scheme, host, port, path = endpoint_identity(endpoint)
        if not self._per_model:
            return (scheme, host, port, path) == self._identity
        root_scheme, root_host, root_port, root_path = self._identity
        return (
            (scheme, host, port) == (root_scheme, root_host, root_port)
            and path.startswith(root_path)
            and _HOSTED_MODEL_PATH.fullmatch(path, len(root_path)) is not None
        )


LEGACY_MODEL = "nvidia/rerank-qa-mistral-4b"


def _strip_suffix(value: str, suffix: str) -> str:
    return value[: -len(suffix)] if value.endswith(suffix) else value
