"""The retry and hedge budgets on a clock the test moves: the share of first calls, the floor,
and the window sliding past old calls."""

from __future__ import annotations

import pytest

from reranker_nvidia.core.upstream.hedging import HedgeBudget
from reranker_nvidia.core.upstream.retry_budget import RatioBudget, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _spend_all(budget: RatioBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
        assert spent < 10_000
    return spent


def test_the_floor_alone_when_there_are_no_first_calls() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)  # 3 a second over 10 s
    assert _spend_all(budget) == 30
    assert (budget.allowed, budget.refused) == (30, 1)


def test_a_share_of_first_calls_on_top_of_the_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_s=0.5, window_s=10, clock=clock)
    for _ in range(100):
        budget.record_first_call()
    assert _spend_all(budget) == 25  # 20 % of 100, plus 0.5 * 10
    budget.record_first_call()
    budget.record_first_call()
    budget.record_first_call()
    budget.record_first_call()
    budget.record_first_call()
    assert _spend_all(budget) == 1  # 105 first calls: 21 + 5 = 26 in all


def test_old_calls_leave_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_s=0, window_s=10, clock=clock)
    for _ in range(10):
        budget.record_first_call()
    assert _spend_all(budget) == 5
    clock.now += 5
    for _ in range(10):
        budget.record_first_call()
    assert _spend_all(budget) == 5  # 20 first calls, 5 retries so far
    clock.now += 5  # the first second's calls and retries are out of the window
    assert _spend_all(budget) == 0  # 10 first calls and 5 retries in it: no room
    clock.now += 5
    assert _spend_all(budget) == 0  # nothing left in the window at all
    clock.now += 100  # long idle: the ring's stale buckets count for nothing
    for _ in range(2):
        budget.record_first_call()
    assert _spend_all(budget) == 1


def test_the_hedge_budget_has_no_floor() -> None:
    clock = Clock()
    budget = HedgeBudget(clock=clock)
    assert not budget.try_spend()
    for _ in range(50):
        budget.record_first_call()
    assert _spend_all(budget) == 5


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "window_s"),
    [(-0.1, 3, 10), (0.2, -1, 10), (0.2, 3, 0.5), (float("nan"), 3, 10)],
)
def test_bad_settings_are_refused(ratio: float, min_per_s: float, window_s: float) -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio, min_per_s, window_s)
