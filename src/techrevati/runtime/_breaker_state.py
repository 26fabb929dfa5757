"""A circuit breaker's state machine: states, tickets, probe leases, counters, transitions.

Private to :mod:`~techrevati.runtime.circuit_breaker`, whose
:class:`~techrevati.runtime.circuit_breaker.CircuitBreaker` is a
:class:`_BreakerState` with the entry points around it. This is the
bookkeeping behind one lock: admitting a call (:meth:`_admit_locked`),
settling it (:meth:`_settle`, :meth:`_abandon`), the transitions it causes
and the snapshot of it all. It never runs the guarded call or the failure
predicate; state changes are queued under the lock and handed to the
listeners outside it (:meth:`_notify`). Methods named ``*_locked`` expect
the lock held; the others take it themselves, only ever with ``with``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, cast

from techrevati.runtime._clock import Clock
from techrevati.runtime._log import get_logger
from techrevati.runtime._windows import _CountWindow, _TimeWindow, _Window

if TYPE_CHECKING:
    from techrevati.runtime._breaker_permit import Permit
    from techrevati.runtime.circuit_breaker import CircuitBreaker, SlidingWindow, StateListener

__all__ = [
    "_CLOSED",
    "_FAILURE",
    "_FORCED_OPEN",
    "_HALF_OPEN",
    "_IGNORED",
    "_OPEN",
    "_SUCCESS",
    "CircuitBreakerMetrics",
    "CircuitState",
    "_BreakerState",
]

_LOG: Final = get_logger("techrevati.runtime.circuit_breaker")

# How a finished call counts. Plain ints: compared on every settle.
_SUCCESS: Final = 0
_FAILURE: Final = 1
_IGNORED: Final = 2


class CircuitState(StrEnum):
    """Where a breaker is: passing calls, rejecting them, or probing."""

    CLOSED = "closed"
    """Calls pass through; failures are counted."""
    OPEN = "open"
    """Calls are rejected until ``recovery_timeout_seconds`` have passed."""
    HALF_OPEN = "half_open"
    """Up to ``half_open_max_calls`` probe calls may run; the rest are rejected."""
    FORCED_OPEN = "forced_open"
    """Held open by :meth:`CircuitBreaker.force_open` until :meth:`CircuitBreaker.reset`."""


_CLOSED: Final = CircuitState.CLOSED
_OPEN: Final = CircuitState.OPEN
_HALF_OPEN: Final = CircuitState.HALF_OPEN
_FORCED_OPEN: Final = CircuitState.FORCED_OPEN


@dataclass(frozen=True, slots=True)
class CircuitBreakerMetrics:
    """A consistent snapshot of one breaker, taken by :meth:`CircuitBreaker.metrics`.

    Lifetime counters (``successes``, ``failures``, ``ignored``,
    ``rejections``) survive :meth:`~CircuitBreaker.reset`; the others describe
    the current state. ``window_*`` and the rates are zero without a window.
    ``opened_at`` is a reading of the breaker's clock; ``last_failure`` is the
    type name of the last failure recorded.
    """

    name: str
    state: CircuitState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float
    slow_call_rate: float
    successes: int
    failures: int
    ignored: int
    rejections: int
    half_open_in_flight: int
    retry_after: float
    opened_at: float | None
    last_failure: str | None

    @property
    def calls(self) -> int:
        """Calls that finished (successes, failures and ignored)."""
        return self.successes + self.failures + self.ignored

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (the state as its string value)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": self.window_calls,
            "window_failures": self.window_failures,
            "window_slow_calls": self.window_slow_calls,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "ignored": self.ignored,
            "rejections": self.rejections,
            "half_open_in_flight": self.half_open_in_flight,
            "retry_after": None if math.isinf(self.retry_after) else self.retry_after,
            "opened_at": self.opened_at,
            "last_failure": self.last_failure,
        }


for _public in (CircuitState, CircuitBreakerMetrics):
    _public.__module__ = "techrevati.runtime.circuit_breaker"


class _BreakerState:
    """The settings and the state of one breaker, its lock, and the rules that move it.

    Tickets: every state period and every half-open probe gets a unique int.
    A call carries its ticket; its result moves the state machine only if
    the ticket is still current, so late results of calls admitted before a
    transition only update the lifetime counters.
    """

    __slots__ = (
        "_clock",
        "_closed_ticket",
        "_consecutive",
        "_delivering",
        "_failure_threshold",
        "_failures",
        "_fast_ticket",
        "_generation",
        "_ignored",
        "_last_failure",
        "_leases",
        "_listeners",
        "_lock",
        "_max_probes",
        "_name",
        "_needs_duration",
        "_next_ticket",
        "_opened_at",
        "_pending",
        "_probe_successes",
        "_probe_timeout",
        "_recovery",
        "_rejections",
        "_slow_after",
        "_state",
        "_success_threshold",
        "_successes",
        "_time_window",
        "_window",
        "_window_spec",
    )

    def __init__(
        self,
        *,
        name: str,
        failure_threshold: int,
        recovery: float,
        success_threshold: int,
        max_probes: int,
        window: SlidingWindow | None,
        probe_timeout: float | None,
        clock: Clock,
    ) -> None:
        """Start CLOSED with the (already checked) settings."""
        self._name = name
        self._failure_threshold = failure_threshold
        self._recovery = recovery
        self._success_threshold = success_threshold
        self._max_probes = max_probes
        self._probe_timeout = probe_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: tuple[StateListener, ...] = ()
        self._window_spec = window
        self._window: _Window | None = None
        self._slow_after: float | None = None
        if window is not None:
            self._window = (
                _TimeWindow(window.size) if window.kind == "time" else _CountWindow(window.size)
            )
            self._slow_after = window.slow_call_duration_seconds
        self._time_window = window is not None and window.kind == "time"
        self._needs_duration = self._slow_after is not None
        self._pending: deque[tuple[CircuitState, CircuitState]] = deque()
        self._delivering = False  # someone is running _notify (guarded by _lock)
        self._state = _CLOSED
        self._generation = 0
        self._next_ticket = 1
        # The ticket a call may take without the lock: the generation while
        # CLOSED in consecutive mode, else -1 (take the locked path).
        self._fast_ticket = 0 if window is None else -1
        # The ticket any admission may take without the lock while CLOSED.
        self._closed_ticket = 0
        self._consecutive = 0
        self._opened_at: float | None = None
        self._leases: dict[int, float] = {}
        self._probe_successes = 0
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        self._rejections = 0
        self._last_failure: BaseException | None = None

    def _admit_locked(self, permit: Permit) -> float:
        """Admit ``permit`` (its ticket stays -1 on a rejection, which is counted).

        Returns the clock reading it decided on (0.0 when it needed none).
        """
        state = self._state
        if state is _CLOSED:  # closed meanwhile, or closed by a change an interrupt cut short
            self._publish_closed_locked()
            permit._ticket = self._generation
            return 0.0
        now = 0.0
        if state is not _FORCED_OPEN:
            now = self._clock()
            self._advance_locked(now)
            if self._state is _HALF_OPEN and len(self._leases) < self._max_probes:
                ticket = self._next_ticket
                self._next_ticket = ticket + 1
                permit._ticket = ticket  # before the lease, so the lease is never orphaned
                self._leases[ticket] = now
                return now
        self._rejections += 1
        return now

    def _settle(
        self,
        ticket: int,
        outcome: int,
        exc: BaseException | None,
        start: float | None,
        *,
        duration: float | None = None,
        permit: Permit | None = None,
    ) -> bool:
        """Record one finished call; return False if ``permit`` was already settled.

        Whoever holds a probe's permit calls this inside a ``try`` whose handler
        calls :meth:`_abandon`, so an interrupt in here still frees the slot.
        """
        now: float | None = None
        if start is not None or self._time_window:
            now = self._clock()
            if duration is None and start is not None:
                duration = now - start
        with self._lock:
            if permit is not None:
                if permit._settled:
                    return False
                permit._settled = True
            if outcome == _SUCCESS:
                self._successes += 1
            elif outcome == _FAILURE:
                self._failures += 1
                self._last_failure = exc
            else:
                self._ignored += 1
            if ticket == self._generation:  # admitted in the current CLOSED period
                if outcome != _IGNORED:
                    self._record_closed_locked(outcome == _FAILURE, duration, now)
            elif ticket in self._leases:  # a probe of the current HALF_OPEN period
                del self._leases[ticket]
                if outcome == _FAILURE or (outcome == _SUCCESS and self._is_slow(duration)):
                    self._transition_locked(_OPEN, self._clock() if now is None else now)
                elif outcome == _SUCCESS:
                    self._probe_successes += 1
                    if self._probe_successes >= self._success_threshold:
                        self._transition_locked(_CLOSED, 0.0)
        if self._pending:
            self._notify()
        return True

    def _abandon(self, permit: Permit) -> None:
        """Give back the lease of a permit whose call or settlement was cut short.

        An interrupt, a cancellation, or a rejection (then a no-op). A permit
        not settled yet is settled as ignored; calling this again does nothing.
        """
        ticket = permit._ticket
        if ticket < 0 or (permit._settled and ticket not in self._leases):
            return  # never admitted, or settled and given back already
        with self._lock:
            if not permit._settled:
                permit._settled = True
                self._ignored += 1
            self._leases.pop(ticket, None)

    def _is_slow(self, duration: float | None) -> bool:
        slow_after = self._slow_after
        return slow_after is not None and duration is not None and duration >= slow_after

    def _record_closed_locked(
        self, failed: bool, duration: float | None, now: float | None
    ) -> None:
        self._consecutive = self._consecutive + 1 if failed else 0
        window = self._window
        spec = self._window_spec
        if window is None or spec is None:
            if failed and self._consecutive >= self._failure_threshold:
                self._transition_locked(_OPEN, self._clock())
            return
        slow_after = self._slow_after
        slow = slow_after is not None and duration is not None and duration >= slow_after
        window.add(0.0 if now is None else now, failed, slow)
        calls = window.calls
        if calls >= spec.minimum_calls and (
            window.failures / calls >= spec.failure_rate_threshold
            or (slow_after is not None and window.slow / calls >= spec.slow_call_rate_threshold)
        ):
            self._transition_locked(_OPEN, self._clock() if now is None else now)

    def _advance_locked(self, now: float) -> None:
        """Apply the lazy, time-driven transitions due at ``now``."""
        if self._state is _HALF_OPEN and self._probe_timeout is not None and self._leases:
            oldest = next(iter(self._leases.values()))  # leases are kept in grant order
            expired_at = oldest + self._probe_timeout
            if now >= expired_at:
                self._transition_locked(_OPEN, expired_at)
        if self._state is _OPEN:
            assert self._opened_at is not None
            if now - self._opened_at >= self._recovery:
                self._transition_locked(_HALF_OPEN, now)

    def _transition_locked(self, new: CircuitState, now: float) -> None:
        """Move to ``new``, in an order that an interrupt part-way cannot tear.

        Lock-free admission stops first and the new state is published last,
        so a change cut short leaves the old state (its probes forgotten) or
        the whole new one; if that is CLOSED, the next admission lets calls
        in without the lock again (:meth:`_publish_closed_locked`).
        """
        old = self._state
        self._fast_ticket = self._closed_ticket = -1
        generation = self._next_ticket
        self._next_ticket = generation + 1
        self._leases.clear()
        self._probe_successes = 0
        if new is _CLOSED:
            self._consecutive = 0
            if self._window is not None:
                self._window.clear()
        elif new is not _HALF_OPEN:
            self._opened_at = now  # before the state: an OPEN breaker always has it
        self._generation = generation
        self._state = new
        if self._listeners and old is not new:
            self._pending.append((old, new))
        if new is _CLOSED:
            self._publish_closed_locked()

    def _publish_closed_locked(self) -> None:
        """Let a CLOSED breaker admit calls without the lock again."""
        generation = self._generation
        self._opened_at = None
        self._closed_ticket = generation
        if self._window is None:
            self._fast_ticket = generation

    def _retry_after_locked(self, now: float) -> float:
        state = self._state
        if state is _OPEN:
            assert self._opened_at is not None
            return max(0.0, self._opened_at + self._recovery - now)
        if state is _FORCED_OPEN:
            return math.inf
        return 0.0

    def _metrics_locked(self, now: float) -> CircuitBreakerMetrics:
        """Advance to ``now`` and return the snapshot :meth:`CircuitBreaker.metrics` hands out."""
        self._advance_locked(now)
        window = self._window
        calls = failures = slow = 0
        if window is not None:
            window.advance(now)
            calls, failures, slow = window.calls, window.failures, window.slow
        last = self._last_failure
        return CircuitBreakerMetrics(
            name=self._name,
            state=self._state,
            consecutive_failures=self._consecutive,
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            successes=self._successes,
            failures=self._failures,
            ignored=self._ignored,
            rejections=self._rejections,
            half_open_in_flight=len(self._leases),
            retry_after=self._retry_after_locked(now),
            opened_at=self._opened_at,
            last_failure=None if last is None else type(last).__qualname__,
        )

    def _notify(self) -> None:
        """Deliver queued state changes to the listeners, in order, outside the lock.

        Whoever sets ``_delivering`` delivers everything queued, including
        changes queued by other threads meanwhile, or by a listener itself;
        the ``finally`` clears it however delivery ends.
        """
        breaker = cast("CircuitBreaker", self)  # the only kind of _BreakerState there is
        pending = self._pending
        delivering = False
        try:
            with self._lock:
                if self._delivering:
                    return  # another thread (or an outer frame of this one) is delivering
                delivering = self._delivering = True
            while True:
                with self._lock:
                    if not pending:
                        delivering = self._delivering = False
                        return
                    old, new = pending.popleft()
                for listener in self._listeners:
                    try:
                        listener(breaker, old, new)
                    except Exception:
                        _LOG.exception(
                            "circuit breaker %r: state listener %r failed on %s -> %s",
                            self._name,
                            listener,
                            old.value,
                            new.value,
                        )
        finally:
            if delivering:
                with self._lock:
                    self._delivering = False
