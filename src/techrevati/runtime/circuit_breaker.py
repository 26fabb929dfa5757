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

This module is the breaker's public face and its entry points; the state
machine behind them is in ``_breaker_state``, permits and ``with`` blocks in
``_breaker_permit``, the settings and their checks in ``_breaker_settings``,
the window counters in ``_windows``.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar, cast

from techrevati.runtime._breaker_permit import (
    _ENTERED as _ENTERED,  # noqa: PLC0414 (explicit re-export: tests read it here)
)
from techrevati.runtime._breaker_permit import Permit, _exit_entered, _leave
from techrevati.runtime._breaker_settings import (
    SlidingWindow,
    _exception_types,
)
from techrevati.runtime._breaker_state import (
    _CLOSED,
    _FAILURE,
    _FORCED_OPEN,
    _IGNORED,
    _SUCCESS,
    CircuitBreakerMetrics,
    CircuitState,
    _BreakerState,
)
from techrevati.runtime._clock import Clock
from techrevati.runtime._log import get_logger
from techrevati.runtime._sdk import is_dependency_failure
from techrevati.runtime._validate import (
    callable_or_none,
    instance_or_none,
    int_at_least,
    non_empty_str,
    non_negative_number,
    required_callable,
)
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

if TYPE_CHECKING:
    from techrevati.runtime.redis_store import RedisStore

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

_LOG: Final = get_logger("techrevati.runtime.circuit_breaker")

_P = ParamSpec("_P")
_T = TypeVar("_T")


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


class CircuitBreaker(_BreakerState):
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

    With ``store=`` (a :class:`~techrevati.runtime.redis_store.RedisStore`)
    the state lives on Redis under ``name``, one breaker for every worker
    naming it: each admission and settlement is one atomic script, and
    half-open probes are leases that end by themselves. Consecutive-failure
    mode only (no ``window=``). See docs/fleet.md.
    """

    __slots__ = ("__weakref__", "_exclude", "_is_failure")

    def __new__(cls, *args: Any, store: object = None, **kwargs: Any) -> CircuitBreaker:
        """Make a breaker; with ``store=``, the subclass keeping its state there."""
        if store is not None and cls is CircuitBreaker:
            from techrevati.runtime._breaker_redis import _SharedBreaker  # noqa: PLC0415

            return object.__new__(_SharedBreaker)
        return object.__new__(cls)

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
        store: RedisStore | None = None,
    ) -> None:
        if store is not None and not getattr(self, "_shared", False):
            raise InvalidValueError("a CircuitBreaker subclass cannot take store=")
        non_empty_str("name", name)
        int_at_least("failure_threshold", failure_threshold, 1)
        recovery = non_negative_number("recovery_timeout_seconds", recovery_timeout_seconds)
        int_at_least("success_threshold", success_threshold, 1)
        int_at_least("half_open_max_calls", half_open_max_calls, 1)
        instance_or_none("window", window, SlidingWindow)
        callable_or_none("is_failure", is_failure)
        if probe_timeout_seconds is not None:
            non_negative_number("probe_timeout_seconds", probe_timeout_seconds, above_zero=True)
        required_callable("clock", clock)
        super().__init__(
            name=name,
            failure_threshold=failure_threshold,
            recovery=recovery,
            success_threshold=success_threshold,
            max_probes=half_open_max_calls,
            window=window,
            probe_timeout=probe_timeout_seconds,
            clock=clock,
        )
        self._is_failure: Callable[[Exception], bool] = (
            is_dependency_failure if is_failure is None else is_failure
        )
        self._exclude = _exception_types(exclude)
        for listener in listeners:
            self.add_listener(listener)

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
            _leave(self, [permit])  # interrupted: nothing stays entered or leased
            raise
        raise rejection

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        found: list[Permit] = []
        try:
            _exit_entered(self, exc, found)
        finally:
            _leave(self, found)

    async def __aenter__(self) -> Permit:
        """Async twin of ``with breaker:``."""
        # Not delegated to __enter__: returning a permit from one more frame
        # would be one more place for an interrupt to strand it.
        permit = Permit(self, -1, None)
        try:
            rejection = (
                await self._aadmit(permit, raising=True)
                if self._async_admission
                else self._admit(permit, raising=True)
            )
            if rejection is None:
                _ENTERED.set((*_ENTERED.get(), permit))
                return permit
        except BaseException:
            _leave(self, [permit])
            raise
        raise rejection

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        # Not delegated to __exit__: an interrupt as __exit__ started would leave
        # the block entered, with no frame of this breaker's left to clean up.
        found: list[Permit] = []
        try:
            _exit_entered(self, exc, found)
        finally:
            _leave(self, found)

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

    @property
    def store(self) -> RedisStore | None:
        """The shared store this breaker keeps its state in (None: this process)."""
        return None

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
            snapshot = self._metrics_locked(now)
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
            rejection = (
                await self._aadmit(permit, raising=True)
                if self._async_admission
                else self._admit(permit, raising=True)
            )
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

    _async_admission = False
    """True where admission waits on I/O (a shared breaker): async paths await :meth:`_aadmit`."""

    async def _aadmit(self, permit: Permit, *, raising: bool) -> CircuitOpenError | None:
        """Async twin of :meth:`_admit`, for a breaker whose admission waits on I/O."""
        return self._admit(permit, raising=raising)

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
