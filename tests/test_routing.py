"""The router: tiers and fall-through, shares by weight and load, never the same endpoint twice
in a row when another is up, models, breakers and their probe slots, hedges, fail-open, and
the bookkeeping of an attempt."""

from __future__ import annotations

import collections

import pytest

from reranker_nvidia.core.upstream.hedging import HedgeBudget
from reranker_nvidia.core.upstream.routing.breaker import BreakerState, CircuitBreaker
from reranker_nvidia.core.upstream.routing.router import Attempt, EndpointState, Router
from reranker_nvidia.core.upstream.routing.table import EndpointSpec

M1 = "nvidia/llama-nemotron-rerank-1b-v2"
M2 = "nvidia/rerank-qa-mistral-4b"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


def _endpoint(
    name: str, tier: int = 1, weight: float = 1.0, models: frozenset[str] | None = None
) -> EndpointState:
    spec = EndpointSpec(
        index=0, url=f"http://{name}:8000", name=name, tier=tier, weight=weight, models=models
    )
    return EndpointState(spec, CircuitBreaker(failure_threshold=1, clock=CLOCK))


def _names(router: Router, picks: int, model: str = M1, **options: object) -> list[str]:
    """The endpoints of ``picks`` calls in a row, each answered before the next."""
    chosen = []
    for _ in range(picks):
        attempt = router.pick(model, **options)  # type: ignore[arg-type]
        assert attempt is not None
        chosen.append(attempt.endpoint.name)
        attempt.record_success()
    return chosen


def _pick(router: Router, model: str = M1, **options: object) -> Attempt:
    attempt = router.pick(model, **options)  # type: ignore[arg-type]
    assert attempt is not None
    return attempt


def test_the_lowest_tier_that_is_up_serves_and_a_tier_that_is_down_falls_through() -> None:
    a, b, hosted = _endpoint("a"), _endpoint("b"), _endpoint("hosted", tier=2)
    router = Router([hosted, a, b])
    assert set(_names(router, 10)) == {"a", "b"}
    a.breaker.force_open()
    assert set(_names(router, 10)) == {"b"}
    b.breaker.force_open()
    assert set(_names(router, 10)) == {"hosted"}
    a.breaker.mark_ready()  # half-open: one probe call, then the next tier again
    probe = _pick(router)
    assert probe.endpoint is a and probe.permit.probe
    assert _names(router, 3) == ["hosted"] * 3
    probe.record_success()
    assert a.state is BreakerState.CLOSED
    assert set(_names(router, 4)) == {"a"}


def test_equal_endpoints_take_turns() -> None:
    router = Router([_endpoint("a"), _endpoint("b"), _endpoint("c")])
    assert _names(router, 9) == ["a", "b", "c"] * 3


def test_with_equal_load_the_shares_follow_the_weights() -> None:
    router = Router([_endpoint("a", weight=1), _endpoint("b", weight=2), _endpoint("c", weight=1)])
    assert collections.Counter(_names(router, 400)) == {"a": 100, "b": 200, "c": 100}
    # Calls that overlap: the shares of the calls in flight follow the weights too.
    held = [_pick(router) for _ in range(40)]
    assert [endpoint.outstanding for endpoint in router.endpoints] == [10, 20, 10]
    for attempt in held:
        attempt.release()


def test_a_busy_endpoint_gets_fewer_calls() -> None:
    a, b = _endpoint("a"), _endpoint("b")
    router = Router([a, b])
    a.outstanding = 3  # three slow calls in flight on a
    assert set(_names(router, 20)) == {"b"}
    a.outstanding = 1  # one call apart: both take turns
    assert set(_names(router, 2)) == {"a", "b"}
    # Calls that overlap go to the least loaded endpoint.
    a.outstanding = 0
    held = [_pick(router) for _ in range(3)]
    a.outstanding += 3
    held += [_pick(router) for _ in range(5)]  # b's to catch up, then turns
    assert (a.outstanding, b.outstanding) == (6, 5)
    a.outstanding -= 3
    for attempt in held:
        attempt.release()
    assert (a.outstanding, b.outstanding) == (0, 0)


def test_a_retry_never_goes_to_the_endpoint_just_tried_while_another_is_up() -> None:
    a, b, hosted = _endpoint("a"), _endpoint("b"), _endpoint("hosted", tier=2)
    router = Router([a, b, hosted])
    assert set(_names(router, 10, avoid=(a,), retry=True)) == {"b"}
    assert b.retries == 10 and a.retries == 0
    b.breaker.force_open()
    assert _names(router, 3, avoid=(a,)) == ["hosted"] * 3  # another tier rather than a again
    assert _names(router, 3, avoid=(hosted,)) == ["a"] * 3
    hosted.breaker.force_open()
    assert _names(router, 2, avoid=(a,)) == ["a", "a"]  # the only one up
    assert _names(router, 2, avoid=(a,), tier=1) == ["a", "a"]


def test_a_tier_can_be_asked_for_alone() -> None:
    a, hosted = _endpoint("a"), _endpoint("hosted", tier=2)
    router = Router([a, hosted])
    assert _names(router, 2, tier=2) == ["hosted"] * 2
    a.breaker.force_open()
    assert router.pick(M1, tier=1) is None
    assert router.pick(M1, tier=3) is None


def test_only_endpoints_that_serve_the_model() -> None:
    a = _endpoint("a", models=frozenset({M1}))
    b = _endpoint("b", models=frozenset({M2}))
    everything = _endpoint("everything", tier=2)
    router = Router([a, b, everything])
    assert set(_names(router, 5, M1)) == {"a"}
    assert set(_names(router, 5, M2)) == {"b"}
    assert set(_names(router, 5, "nvidia/other")) == {"everything"}
    assert router.serves("nvidia/other")

    limited = Router([_endpoint("a", models=frozenset({M1}))])
    assert limited.serves(M1) and not limited.serves(M2)
    assert limited.pick(M2) is None


def test_an_endpoint_that_is_down_is_skipped_and_none_when_all_are() -> None:
    a, b = _endpoint("a"), _endpoint("b")
    router = Router([a, b])
    _pick(router).record_failure()  # threshold 1: a opens
    assert a.state is BreakerState.OPEN and a.failures == 1
    assert set(_names(router, 5)) == {"b"}
    b.breaker.force_open()
    assert router.pick(M1) is None
    assert router.serves(M1)  # down is not the same as not served


def test_a_half_open_probe_slot_is_taken_only_by_the_pick_that_uses_it() -> None:
    a, b = _endpoint("a"), _endpoint("b")
    router = Router([a, b])
    a.breaker.force_open()
    a.breaker.mark_ready()
    picks = [_pick(router) for _ in range(4)]  # held: a's turn comes, once
    on_a = [attempt for attempt in picks if attempt.endpoint is a]
    assert len(on_a) == 1 and on_a[0].permit.probe
    assert not a.breaker.admits()  # its one probe slot is in use
    assert a.breaker.state is BreakerState.HALF_OPEN
    assert all(_pick(router).endpoint is b for _ in range(3))
    on_a[0].release()  # cancelled: the slot is free again, the breaker still half-open
    assert a.breaker.admits() and a.state is BreakerState.HALF_OPEN


def test_a_hedge_goes_to_another_endpoint_of_the_same_tier_or_nowhere() -> None:
    a, b, hosted = _endpoint("a"), _endpoint("b"), _endpoint("hosted", tier=2)
    router = Router([a, b, hosted])
    for _ in range(5):
        hedge = router.pick_hedge(M1, a)
        assert hedge is not None and hedge.endpoint is b
        hedge.release()
    assert b.hedges == 5 and b.calls == 5 and b.released == 5
    budget = HedgeBudget(ratio=0.5, clock=CLOCK)
    budget.record_first_call()
    budget.record_first_call()
    assert router.pick_hedge(M1, a, budget) is not None
    assert router.pick_hedge(M1, a, budget) is None  # the budget is spent
    assert (b.hedges, budget.allowed, budget.refused) == (6, 1, 1)
    b.breaker.force_open()
    budget.record_first_call()
    budget.record_first_call()
    assert router.pick_hedge(M1, a, budget) is None  # never a itself, never another tier
    assert router.pick_hedge(M1, hosted, budget) is None
    assert (budget.allowed, budget.refused) == (1, 1)  # no endpoint: the budget is not asked


def test_fail_open_sends_to_the_endpoint_that_comes_back_first() -> None:
    a, b, hosted = _endpoint("a"), _endpoint("b"), _endpoint("hosted", tier=2)
    router = Router([a, b, hosted])
    for endpoint in (a, b, hosted):
        _pick(router, tier=endpoint.spec.tier, avoid=(None,)).record_failure()
    assert {endpoint.state for endpoint in (a, b, hosted)} == {BreakerState.OPEN}
    assert router.pick(M1) is None
    b.breaker.force_open()  # held down by its readiness probe: the last choice
    attempt = _pick(router, fail_open=True)
    assert attempt.endpoint is a and not attempt.permit.probe
    attempt.release()
    assert _pick(router, fail_open=True, avoid=(a,)).endpoint is hosted
    last = _pick(router, fail_open=True, avoid=(a,), tier=1)
    assert last.endpoint is b
    last.record_success()  # it answered after all: back up
    assert b.state is BreakerState.CLOSED


def test_an_attempt_counts_once_whatever_is_reported() -> None:
    a = _endpoint("a")
    router = Router([a])
    attempt = _pick(router)
    assert (a.outstanding, a.calls) == (1, 1)
    attempt.record_success(0.25)
    attempt.record_failure()
    attempt.release()
    assert (a.outstanding, a.successes, a.failures, a.released) == (0, 1, 0, 0)
    assert a.latency.count == 1
    _pick(router).record_success()  # no latency: a 4xx about the request, say
    assert a.latency.count == 1 and a.successes == 2
    assert repr(a) == "EndpointState(a, closed)"
    described = a.describe()
    assert (described["name"], described["state"], described["calls"]) == ("a", "closed", 2)
    assert described["models"] is None and described["ready"] is None


def test_a_router_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        Router([])
