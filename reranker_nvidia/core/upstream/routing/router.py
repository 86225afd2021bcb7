"""Which endpoint a call goes to: the lowest tier with an endpoint that serves the model and
whose breaker admits a call; within the tier, the least loaded by weight, taking turns.

Within a tier, an endpoint is eligible when its outstanding calls per weight are no more than
the least loaded endpoint's would be once it took the call (``outstanding / weight <=
min((outstanding + 1) / weight)``), and eligible endpoints take turns by weight (nginx's smooth
weighted round robin). So calls that do not overlap are shared exactly by weight (a strict
"least (outstanding + 1) / weight" would send them all to the heaviest endpoint), and under
load no endpoint runs more than about one call per weight ahead of another: outstanding calls
follow the weights.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from reranker_nvidia.core.upstream.hedging import LatencyTracker
from reranker_nvidia.core.upstream.retry_budget import RatioBudget
from reranker_nvidia.core.upstream.routing.breaker import BreakerState, CircuitBreaker, Permit
from reranker_nvidia.core.upstream.routing.table import EndpointSpec

# Round-robin credits stay within a few weights of 0; this only guards against a drift that
# endless changes of the candidate set might cause.
_CREDIT_LIMIT = 1e6


class EndpointState:
    """One endpoint at run time: its spec, its breaker, its load and its counters."""

    __slots__ = (
        "breaker",
        "calls",
        "credit",
        "failures",
        "hedges",
        "hedges_won",
        "latency",
        "outstanding",
        "probe_failures",
        "ready",
        "released",
        "retries",
        "spec",
        "successes",
    )

    def __init__(
        self,
        spec: EndpointSpec,
        breaker: CircuitBreaker | None = None,
        latency: LatencyTracker | None = None,
    ) -> None:
        self.spec = spec
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.latency = latency if latency is not None else LatencyTracker()
        self.outstanding = 0  # calls in flight now
        # Counters (monotonic, for metrics): calls started (retries and hedges included), and
        # how they ended; of the calls started, how many were retries and hedges.
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self.released = 0
        self.retries = 0
        self.hedges = 0
        self.hedges_won = 0
        # The readiness poller's view (self-hosted only): None until probed; False once it
        # marked the endpoint down; consecutive failed probes.
        self.ready: bool | None = None
        self.probe_failures = 0
        self.credit = 0.0  # the router's round-robin credit

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def describe(self) -> dict[str, object]:
        """What /meta and the health route show of the endpoint (never its key)."""
        spec, breaker = self.spec, self.breaker
        return {
            "name": spec.name,
            "url": spec.url,
            "tier": spec.tier,
            "weight": spec.weight,
            "models": sorted(spec.models) if spec.models is not None else None,
            "self_hosted": spec.self_hosted,
            "state": breaker.state.value,
            "reason": breaker.last_reason,
            "held_by_readiness": breaker.held,
            "ready": self.ready,
            "outstanding": self.outstanding,
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "retries": self.retries,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
        }

    def __repr__(self) -> str:
        return f"EndpointState({self.spec.name}, {self.breaker.state.value})"


class Attempt:
    """One call on one endpoint, from the pick to its outcome. Exactly one of
    ``record_success``, ``record_failure`` or ``release`` counts (later ones are ignored), so a
    ``finally: attempt.release()`` after the outcome is safe."""

    __slots__ = ("_done", "endpoint", "permit")

    def __init__(self, endpoint: EndpointState, permit: Permit) -> None:
        self.endpoint = endpoint
        self.permit = permit
        self._done = False

    def record_success(self, latency_s: float | None = None) -> None:
        """The endpoint answered. ``latency_s``: the call's latency when it counts for the
        hedging percentile (a ranking answered; not a 4xx about the request)."""
        if self._end():
            endpoint = self.endpoint
            endpoint.successes += 1
            endpoint.breaker.record_success(self.permit)
            if latency_s is not None:
                endpoint.latency.record(latency_s)

    def record_failure(self) -> None:
        """The call failed in a way that says the endpoint is unwell (connection error,
        timeout, 5xx, 429)."""
        if self._end():
            self.endpoint.failures += 1
            self.endpoint.breaker.record_failure(self.permit)

    def release(self) -> None:
        """The call ended with nothing learnt of the endpoint (cancelled: a lost hedge, the
        caller gone)."""
        if self._end():
            self.endpoint.released += 1
            self.endpoint.breaker.release(self.permit)

    def _end(self) -> bool:
        if self._done:
            return False
        self._done = True
        self.endpoint.outstanding -= 1
        return True


class Router:
    """Picks endpoints for calls. ``pick`` is the whole of the routing decision and returns
    an ``Attempt`` already counted (outstanding, calls, the breaker's probe slot)."""

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        if not endpoints:
            raise ValueError("a router needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        tiers: dict[int, list[EndpointState]] = {}
        for endpoint in self.endpoints:
            tiers.setdefault(endpoint.spec.tier, []).append(endpoint)
        self._tiers = tuple((tier, tuple(tiers[tier])) for tier in sorted(tiers))
        self._serves_all = any(endpoint.spec.models is None for endpoint in self.endpoints)
        self._models = frozenset(
            model for endpoint in self.endpoints for model in endpoint.spec.models or ()
        )

    def serves(self, model: str) -> bool:
        """Whether any endpoint serves ``model``, up or down."""
        return self._serves_all or model in self._models

    def pick(
        self,
        model: str,
        *,
        avoid: Collection[EndpointState] = (),
        tier: int | None = None,
        retry: bool = False,
        fail_open: bool = False,
    ) -> Attempt | None:
        """An attempt on the endpoint the next call for ``model`` should go to, or None when
        every endpoint that serves it is down.

        ``avoid``: the endpoints this call already tried; one is picked again only when no
        other is up in any acceptable tier. ``tier``: only endpoints of this tier. ``retry``:
        count the call as a retry. ``fail_open``: when every endpoint is down, an attempt on
        the one that comes back soonest all the same, rather than None (its success closes
        its breaker).
        """
        chosen: EndpointState | None = None
        spare: EndpointState | None = None
        for number, members in self._tiers:
            if tier is not None and number != tier:
                continue
            chosen, skipped = _round_robin(members, model, avoid)
            if chosen is not None:
                break
            if skipped is not None:
                spare = skipped
        permit: Permit | None = None
        if chosen is None:
            chosen = spare
        if chosen is not None:
            permit = chosen.breaker.try_acquire()
        elif fail_open:
            chosen = self._least_down(model, avoid, tier)
            if chosen is not None:
                permit = chosen.breaker.bypass()
        if chosen is None or permit is None:
            return None
        return self._start(chosen, permit, retry=retry, hedge=False)

    def pick_hedge(
        self, model: str, first: EndpointState, budget: RatioBudget | None = None
    ) -> Attempt | None:
        """An attempt for a hedge of a call on ``first``: another endpoint of its tier that is
        up, or None. ``budget`` (the hedge budget) is spent only when there is one."""
        chosen, _ = _round_robin(_members(self._tiers, first.spec.tier), model, (first,))
        if chosen is None or (budget is not None and not budget.try_spend()):
            return None
        permit = chosen.breaker.try_acquire()
        if permit is None:
            return None
        return self._start(chosen, permit, retry=False, hedge=True)

    def _least_down(
        self, model: str, avoid: Collection[EndpointState], tier: int | None
    ) -> EndpointState | None:
        """The endpoint that serves ``model`` and should come back first: not the one just
        tried, not one its readiness probe holds down, the lowest tier, the soonest."""
        best: EndpointState | None = None
        best_key = (True, True, 0, 0.0)
        for number, members in self._tiers:
            if tier is not None and number != tier:
                continue
            for endpoint in members:
                if not endpoint.spec.serves(model):
                    continue
                breaker = endpoint.breaker
                key = (endpoint in avoid, breaker.held, number, breaker.open_until)
                if best is None or key < best_key:
                    best, best_key = endpoint, key
        return best

    @staticmethod
    def _start(endpoint: EndpointState, permit: Permit, *, retry: bool, hedge: bool) -> Attempt:
        endpoint.outstanding += 1
        endpoint.calls += 1
        if retry:
            endpoint.retries += 1
        if hedge:
            endpoint.hedges += 1
        return Attempt(endpoint, permit)


def _members(
    tiers: tuple[tuple[int, tuple[EndpointState, ...]], ...], tier: int
) -> tuple[EndpointState, ...]:
    for number, members in tiers:
        if number == tier:
            return members
    return ()


def _round_robin(
    members: tuple[EndpointState, ...], model: str, avoid: Collection[EndpointState]
) -> tuple[EndpointState | None, EndpointState | None]:
    """(the pick among ``members`` that serve ``model`` and are up, other than those in
    ``avoid``; one of ``avoid`` when it was up but skipped)."""
    least = math.inf  # the least (outstanding + 1) / weight: the load after taking the call
    skipped: EndpointState | None = None
    for endpoint in members:
        models = endpoint.spec.models
        if (models is not None and model not in models) or not endpoint.breaker.admits():
            continue
        if endpoint in avoid:
            skipped = endpoint
            continue
        load = (endpoint.outstanding + 1) / endpoint.spec.weight
        if load < least:
            least = load
    if least == math.inf:
        return None, skipped
    best: EndpointState | None = None
    total = 0.0
    for endpoint in members:
        weight = endpoint.spec.weight
        models = endpoint.spec.models
        if (
            endpoint.outstanding / weight > least
            or endpoint in avoid
            or (models is not None and model not in models)
            or not endpoint.breaker.admits()
        ):
            continue
        endpoint.credit += weight
        total += weight
        if best is None or endpoint.credit > best.credit:
            best = endpoint
    if best is not None:
        best.credit -= total
        if best.credit < -_CREDIT_LIMIT:
            for endpoint in members:
                endpoint.credit = 0.0
    return best, skipped
