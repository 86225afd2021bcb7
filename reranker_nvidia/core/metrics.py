"""Prometheus metrics (``GET /metrics``): one registry per server, never a key in a label.

Counts the core keeps anyway (cache hits, coalesced requests, requests in flight) are read
at scrape time rather than counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from reranker_nvidia.core.upstream.retry_budget import RatioBudget
    from reranker_nvidia.core.upstream.routing.router import EndpointState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class _Readings(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        counters = {
            "reranker_cache_hits": "Passages whose score came from the cache.",
            "reranker_cache_misses": "Passages whose score was not in the cache.",
            "reranker_coalesced_requests": "Requests that shared an upstream call with another.",
            "reranker_coalesced_passages": "Passages answered by another request's call.",
        }
        for name, help_text in counters.items():
            yield CounterMetricFamily(name, help_text, value=values[name])
        gauges = {
            "reranker_requests_in_flight": "Requests being served now.",
            "reranker_cache_entries": "Scores held in the cache.",
            "reranker_cache_bytes": "Bytes the cache accounts for.",
        }
        for name, help_text in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=values[name])


class _EndpointReadings(Collector):
    def __init__(
        self, endpoints: Sequence[EndpointState], budgets: Mapping[str, RatioBudget]
    ) -> None:
        self._endpoints = endpoints
        self._budgets = budgets

    def collect(self) -> Iterator[Metric]:
        counters = {
            "calls": "Calls to the endpoint (retries and hedges included).",
            "failures": "Calls that counted against the endpoint (unreachable, slow, 5xx, 429, "
            "an invalid answer).",
            "retries": "Calls to the endpoint that were retries.",
            "hedges": "Calls to the endpoint that were hedges.",
            "hedges_won": "Hedges to the endpoint that answered first.",
        }
        for name, help_text in counters.items():
            family = CounterMetricFamily(
                f"reranker_endpoint_{name}", help_text, labels=["endpoint"]
            )
            for endpoint in self._endpoints:
                family.add_metric([endpoint.name], getattr(endpoint, name))
            yield family
        state = GaugeMetricFamily(
            "reranker_endpoint_state",
            "The endpoint's breaker: 0 closed (up), 1 half-open (probing), 2 open (down).",
            labels=["endpoint"],
        )
        outstanding = GaugeMetricFamily(
            "reranker_endpoint_outstanding", "Calls in flight to the endpoint.", labels=["endpoint"]
        )
        for endpoint in self._endpoints:
            state.add_metric([endpoint.name], endpoint.state.gauge)
            outstanding.add_metric([endpoint.name], endpoint.outstanding)
        yield state
        yield outstanding
        for name, budget in self._budgets.items():
            family = CounterMetricFamily(
                f"reranker_{name}",
                f"{name.capitalize()} the budget let go, or refused (RERANKER_"
                f"{name.rstrip('s').upper()}_BUDGET).",
                labels=["outcome"],
            )
            family.add_metric(["allowed"], budget.allowed)
            family.add_metric(["refused"], budget.refused)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.requests = Counter(
            "reranker_requests",
            "Requests by surface (grpc, weaviate, nim, cohere, other) and status.",
            ["surface", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "reranker_request_duration_seconds",
            "Time to answer a request, by surface.",
            ["surface"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "reranker_upstream_calls",
            "Calls to NIM by outcome: the HTTP status, or the error code without one.",
            ["status"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "reranker_upstream_duration_seconds",
            "Time of one call to NIM.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.passages_sent = Counter(
            "reranker_upstream_passages", "Passages sent to NIM.", registry=self.registry
        )
        self.tokens = Counter(
            "reranker_upstream_tokens",
            "Tokens NIM reported in usage, by kind (prompt, total).",
            ["kind"],
            registry=self.registry,
        )

        self.store_seconds = Histogram(
            "reranker_store_duration_seconds",
            "Time of one operation on the shared store, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "reranker_store_errors",
            "Shared-store operations that failed or timed out, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.store_hits = Counter(
            "reranker_store_hits",
            "Passages whose score came from the shared store.",
            registry=self.registry,
        )
        self.store_writes_dropped = Counter(
            "reranker_store_writes_dropped",
            "Writes to the shared store dropped (store down, or too many in flight).",
            registry=self.registry,
        )
        self.budget_waits = Counter(
            "reranker_budget_waits",
            "Upstream calls that waited for room in the NIM budget.",
            registry=self.registry,
        )
        self.endpoint_seconds = Histogram(
            "reranker_endpoint_duration_seconds",
            "Time of one call to NIM, by endpoint (its name in the table; caller-chosen for "
            "a base URL a request named).",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "reranker_fallbacks",
            "Requests answered in input order because NIM failed (RERANKER_FAIL_OPEN), by surface.",
            ["surface"],
            registry=self.registry,
        )
        self.budget_refusals = Counter(
            "reranker_budget_refusals",
            "Upstream calls refused: no room in the NIM budget before their deadline.",
            registry=self.registry,
        )

    def read_at_scrape(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_Readings(read))

    def watch_endpoints(
        self, endpoints: Sequence[EndpointState], budgets: Mapping[str, RatioBudget]
    ) -> None:
        """Export each configured endpoint's counters and state, and the retry and hedge
        budgets' decisions, read at scrape time."""
        self.registry.register(_EndpointReadings(endpoints, budgets))

    def observe_request(self, surface: str, status: str, seconds: float) -> None:
        # Children kept by (surface, status), both bounded sets: a label lookup per request
        # costs more than the count.
        children = self._request_children.get((surface, status))
        if children is None:
            children = self._request_children[(surface, status)] = (
                self.requests.labels(surface, status),
                self.request_seconds.labels(surface),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
