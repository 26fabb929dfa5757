"""A circuit breaker whose state lives on Redis: one breaker per dependency for the fleet.

Private to :mod:`~techrevati.runtime.circuit_breaker`:
``CircuitBreaker(name, store=store)`` makes a :class:`_SharedBreaker`.
Admission and settlement are one run each of the breaker script
(:data:`~techrevati.runtime._redis_scripts.BREAKER`), so the state, the
consecutive-failure count and the half-open probes are the fleet's: at most
``half_open_max_calls`` probes run fleet-wide at a time, each a lease that
ends by itself ``lease_ttl`` after it began (``probe_timeout_seconds`` if
set, which then reopens the breaker as a local one does), so a worker
killed mid-probe cannot hold the breaker half-open.

Every call takes the locked path of :class:`CircuitBreaker` (its lock-free
tickets stay -1), which calls :meth:`_SharedBreaker._admit`,
:meth:`_SharedBreaker._settle` and :meth:`_SharedBreaker._abandon`; the
``with``-block and permit machinery, and its interrupt safety, are the
local breaker's. Listeners hear the changes this worker sees. When the store
cannot decide, fail-open (the default) decides with a local breaker of the
same settings; fail-closed refuses with
:class:`~techrevati.runtime.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Final, NoReturn

from techrevati.runtime._breaker_state import (
    _FAILURE,
    CircuitBreakerMetrics,
    CircuitState,
)
from techrevati.runtime._log import get_logger
from techrevati.runtime._redis_scripts import BREAKER
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError, Permit
from techrevati.runtime.errors import InvalidValueError, StoreUnavailableError
from techrevati.runtime.redis_store import FallbackError, RedisStore

_LOG: Final = get_logger("techrevati.runtime.circuit_breaker")

_LOCAL_BASE: Final = 1 << 62
"""Tickets of calls the local stand-in admitted are offset by this (server tickets stay below)."""


class _SharedBreaker(CircuitBreaker):
    """A :class:`CircuitBreaker` on a :class:`RedisStore`; see the module docstring."""

    __slots__ = ("_fixed", "_keys", "_lease_ms", "_local", "_observed", "_store", "_what")

    _shared = True

    def __init__(self, name: str, *args: Any, store: RedisStore, **kwargs: Any) -> None:
        if not isinstance(store, RedisStore):
            raise InvalidValueError(f"store must be a RedisStore or None, got {store!r}")
        from techrevati.runtime.redis_store import checked_primitive_name  # noqa: PLC0415

        checked_primitive_name(name)
        if kwargs.get("window") is not None:
            raise InvalidValueError(
                "a shared breaker counts consecutive failures; window= is not supported with store="
            )
        super().__init__(name, *args, store=store, **kwargs)
        self._fast_ticket = self._closed_ticket = -1  # every call takes the locked path
        self._store = store
        self._keys = store.keys("breaker", name, "state", "leases")
        self._what = f"breaker {name!r}"
        probe = self._probe_timeout
        lease = store.lease_ttl if probe is None else probe
        # ARGV after the operation: recovery ms, reopen on an expired probe.
        self._fixed = (int(self._recovery * 1000), 0 if probe is None else 1)
        self._lease_ms = max(1, int(lease * 1000))
        self._observed: CircuitState = CircuitState.CLOSED
        self._local = CircuitBreaker(
            name,
            self._failure_threshold,
            self._recovery,
            success_threshold=self._success_threshold,
            half_open_max_calls=self._max_probes,
            probe_timeout_seconds=probe,
            clock=self._clock,
            is_failure=self._is_failure,
        )

    @property
    def store(self) -> RedisStore:
        """The shared store this breaker keeps its state in."""
        return self._store

    _async_admission = True

    def _admit(self, permit: Permit, *, raising: bool) -> CircuitOpenError | None:
        try:
            reply = self._run("admit", self._max_probes, self._lease_ms, local=True)
        except FallbackError:
            return self._admit_locally(permit, raising=raising)
        return self._admitted(permit, reply, raising=raising)

    async def _aadmit(self, permit: Permit, *, raising: bool) -> CircuitOpenError | None:
        try:
            reply = await self._arun("admit", self._max_probes, self._lease_ms)
        except FallbackError:
            return self._admit_locally(permit, raising=raising)
        return self._admitted(permit, reply, raising=raising)

    def _admit_locally(self, permit: Permit, *, raising: bool) -> CircuitOpenError | None:
        rejection = self._local._admit(permit, raising=raising)
        if permit._ticket >= 0:
            permit._ticket += _LOCAL_BASE
        return rejection

    def _admitted(self, permit: Permit, reply: Any, *, raising: bool) -> CircuitOpenError | None:
        """Read the admit step's reply into ``permit``; the rejection to raise, if any."""
        ticket, state = int(reply[0]), _state(reply[1])
        self._observe(_state(reply[3]), state)
        if ticket >= 0:
            permit._ticket = ticket
            return None
        if not raising:
            return None
        retry_ms = int(reply[2])
        error = CircuitOpenError(self._name, math.inf if retry_ms < 0 else retry_ms / 1000, state)
        cause = self._last_failure
        if cause is not None:
            error.__cause__ = cause
        return error

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
        if ticket >= _LOCAL_BASE:
            return self._local._settle(
                ticket - _LOCAL_BASE, outcome, exc, start, duration=duration, permit=permit
            )
        with self._lock:
            if permit is not None:
                if permit._settled:
                    return False
                permit._settled = True
            if outcome == _FAILURE:
                self._last_failure = exc
        try:
            reply = self._run(
                "settle",
                ticket,
                outcome,
                self._failure_threshold,
                self._success_threshold,
                local=False,
            )
        except FallbackError:
            return True  # unreachable: the outcome is lost; a probe's lease ends by itself
        self._observe(_state(reply[0]), _state(reply[1]))
        return True

    def _abandon(self, permit: Permit) -> None:
        ticket = permit._ticket
        if ticket < 0:
            return
        if ticket >= _LOCAL_BASE:
            permit._ticket = ticket - _LOCAL_BASE
            try:
                self._local._abandon(permit)
            finally:
                permit._ticket = ticket
            return
        with self._lock:
            settled = permit._settled
            permit._settled = True
        if settled:
            return  # its settlement gave the lease back already
        with contextlib.suppress(FallbackError):  # the lease ends by itself
            self._run("abandon", ticket, 1, local=False)

    @property
    def state(self) -> CircuitState:
        """The fleet's state (this worker's own while the store is unavailable, fail-open)."""
        try:
            reply = self._run("read", local=True)
        except FallbackError:
            return self._local.state
        state = _state(reply[1])
        self._observe(self._observed, state)
        return state

    def metrics(self) -> CircuitBreakerMetrics:
        """Return a snapshot of the fleet's breaker (the local stand-in's while unavailable)."""
        try:
            reply = self._run("read", local=True)
        except FallbackError:
            return self._local.metrics()
        state = _state(reply[1])
        self._observe(self._observed, state)
        successes, failures, ignored, rejections, probes = (int(v) for v in reply[3:8])
        retry_ms, opened_ms = int(reply[8]), int(reply[9])
        last = self._last_failure
        return CircuitBreakerMetrics(
            name=self._name,
            state=state,
            consecutive_failures=int(reply[2]),
            window_calls=0,
            window_failures=0,
            window_slow_calls=0,
            failure_rate=0.0,
            slow_call_rate=0.0,
            successes=successes,
            failures=failures,
            ignored=ignored,
            rejections=rejections,
            half_open_in_flight=probes,
            retry_after=math.inf if retry_ms < 0 else retry_ms / 1000,
            opened_at=opened_ms / 1000 if state in _OPENED else None,
            last_failure=None if last is None else type(last).__qualname__,
        )

    def reset(self) -> None:
        """Close the fleet's breaker (and this worker's stand-in)."""
        self._local.reset()
        with self._lock:
            self._last_failure = None
        reply = self._run("reset", local=True, policy=False)
        self._observe(_state(reply[0]), _state(reply[1]))

    def force_open(self) -> None:
        """Hold the fleet's breaker open until :meth:`reset` (and this worker's stand-in)."""
        self._local.force_open()
        reply = self._run("force_open", local=True, policy=False)
        self._observe(_state(reply[0]), _state(reply[1]))

    def __repr__(self) -> str:
        return f"CircuitBreaker({self._name!r}, store={self._store.prefix!r})"

    def _observe(self, old: CircuitState, new: CircuitState) -> None:
        """Tell the listeners of a change this worker caused or saw."""
        with self._lock:
            seen = self._observed
            self._observed = new
            if self._listeners:
                if old is not new and old is not seen:
                    self._pending.append((seen, old))
                if old is not new:
                    self._pending.append((old, new))
                elif seen is not new:
                    self._pending.append((seen, new))
        if self._pending:
            self._notify()

    def _run(self, op: str, *args: object, local: bool, policy: bool = True) -> Any:
        """Run one step; on failure raise the typed error (fail-closed) or :class:`FallbackError`.

        ``policy=False``: always raise the typed error (an operator's reset
        or force-open must not silently apply to this worker alone).
        """
        try:
            return self._store.run(BREAKER, self._keys, (op, *self._fixed, *args), self._what)
        except StoreUnavailableError:
            self._fall_back(local=local, policy=policy)

    async def _arun(self, op: str, *args: object) -> Any:
        """Async twin of :meth:`_run` for a decision."""
        try:
            return await self._store.arun(
                BREAKER, self._keys, (op, *self._fixed, *args), self._what
            )
        except StoreUnavailableError:
            self._fall_back(local=True, policy=True)

    def _fall_back(self, *, local: bool, policy: bool) -> NoReturn:
        """Re-raise the store's error or raise :class:`FallbackError` (inside an except block)."""
        if not policy or (local and self._store.breaker_policy == "fail_closed"):
            raise  # noqa: PLE0704
        raise FallbackError from None


_OPENED: Final = (CircuitState.OPEN, CircuitState.FORCED_OPEN)


def _state(value: object) -> CircuitState:
    return CircuitState(value.decode() if isinstance(value, bytes) else str(value))
