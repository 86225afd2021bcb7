"""A circuit breaker for one NIM endpoint: closed while calls succeed, open (no calls) after
too many failures in a row, then half-open (a few probe calls) to learn whether it is back.

    CLOSED --failure_threshold failures in a row--> OPEN
    OPEN --open period over, or a readiness probe passes--> HALF_OPEN
    HALF_OPEN --a probe call succeeds--> CLOSED
    HALF_OPEN --a probe call fails--> OPEN, for twice as long as last time (up to max_open_s)
    any --force_open() (the readiness probe fails)--> OPEN until mark_ready()

Every call the breaker admits holds a ``Permit``, and its outcome is recorded against it. A
permit belongs to the breaker's state at the time it was given: the outcome of a call admitted
before the latest transition (a slow call that was in flight when the breaker opened) changes
nothing, so it can neither close a breaker that is probing nor reopen one that just closed.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable


class BreakerState(str, enum.Enum):
    """The breaker's state; the value is the name metrics, logs and /meta show."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The state as a number for a gauge: 0 closed, 1 half-open, 2 open."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

# What a transition is told with, for the log line and /meta.
REASON_FAILURES = "consecutive failures"
REASON_OPEN_PERIOD_OVER = "open period over"
REASON_PROBE_SUCCEEDED = "probe call succeeded"
REASON_PROBE_FAILED = "probe call failed"
REASON_NOT_READY = "readiness probe failed"
REASON_READY = "readiness probe passed"
REASON_BYPASS_SUCCEEDED = "call succeeded while down"

OnChange = Callable[[BreakerState, BreakerState, str], None]


class Permit:
    """A call's admission by a breaker; pass it back with the call's outcome."""

    __slots__ = ("_epoch", "_probe")

    def __init__(self, epoch: int, probe: bool) -> None:
        self._epoch = epoch
        self._probe = probe

    @property
    def probe(self) -> bool:
        """True when the call holds one of the half-open state's probe slots."""
        return self._probe


class CircuitBreaker:
    """One endpoint's breaker, on an injectable clock. Not thread-safe: one event loop.

    ``on_change(old, new, reason)`` is called after every transition (to log it and update a
    gauge); it must not raise. Reading ``state`` or asking ``admits()`` may itself make the
    OPEN -> HALF_OPEN transition when the open period is over.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_s: float = 5.0,
        max_open_s: float = 60.0,
        half_open_max_in_flight: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not 0 < open_s <= max_open_s:
            raise ValueError("open_s must be positive and at most max_open_s")
        if half_open_max_in_flight < 1:
            raise ValueError("half_open_max_in_flight must be at least 1")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.max_open_s = max_open_s
        self.half_open_max_in_flight = half_open_max_in_flight
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._epoch = 0
        # One permit serves every call admitted in the same closed epoch: no allocation per call.
        self._closed_permit = Permit(0, probe=False)
        self._failures = 0
        self._probes = 0
        self._open_for = open_s
        self._open_until = 0.0
        self._held = False
        self.last_reason = ""
        self.changed_at = clock()
        self.opened = 0  # times the breaker opened (from closed or half-open): a counter

    # -- what the router asks -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN:
            self._maybe_half_open()
        return self._state

    @property
    def held(self) -> bool:
        """True while the readiness probe holds the breaker open (``force_open``)."""
        return self._held

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def open_until(self) -> float:
        """When an open breaker turns half-open by itself (``inf`` while held); meaningless
        unless the state is OPEN."""
        return math.inf if self._held else self._open_until

    def admits(self) -> bool:
        """Whether a call may go now; takes nothing (``try_acquire`` does)."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN and not self._maybe_half_open():
            return False
        return self._probes < self.half_open_max_in_flight

    def try_acquire(self) -> Permit | None:
        """A permit for a call that goes now, or None. In half-open this takes a probe slot,
        which the call's outcome (or ``release``) gives back."""
        if self._state is BreakerState.CLOSED:
            return self._closed_permit
        if not self.admits():
            return None
        self._probes += 1
        return Permit(self._epoch, probe=True)

    def bypass(self) -> Permit:
        """A permit for a call sent whatever the state (fail-open: every endpoint is down).
        Its success closes the breaker; its failure changes nothing."""
        if self._state is BreakerState.CLOSED:
            return self._closed_permit
        return Permit(-1, probe=False)

    # -- what the call path reports ---------------------------------------------------------

    def record_success(self, permit: Permit) -> None:
        """The endpoint answered (a 4xx about the request counts: the endpoint is well)."""
        if permit._epoch != self._epoch:
            if permit._epoch == -1 and self._state is not BreakerState.CLOSED:
                self._close(REASON_BYPASS_SUCCEEDED)
            return
        if permit._probe:
            self._probes -= 1
            self._close(REASON_PROBE_SUCCEEDED)
        else:
            self._failures = 0

    def record_failure(self, permit: Permit) -> None:
        """The call failed in a way that says the endpoint is unwell: connection error,
        timeout, 5xx, 429."""
        if permit._epoch != self._epoch:
            return
        if permit._probe:
            self._probes -= 1
            self._open_for = min(self._open_for * 2, self.max_open_s)
            self._open(REASON_PROBE_FAILED)
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open_for = self.open_s
            self._open(REASON_FAILURES)

    def release(self, permit: Permit) -> None:
        """The call ended with no outcome to learn from (cancelled): its probe slot is free."""
        if permit._probe and permit._epoch == self._epoch:
            self._probes -= 1

    # -- what the readiness poller reports --------------------------------------------------

    def force_open(self) -> None:
        """The endpoint says it is not ready: no calls until ``mark_ready``."""
        self._held = True
        if self._state is not BreakerState.OPEN:
            self._open_for = self.open_s
            self._open(REASON_NOT_READY)

    def mark_ready(self) -> None:
        """The endpoint says it is ready: an open breaker turns half-open at once, so that
        real calls probe it."""
        self._held = False
        if self._state is BreakerState.OPEN:
            self._transition(BreakerState.HALF_OPEN, REASON_READY)

    # -- transitions ----------------------------------------------------------------------------

    def _maybe_half_open(self) -> bool:
        if self._held or self._clock() < self._open_until:
            return False
        self._transition(BreakerState.HALF_OPEN, REASON_OPEN_PERIOD_OVER)
        return True

    def _open(self, reason: str) -> None:
        self._open_until = self._clock() + self._open_for
        self.opened += 1
        self._transition(BreakerState.OPEN, reason)

    def _close(self, reason: str) -> None:
        self._open_for = self.open_s
        self._held = False
        self._transition(BreakerState.CLOSED, reason)

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._failures = 0
        self._probes = 0
        if new is BreakerState.CLOSED:
            self._closed_permit = Permit(self._epoch, probe=False)
        self.last_reason = reason
        self.changed_at = self._clock()
        if self._on_change is not None:
            self._on_change(old, new, reason)
