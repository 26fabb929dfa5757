"""A circuit breaker: stop calling a dependency that keeps failing, then probe it back.

Put one :class:`CircuitBreaker` in front of each external dependency (one model
API, one host, one endpoint). While the dependency answers, calls pass through
at a cost of a lock and a few integer updates. When it keeps failing (N
consecutive failures, or a failure or slow-call *rate* over a sliding window)
the breaker opens and rejects calls at once with :class:`CircuitOpenError`,
sparing the dependency and your latency budget; after
``recovery_timeout_seconds`` it lets a few probe calls through and closes again
when they succeed. Only failures that are the dependency's fault count
(timeouts, connection errors, 5xx, 429); a bad request or an auth error never
trips it (see :func:`is_dependency_failure`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final, Literal, ParamSpec, Protocol, TypeVar, cast

from techrevati.runtime._clock import Clock
from techrevati.runtime._sdk import is_dependency_failure
from techrevati.runtime._validate import int_at_least
from techrevati.runtime._windows import _CountWindow, _TimeWindow, _Window
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_RECOVERY_TIMEOUT_SECONDS",
    "CircuitBreaker",
    "CircuitBreakerMetrics",
    "CircuitOpenError",
    "CircuitState",
    "Permit",
    "SlidingWindow",
    "StateListener",
    "is_dependency_failure",
]

DEFAULT_FAILURE_THRESHOLD: Final = 5
"""Consecutive failures that open a breaker in the default mode."""

DEFAULT_RECOVERY_TIMEOUT_SECONDS: Final = 60.0
"""Seconds an open breaker waits before it lets a probe call through."""

_LOG: Final = logging.getLogger("techrevati.runtime.circuit_breaker")

_P = ParamSpec("_P")
_T = TypeVar("_T")

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


class StateListener(Protocol):
    """Called after each state change with the breaker, the old and the new state."""

    def __call__(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState, /) -> None:
        """React to one state change; exceptions are logged and swallowed."""


class CircuitOpenError(TechrevatiError):
    """The breaker rejected the call without running it.

    ``name`` is the breaker's name; ``retry_after`` is how many seconds remain
    until a probe call will be let through (``0.0`` when the breaker is
    half-open but its probes are all taken, ``math.inf`` when it was forced
    open). ``__cause__`` is the last failure the breaker recorded, so the real
    error is never hidden. Each rejection raises a fresh instance.
    """

    __slots__ = ("name", "retry_after", "state")

    def __init__(
        self, name: str, retry_after: float, state: CircuitState = CircuitState.OPEN
    ) -> None:
        # BaseException.__new__ already stored the arguments as ``args``.
        self.name = name
        self.retry_after = retry_after
        self.state = state

    def __str__(self) -> str:
        if self.state is CircuitState.FORCED_OPEN:
            return f"circuit {self.name!r} is forced open until reset()"
        if self.state is CircuitState.HALF_OPEN:
            return f"circuit {self.name!r} is half-open and its probe calls are all taken"
        return f"circuit {self.name!r} is open; retry after {self.retry_after:.3f}s"

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float, CircuitState]]:
        return (type(self), (self.name, self.retry_after, self.state))


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """Trip on a failure (or slow-call) rate over recent calls instead of a streak.

    ``kind="count"`` looks at the last ``size`` calls; ``kind="time"`` at the
    calls that finished in the last ``size`` seconds (one-second buckets). The
    breaker opens once the window holds at least ``minimum_calls`` calls and
    the failure rate reaches ``failure_rate_threshold`` or the share of calls
    that took at least ``slow_call_duration_seconds`` reaches
    ``slow_call_rate_threshold``. Ignored calls are not in the window.
    """

    kind: Literal["count", "time"] = "count"
    size: int = 100
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    slow_call_duration_seconds: float | None = None
    slow_call_rate_threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("count", "time"):
            raise InvalidValueError(f"kind must be 'count' or 'time', got {self.kind!r}")
        int_at_least("size", self.size, 1)
        _check_rate("failure_rate_threshold", self.failure_rate_threshold)
        int_at_least("minimum_calls", self.minimum_calls, 1)
        if self.kind == "count" and self.minimum_calls > self.size:
            raise InvalidValueError(
                f"minimum_calls must be <= size for a count window (it could never trip), "
                f"got minimum_calls={self.minimum_calls!r} with size={self.size!r}"
            )
        if self.slow_call_duration_seconds is not None:
            _check_seconds("slow_call_duration_seconds", self.slow_call_duration_seconds, False)
        _check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)


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


class CircuitBreaker:
    """Guard calls to one dependency; open after failures, probe, close on success.

    By default ``failure_threshold`` consecutive failures open the breaker;
    pass ``window=SlidingWindow(...)`` to trip on a failure or slow-call rate
    instead (``failure_threshold`` is then unused). An open breaker rejects
    calls with :class:`CircuitOpenError` until ``recovery_timeout_seconds``
    have passed on ``clock``; then it is half-open and admits at most
    ``half_open_max_calls`` probes at a time. ``success_threshold`` probe
    successes close it; one probe failure (or a probe holding its permit
    longer than ``probe_timeout_seconds``) opens it again.

    ``is_failure(exc)`` decides whether an exception counts against the
    dependency (default :func:`is_dependency_failure`); exceptions of an
    ``exclude`` type, exceptions the predicate rejects, and cancellations
    (``asyncio.CancelledError``, ``KeyboardInterrupt``) count as neither
    success nor failure, and always give a probe's permit back. Exceptions
    from the guarded callable propagate unchanged.

    Safe to share between threads and asyncio tasks: a lock guards the
    bookkeeping only, never the guarded call, so calls run concurrently.
    The lock is only ever held by ``with``, so an interrupt (Ctrl-C) cannot
    leave it taken, and a probe's permit comes back however its call ends,
    an interrupt or a cancellation at any point included.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed_ticket",
        "_consecutive",
        "_delivering",
        "_exclude",
        "_failure_threshold",
        "_failures",
        "_fast_ticket",
        "_generation",
        "_ignored",
        "_is_failure",
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
        name: str,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        recovery_timeout_seconds: float = DEFAULT_RECOVERY_TIMEOUT_SECONDS,
        *,
        success_threshold: int = 1,
        half_open_max_calls: int = 1,
        window: SlidingWindow | None = None,
        is_failure: Callable[[Exception], bool] | None = None,
        exclude: Iterable[type[BaseException]] | type[BaseException] = (),
        probe_timeout_seconds: float | None = None,
        clock: Clock = time.monotonic,
        listeners: Iterable[StateListener] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidValueError(f"name must be a non-empty str, got {name!r}")
        int_at_least("failure_threshold", failure_threshold, 1)
        _check_seconds("recovery_timeout_seconds", recovery_timeout_seconds, True)
        int_at_least("success_threshold", success_threshold, 1)
        int_at_least("half_open_max_calls", half_open_max_calls, 1)
        if window is not None and not isinstance(window, SlidingWindow):
            raise InvalidValueError(f"window must be a SlidingWindow or None, got {window!r}")
        if is_failure is not None and not callable(is_failure):
            raise InvalidValueError(f"is_failure must be callable or None, got {is_failure!r}")
        if probe_timeout_seconds is not None:
            _check_seconds("probe_timeout_seconds", probe_timeout_seconds, False)
        if not callable(clock):
            raise InvalidValueError(f"clock must be callable, got {clock!r}")
        self._name = name
        self._failure_threshold = failure_threshold
        self._recovery = float(recovery_timeout_seconds)
        self._success_threshold = success_threshold
        self._max_probes = half_open_max_calls
        self._is_failure: Callable[[Exception], bool] = (
            is_dependency_failure if is_failure is None else is_failure
        )
        self._exclude = _exception_types(exclude)
        self._probe_timeout = probe_timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: tuple[StateListener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)
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
        # Tickets: every state period and every half-open probe gets a unique
        # int. A call carries its ticket; its result moves the state machine
        # only if the ticket is still current, so late results of calls
        # admitted before a transition only update the lifetime counters.
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

    # -- configuration ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name (one per dependency), as carried by :class:`CircuitOpenError`."""
        return self._name

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open the breaker (consecutive mode)."""
        return self._failure_threshold

    @property
    def recovery_timeout_seconds(self) -> float:
        """Seconds the breaker stays open before it admits a probe."""
        return self._recovery

    @property
    def window(self) -> SlidingWindow | None:
        """The sliding-window settings, or None in consecutive mode."""
        return self._window_spec

    # -- guarded calls ---------------------------------------------------------------

    def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the
        breaker is open; any exception from ``fn`` propagates unchanged.
        """
        ticket = self._fast_ticket
        if ticket < 0:
            return self._call_locked_path(fn, args, kwargs)
        # Fast path: CLOSED in consecutive mode; admission needs no lock and
        # takes no lease, so an interrupt anywhere here has nothing to give back.
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_exception(ticket, exc, None, None)
            raise
        with self._lock:
            self._successes += 1
            if ticket == self._generation:
                self._consecutive = 0
        return result

    async def acall(
        self, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Await ``fn(*args, **kwargs)`` through the breaker; the async twin of :meth:`call`.

        Cancelling the awaiting task gives a probe's permit back and counts
        as neither success nor failure.
        """
        ticket = self._fast_ticket
        if ticket < 0:
            return await self._acall_locked_path(fn, args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._settle_exception(ticket, exc, None, None)
            raise
        with self._lock:
            self._successes += 1
            if ticket == self._generation:
                self._consecutive = 0
        return result

    def __call__(self, fn: Callable[_P, _T]) -> Callable[_P, _T]:
        """Decorate ``fn`` (sync or async) so every call goes through the breaker."""
        return self.decorate(fn)

    def decorate(self, fn: Callable[_P, _T]) -> Callable[_P, _T]:
        """Return ``fn`` wrapped by the breaker, keeping its name and signature.

        Coroutine functions get an async wrapper that uses :meth:`acall`.
        Generator functions are refused: the breaker would only see the
        generator being created, not its failures.
        """
        if not callable(fn):
            raise InvalidValueError(f"fn must be callable, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise InvalidValueError(
                f"fn must not be a generator function, got {fn!r}; "
                "guard the code that consumes it with `with breaker:` instead"
            )
        if inspect.iscoroutinefunction(fn):
            afn = cast("Callable[_P, Awaitable[object]]", fn)

            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> object:
                return await self.acall(afn, *args, **kwargs)

            return cast("Callable[_P, _T]", functools.wraps(fn)(async_wrapper))

        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def __enter__(self) -> Permit:
        """Admit the block as one call (raising :class:`CircuitOpenError` when open)."""
        permit = Permit(self, -1, None)
        try:
            rejection = self._admit(permit, raising=True)
            if rejection is None:
                _ENTERED.set((*_ENTERED.get(), permit))
                return permit
        except BaseException:
            self._leave(permit)  # interrupted: nothing stays entered or leased
            raise
        raise rejection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        found: list[Permit] = []
        try:
            self._exit_entered(exc, found)
        finally:
            if not found or not found[0]._settled:  # cut short: clean up after it
                self._leave(found[0] if found else None)

    async def __aenter__(self) -> Permit:
        """Async twin of ``with breaker:``."""
        # Not delegated to __enter__: returning a permit from one more frame
        # would be one more place for an interrupt to strand it.
        permit = Permit(self, -1, None)
        try:
            rejection = self._admit(permit, raising=True)
            if rejection is None:
                _ENTERED.set((*_ENTERED.get(), permit))
                return permit
        except BaseException:
            self._leave(permit)
            raise
        raise rejection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        found: list[Permit] = []
        try:
            self._exit_entered(exc, found)
        finally:
            if not found or not found[0]._settled:  # cut short: clean up after it
                self._leave(found[0] if found else None)

    # -- permits ---------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """Return a :class:`Permit` for one call, or None if the breaker rejects it.

        For callers that branch instead of catching: run the call, then
        settle the permit (``record_success``, ``record_failure``,
        ``record_ignored``) or use it as a context manager.
        """
        ticket = self._fast_ticket
        if ticket >= 0:  # consecutive mode: no lease, no slow calls to time
            return Permit(self, ticket, None)
        permit = Permit(self, -1, None)
        try:
            self._admit(permit, raising=False)
            return permit if permit._ticket >= 0 else None
        except BaseException:
            self._abandon(permit)  # interrupted before the caller got it
            raise

    def acquire(self) -> Permit:
        """Return a :class:`Permit` for one call, or raise :class:`CircuitOpenError`."""
        ticket = self._fast_ticket
        if ticket >= 0:  # consecutive mode: no lease, no slow calls to time
            return Permit(self, ticket, None)
        permit = Permit(self, -1, None)
        try:
            rejection = self._admit(permit, raising=True)
            if rejection is None:
                return permit
        except BaseException:
            self._abandon(permit)  # interrupted before the caller got it
            raise
        raise rejection

    # -- state, metrics, control -----------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an open breaker whose timeout has passed reads half-open."""
        state = self._state
        if state is _CLOSED or state is _FORCED_OPEN:
            return state
        now = self._clock()
        with self._lock:
            self._advance_locked(now)
            state = self._state
        if self._pending:
            self._notify()
        return state

    def metrics(self) -> CircuitBreakerMetrics:
        """Return a consistent snapshot of the state and the counters."""
        now = self._clock()
        with self._lock:
            self._advance_locked(now)
            state = self._state
            window = self._window
            calls = failures = slow = 0
            if window is not None:
                window.advance(now)
                calls, failures, slow = window.calls, window.failures, window.slow
            snapshot = CircuitBreakerMetrics(
                name=self._name,
                state=state,
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
                last_failure=(
                    None if self._last_failure is None else type(self._last_failure).__qualname__
                ),
            )
        if self._pending:
            self._notify()
        return snapshot

    @property
    def last_failure(self) -> BaseException | None:
        """The last exception counted as a failure (the ``__cause__`` of rejections)."""
        return self._last_failure

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old, new)`` after every state change from now on.

        Listeners run after the change, outside the breaker's lock, in the
        order changes happened. One that raises is logged on the
        ``techrevati.runtime.circuit_breaker`` logger and skipped; the change
        and the call that caused it are unaffected.
        """
        if not callable(listener):
            raise InvalidValueError(f"listener must be callable, got {listener!r}")
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; raises InvalidValueError if it was never added."""
        with self._lock:
            listeners = list(self._listeners)
            if listener not in listeners:
                raise InvalidValueError(f"listener was not added, got {listener!r}")
            listeners.remove(listener)
            self._listeners = tuple(listeners)

    def reset(self) -> None:
        """Close the breaker and forget its streak, window and probes.

        Lifetime counters stay. Calls in flight finish normally but no longer
        move the state machine.
        """
        with self._lock:
            self._transition_locked(_CLOSED, 0.0)
            self._last_failure = None
        if self._pending:
            self._notify()

    def force_open(self) -> None:
        """Reject every call (``retry_after`` is ``math.inf``) until :meth:`reset`."""
        now = self._clock()
        with self._lock:
            if self._state is not _FORCED_OPEN:
                self._transition_locked(_FORCED_OPEN, now)
        if self._pending:
            self._notify()

    def __repr__(self) -> str:
        return f"CircuitBreaker({self._name!r}, state={self._state.value})"

    # -- private: admission ----------------------------------------------------------

    def _call_locked_path(
        self, fn: Callable[..., _T], args: tuple[object, ...], kwargs: Mapping[str, object]
    ) -> _T:
        ticket = self._closed_ticket
        if ticket >= 0:  # CLOSED with a window: no lease to give back
            start = self._clock() if self._needs_duration else None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_exception(ticket, exc, start, None)
                raise
            self._settle(ticket, _SUCCESS, None, start)
            return result
        # Maybe a half-open probe. The permit exists before its lease does and
        # one try spans admission, the call and settlement, so an interrupt
        # anywhere in between still gives the lease back.
        permit = Permit(self, -1, None)
        try:
            rejection = self._admit(permit, raising=True)
            if rejection is None:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._settle_exception(permit._ticket, exc, permit._start, permit)
                    raise
                self._settle(permit._ticket, _SUCCESS, None, permit._start, permit=permit)
                return result
        except BaseException:
            self._abandon(permit)
            raise
        raise rejection  # outside the try: a rejection holds nothing to give back

    async def _acall_locked_path(
        self,
        fn: Callable[..., Awaitable[_T]],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
    ) -> _T:
        ticket = self._closed_ticket
        if ticket >= 0:  # CLOSED with a window: no lease to give back
            start = self._clock() if self._needs_duration else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_exception(ticket, exc, start, None)
                raise
            self._settle(ticket, _SUCCESS, None, start)
            return result
        permit = Permit(self, -1, None)  # as in _call_locked_path
        try:
            rejection = self._admit(permit, raising=True)
            if rejection is None:
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._settle_exception(permit._ticket, exc, permit._start, permit)
                    raise
                self._settle(permit._ticket, _SUCCESS, None, permit._start, permit=permit)
                return result
        except BaseException:
            self._abandon(permit)
            raise
        raise rejection  # outside the try: a rejection holds nothing to give back

    def _admit(self, permit: Permit, *, raising: bool) -> CircuitOpenError | None:
        """Give ``permit`` a ticket for one call; on a rejection its ticket stays -1.

        A half-open probe's ticket is stored on the permit before its lease
        is recorded, so whoever made the permit can give the lease back with
        :meth:`_abandon` however this call ends. A rejection is counted and,
        when ``raising``, returned as a fresh :class:`CircuitOpenError` whose
        ``__cause__`` is the last recorded failure, for the caller to raise.
        """
        ticket = self._closed_ticket
        if ticket >= 0:  # CLOSED admits everyone: no lock needed
            permit._ticket = ticket
        else:
            error: CircuitOpenError | None = None
            with self._lock:
                now = self._admit_locked(permit)
                if permit._ticket < 0 and raising:
                    error = CircuitOpenError(self._name, self._retry_after_locked(now), self._state)
                    cause = self._last_failure
                    if cause is not None:
                        error.__cause__ = cause
            if self._pending:
                self._notify()
            if permit._ticket < 0:
                return error
        if self._needs_duration:
            permit._start = self._clock()
        return None

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

    def _retry_after_locked(self, now: float) -> float:
        state = self._state
        if state is _OPEN:
            assert self._opened_at is not None
            return max(0.0, self._opened_at + self._recovery - now)
        if state is _FORCED_OPEN:
            return math.inf
        return 0.0

    def _exit_entered(self, exc: BaseException | None, found: list[Permit]) -> None:
        """Settle the innermost permit this breaker entered in this context, and drop it.

        The permit goes into ``found`` before anything changes, so the
        caller's ``finally`` (:meth:`_leave`) knows what to clean up.
        """
        stack = _ENTERED.get()
        index = self._entered_index(stack)
        if index < 0:
            raise TechrevatiError(
                f"circuit breaker {self._name!r}: __exit__ without a matching __enter__"
            )
        permit = stack[index]
        found.append(permit)
        _ENTERED.set(stack[:index] + stack[index + 1 :])
        permit.__exit__(None, exc, None)

    def _leave(self, permit: Permit | None) -> None:
        """Take ``permit`` off this context's entered stack and give its lease back.

        ``None`` means the innermost permit of this breaker: an exit cut short
        before it found its permit has changed nothing yet. Whatever was cut
        short, nothing stays entered and no lease stays held.
        """
        stack = _ENTERED.get()
        if permit is None:
            index = self._entered_index(stack)
            if index < 0:
                return
            permit = stack[index]
        if permit in stack:
            _ENTERED.set(tuple(entered for entered in stack if entered is not permit))
        self._abandon(permit)

    def _entered_index(self, stack: tuple[Permit, ...]) -> int:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index]._breaker is self:
                return index
        return -1

    # -- private: settling -----------------------------------------------------------

    def _settle_exception(
        self,
        ticket: int,
        exc: BaseException,
        start: float | None,
        permit: Permit | None,
    ) -> bool:
        return self._settle(ticket, self._classify(exc), exc, start, permit=permit)

    def _classify(self, exc: BaseException) -> int:
        """Say how an exception counts; runs user code, so never under the lock."""
        if not isinstance(exc, Exception):
            return _IGNORED  # cancellation, KeyboardInterrupt, SystemExit
        if self._exclude and isinstance(exc, self._exclude):
            return _IGNORED
        try:
            failed = self._is_failure(exc)
        except Exception:
            _LOG.exception(
                "circuit breaker %r: is_failure raised on %s; counting it as a failure",
                self._name,
                type(exc).__qualname__,
            )
            return _FAILURE
        return _FAILURE if failed else _IGNORED

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

    # -- private: transitions --------------------------------------------------------

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

    def _notify(self) -> None:
        """Deliver queued state changes to the listeners, in order, outside the lock.

        Whoever sets ``_delivering`` delivers everything queued, including
        changes queued by other threads meanwhile, or by a listener itself;
        the ``finally`` clears it however delivery ends.
        """
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
                        listener(self, old, new)
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


class Permit:
    """Permission for one call, from :meth:`CircuitBreaker.try_acquire` or ``acquire``.

    Settle it exactly once with :meth:`record_success`, :meth:`record_failure`
    or :meth:`record_ignored` (alias :meth:`release`); later settlements are
    no-ops that return False. As a context manager it settles itself on exit:
    success without an exception, else by the breaker's failure predicate.
    A half-open probe's permit must be settled, or the probe slot stays taken
    until ``probe_timeout_seconds`` (if set); a settlement cut short by an
    interrupt still gives it back. A permit belongs to one caller.
    """

    __slots__ = ("_breaker", "_settled", "_start", "_ticket")

    def __init__(self, breaker: CircuitBreaker, ticket: int, start: float | None) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self._start = start
        self._settled = False

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker that granted this permit."""
        return self._breaker

    @property
    def settled(self) -> bool:
        """Whether an outcome was already recorded."""
        return self._settled

    def record_success(self, duration: float | None = None) -> bool:
        """Count the call as a success; ``duration`` (seconds) feeds slow-call detection.

        Without ``duration`` the time since the permit was granted is used
        when the breaker watches for slow calls.
        """
        breaker = self._breaker
        try:
            seconds = _duration(duration)
            return breaker._settle(
                self._ticket, _SUCCESS, None, self._start, duration=seconds, permit=self
            )
        except InvalidValueError:
            raise  # a bad duration: nothing was settled
        except BaseException:
            breaker._abandon(self)  # interrupted: the probe slot still comes back
            raise

    def record_failure(
        self, exc: BaseException | None = None, duration: float | None = None
    ) -> bool:
        """Count the call as failed with ``exc``, judged like :meth:`CircuitBreaker.call` would.

        ``exc`` goes through ``exclude`` and the failure predicate, so an
        exception that is not the dependency's fault is recorded as ignored.
        Without ``exc`` the call counts as a failure unconditionally.
        """
        breaker = self._breaker
        try:
            seconds = _duration(duration)
            outcome = _FAILURE if exc is None else breaker._classify(exc)
            return breaker._settle(
                self._ticket, outcome, exc, self._start, duration=seconds, permit=self
            )
        except InvalidValueError:
            raise  # a bad duration: nothing was settled
        except BaseException:
            breaker._abandon(self)  # interrupted: the probe slot still comes back
            raise

    def record_ignored(self) -> bool:
        """Give the permit back counting the call as neither success nor failure."""
        breaker = self._breaker
        try:
            return breaker._settle(self._ticket, _IGNORED, None, None, permit=self)
        except BaseException:
            breaker._abandon(self)  # interrupted: the slot comes back all the same
            raise

    release = record_ignored

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._settled:
            return
        breaker = self._breaker
        try:
            if exc is None:
                breaker._settle(self._ticket, _SUCCESS, None, self._start, permit=self)
            else:
                breaker._settle_exception(self._ticket, exc, self._start, self)
        except BaseException:
            breaker._abandon(self)  # interrupted: the probe slot still comes back
            raise

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.__exit__(exc_type, exc, tb)
        except BaseException:
            self._breaker._abandon(self)  # interrupted as __exit__ started
            raise

    def __repr__(self) -> str:
        return f"Permit(breaker={self._breaker.name!r}, settled={self._settled})"


_ENTERED: Final[ContextVar[tuple[Permit, ...]]] = ContextVar(
    "techrevati_circuit_breaker_entered", default=()
)
"""Permits of the ``with breaker:`` blocks open in this thread or task, innermost last."""


def _duration(value: float | None) -> float | None:
    if value is not None and (
        not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0.0
    ):
        raise InvalidValueError(f"duration must be a number >= 0 or None, got {value!r}")
    return value


def _check_seconds(name: str, value: object, allow_zero: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_rate(name: str, value: object) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= 1
    )
    if not ok:
        raise InvalidValueError(f"{name} must be a number in (0, 1], got {value!r}")


def _exception_types(
    exclude: Iterable[type[BaseException]] | type[BaseException],
) -> tuple[type[BaseException], ...]:
    items = (exclude,) if isinstance(exclude, type) else exclude
    try:
        types = tuple(items)
    except TypeError:
        raise InvalidValueError(f"exclude must be exception types, got {exclude!r}") from None
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise InvalidValueError(f"exclude must hold exception types, got {item!r}")
    return types
