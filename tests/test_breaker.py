"""The circuit breaker on a clock the test moves: opening after failures in a row, the open
period and its growth, half-open probe slots, stale outcomes, and the readiness hooks."""

from __future__ import annotations

import pytest

from reranker_nvidia.core.upstream.routing.breaker import (
    REASON_FAILURES,
    REASON_NOT_READY,
    REASON_OPEN_PERIOD_OVER,
    REASON_PROBE_FAILED,
    REASON_PROBE_SUCCEEDED,
    REASON_READY,
    BreakerState,
    CircuitBreaker,
    Permit,
)

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, **options: int | float) -> tuple[CircuitBreaker, list[tuple[str, ...]]]:
    changes: list[tuple[str, ...]] = []
    breaker = CircuitBreaker(
        clock=clock,
        on_change=lambda old, new, why: changes.append((old.value, new.value, why)),
        **options,  # type: ignore[arg-type]
    )
    return breaker, changes


def _acquire(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_acquire()
    assert permit is not None
    return permit


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(_acquire(breaker))
    assert breaker.state is OPEN


def test_opens_after_the_threshold_of_failures_in_a_row() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock, failure_threshold=3)
    for _ in range(2):
        breaker.record_failure(_acquire(breaker))
    breaker.record_success(_acquire(breaker))  # a success in between: the count starts again
    for _ in range(2):
        breaker.record_failure(_acquire(breaker))
    assert breaker.state is CLOSED and breaker.consecutive_failures == 2
    breaker.record_failure(_acquire(breaker))
    assert breaker.state is OPEN
    assert changes == [("closed", "open", REASON_FAILURES)]
    assert breaker.try_acquire() is None and not breaker.admits()
    assert breaker.opened == 1 and breaker.last_reason == REASON_FAILURES


def test_the_open_period_then_one_probe_at_a_time_and_a_success_closes() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock, failure_threshold=1, open_s=5, max_open_s=60)
    _trip(breaker)
    clock.now += 4.9
    assert breaker.state is OPEN and breaker.try_acquire() is None
    clock.now += 0.1
    assert breaker.state is HALF_OPEN
    probe = _acquire(breaker)
    assert probe.probe
    assert breaker.try_acquire() is None and not breaker.admits()  # the one slot is taken
    breaker.record_success(probe)
    assert breaker.state is CLOSED and breaker.consecutive_failures == 0
    assert [change[1:] for change in changes] == [
        ("open", REASON_FAILURES),
        ("half_open", REASON_OPEN_PERIOD_OVER),
        ("closed", REASON_PROBE_SUCCEEDED),
    ]


def test_each_failed_probe_doubles_the_open_period_up_to_the_limit() -> None:
    clock = Clock()
    breaker, _ = _breaker(clock, failure_threshold=1, open_s=5, max_open_s=30)
    _trip(breaker)
    periods = []
    for _ in range(5):
        opened_at = clock.now
        while breaker.state is OPEN:
            clock.now += 0.5
        periods.append(clock.now - opened_at)
        breaker.record_failure(_acquire(breaker))
    assert periods == [5, 10, 20, 30, 30]
    assert breaker.last_reason == REASON_PROBE_FAILED
    # Closing resets the period.
    clock.now += 30
    breaker.record_success(_acquire(breaker))
    _trip(breaker)
    clock.now += 5
    assert breaker.state is HALF_OPEN


def test_half_open_admits_its_number_of_probes_and_release_gives_a_slot_back() -> None:
    clock = Clock()
    breaker, _ = _breaker(clock, failure_threshold=1, half_open_max_in_flight=2)
    _trip(breaker)
    clock.now += 5
    first, second = _acquire(breaker), _acquire(breaker)
    assert breaker.try_acquire() is None
    breaker.release(first)  # a cancelled probe: nothing learnt, its slot free
    assert breaker.state is HALF_OPEN
    third = _acquire(breaker)
    assert breaker.try_acquire() is None
    breaker.record_failure(second)
    assert breaker.state is OPEN
    breaker.record_success(third)  # a probe of the previous half-open period: ignored
    assert breaker.state is OPEN


def test_outcomes_of_calls_admitted_before_a_transition_change_nothing() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock, failure_threshold=2)
    slow = [_acquire(breaker) for _ in range(4)]
    breaker.record_failure(slow[0])
    breaker.record_failure(slow[1])
    assert breaker.state is OPEN
    breaker.record_failure(slow[2])  # in flight when it opened: does not reopen or extend
    clock.now += 5
    probe = _acquire(breaker)
    breaker.record_success(slow[3])  # a late success does not close a probing breaker
    assert breaker.state is HALF_OPEN
    breaker.record_success(probe)
    assert breaker.state is CLOSED
    breaker.release(slow[3])  # nor does a late release free anything
    assert [change[1] for change in changes] == ["open", "half_open", "closed"]


def test_force_open_holds_it_down_whatever_the_calls_until_mark_ready() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock)
    permit = _acquire(breaker)
    breaker.force_open()
    assert breaker.state is OPEN and breaker.held
    breaker.record_success(permit)  # a call that was in flight does not bring it back
    clock.now += 3600  # nor does time
    assert breaker.state is OPEN and not breaker.admits()
    breaker.force_open()  # again: no new transition
    breaker.mark_ready()
    assert breaker.state is HALF_OPEN and not breaker.held
    breaker.record_success(_acquire(breaker))
    assert breaker.state is CLOSED
    assert [change[1:] for change in changes] == [
        ("open", REASON_NOT_READY),
        ("half_open", REASON_READY),
        ("closed", REASON_PROBE_SUCCEEDED),
    ]


def test_mark_ready_turns_a_breaker_opened_by_failures_half_open_at_once() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock, failure_threshold=1, open_s=30, max_open_s=60)
    _trip(breaker)
    breaker.mark_ready()
    assert breaker.state is HALF_OPEN
    breaker.mark_ready()  # half-open or closed: nothing to do
    breaker.record_success(_acquire(breaker))
    breaker.mark_ready()
    assert breaker.state is CLOSED
    assert len(changes) == 3


def test_force_open_of_a_half_open_breaker_voids_its_probes() -> None:
    clock = Clock()
    breaker, _ = _breaker(clock, failure_threshold=1)
    _trip(breaker)
    clock.now += 5
    probe = _acquire(breaker)
    breaker.force_open()
    breaker.record_success(probe)
    assert breaker.state is OPEN and breaker.held


def test_a_bypass_call_that_succeeds_closes_it_and_one_that_fails_changes_nothing() -> None:
    clock = Clock()
    breaker, changes = _breaker(clock, failure_threshold=1)
    _trip(breaker)
    breaker.record_failure(breaker.bypass())
    assert breaker.state is OPEN and len(changes) == 1
    breaker.record_success(breaker.bypass())
    assert breaker.state is CLOSED
    assert breaker.bypass() is breaker.try_acquire()  # closed: the shared permit


def test_the_state_names_and_gauge() -> None:
    assert [state.value for state in BreakerState] == ["closed", "half_open", "open"]
    assert [state.gauge for state in BreakerState] == [0, 1, 2]
    assert CircuitBreaker().open_until == 0.0


@pytest.mark.parametrize(
    "options",
    [
        {"failure_threshold": 0},
        {"open_s": 0},
        {"open_s": 10, "max_open_s": 5},
        {"half_open_max_in_flight": 0},
    ],
)
def test_bad_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**options)  # type: ignore[arg-type]
