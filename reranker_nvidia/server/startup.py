"""What the sidecar says when it starts, and how it fails to: one block that tells a newcomer
what it will do, and one line (exit 2) for whatever stops it from starting."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence

from reranker_nvidia import __version__
from reranker_nvidia.core.targets.endpoints import is_hosted, resolve_endpoint
from reranker_nvidia.core.trust.redaction import redact_url
from reranker_nvidia.core.upstream.routing.table import EndpointSpec
from reranker_nvidia.settings import KEY_VARIABLES, Settings

OFFLINE_HINT = (
    "to try it with no key and no network: `make emulate` in one terminal, then "
    "`RERANKER_BASE_URL=http://127.0.0.1:8000 make run` in another"
)


class StartupError(Exception):
    """The sidecar cannot start; the message says why and which setting to change."""


def stop_signal() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT to the running loop's process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def key_source(settings: Settings) -> str | None:
    """The environment variable the server's key came from, or None without a key."""
    if settings.api_key is None:
        return None
    key = settings.api_key.get_secret_value()
    for name in KEY_VARIABLES:
        if os.environ.get(name, "").strip() == key:
            return name
    return "settings"


def summary(
    settings: Settings, http_port: int, grpc_port: int, endpoints: Sequence[EndpointSpec]
) -> str:
    """The start-up block: where it listens and what it will do, never a key."""
    model = settings.model
    source = key_source(settings)
    if settings.truncate is None:
        truncation = (
            "END on the Weaviate and Cohere routes; the request's, else NIM's default (NONE), "
            "on the NIM routes and gRPC"
        )
    else:
        truncation = f"{settings.truncate} everywhere (RERANKER_TRUNCATE)"
    if settings.cache_size and settings.cache_max_bytes:
        cache = (
            f"up to {settings.cache_size} scores / {settings.cache_max_bytes // 2**20} MiB "
            f"for {settings.cache_ttl_s:g} s, scope {settings.cache_scope}"
        )
    else:
        cache = "off"
    window = settings.coalesce_window_ms
    if settings.cache_url is not None:
        shared = f"Redis/Valkey at {redact_url(settings.cache_url.get_secret_value())}"
    else:
        shared = "off: this replica's cache and budget are its own (RERANKER_CACHE_URL)"
    limits = [
        f"{value} {unit} a minute"
        for value, unit in ((settings.upstream_rpm, "calls"), (settings.upstream_tpm, "passages"))
        if value is not None
    ]
    if settings.endpoints_file is None:
        where = [f"  NIM endpoint  {redact_url(resolve_endpoint(settings.base_url, model))}"]
    else:
        where = [
            f"  NIM endpoints {len(endpoints)} from {settings.endpoints_file} "
            "(RERANKER_BASE_URL is not used)",
            *(f"                {_endpoint_line(spec)}" for spec in endpoints),
        ]
    hedging = (
        f"after p{settings.hedge_percentile:g} of an endpoint's latency, at most "
        f"{settings.hedge_budget:.0%} more calls"
        if settings.hedge_percentile is not None
        else "off"
    )
    lines = [
        f"reranker-nvidia {__version__} serving HTTP on {settings.host}:{http_port} "
        f"and gRPC on {settings.host}:{grpc_port}",
        *where,
        f"  model         {model}",
        f"  truncation    {truncation}",
        f"  key           {f'from {source}' if source else 'none: requests must bring their own'}",
        f"  cache         {cache}",
        f"  shared store  {shared}",
        f"  NIM budget    {', '.join(limits) + ' per key' if limits else 'none'}",
        f"  coalescing    {f'window {window:g} ms' if window else 'off'}",
        f"  retries       up to {settings.max_retries} a call, within "
        f"{settings.retry_budget:.0%} of first calls (+{settings.retry_budget_min_per_s:g}/s)",
        f"  hedging       {hedging}",
        f"  fail-open     {'on: input order when NIM fails' if settings.fail_open else 'off'}",
        f"  score scale   {settings.score_scale.describe()}",
        f"  caller token  {'on (X-Reranker-Token)' if settings.auth_token else 'off'}",
        f"  TLS           {'on' if settings.tls_cert else 'off'}",
    ]
    return "\n".join(lines)


def _endpoint_line(spec: EndpointSpec) -> str:
    models = ", ".join(sorted(spec.models)) if spec.models is not None else "every model"
    key = (
        "server key"
        if spec.uses_server_key
        else f"key from {spec.api_key_env}"
        if spec.api_key_env
        else "no key"
    )
    return (
        f"tier {spec.tier} {spec.name}: {redact_url(spec.url)}, weight {spec.weight:g}, "
        f"{models}, {key}{', polled' if spec.self_hosted and spec.health_path else ''}"
    )


def missing_key_warning(settings: Settings, endpoints: Sequence[EndpointSpec]) -> str | None:
    """What to say when requests to hosted NIM cannot succeed without a key of their own: a
    hosted endpoint would be sent the server key, and there is none."""
    keyless = [
        spec.name
        for spec in endpoints
        if is_hosted(spec.url) and spec.uses_server_key and settings.api_key is None
    ]
    if not keyless:
        return None
    if settings.endpoints_file is None:
        return (
            "no NIM key: NVIDIA_APIKEY is not set, so every request to hosted NIM must bring "
            "its own (X-Nvidia-Api-Key or Authorization: Bearer; gRPC metadata "
            "x-nvidia-api-key); " + OFFLINE_HINT
        )
    return (
        f"no NIM key: NVIDIA_APIKEY is not set, so calls to {', '.join(keyless)} (hosted NIM) "
        "carry only a key the request brings (X-Nvidia-Api-Key or Authorization: Bearer; "
        "gRPC metadata x-nvidia-api-key)"
    )
