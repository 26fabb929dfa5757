"""A breaker's permits: one per admitted call, and the ones ``with breaker:`` blocks hold.

Private to :mod:`~techrevati.runtime.circuit_breaker`, which exports
:class:`Permit`. Every way of settling a permit runs inside a ``try`` whose
handler gives the probe slot back, so an interrupt (Ctrl-C) or a
cancellation part-way never strands it. A ``with breaker:`` block's permit
sits on :data:`_ENTERED`, this context's stack of open blocks, from the
block's entry to its exit; :func:`_exit_entered` and :func:`_leave` take it
off again however the exit ends.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

from techrevati.runtime._breaker_state import _FAILURE, _IGNORED, _SUCCESS
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

if TYPE_CHECKING:
    from techrevati.runtime.circuit_breaker import CircuitBreaker

__all__ = ["_ENTERED", "Permit", "_exit_entered", "_leave"]


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
        try:
            seconds = _duration(duration)
            return self._breaker._settle(
                self._ticket, _SUCCESS, None, self._start, duration=seconds, permit=self
            )
        except BaseException as exc:
            self._not_settled(exc)
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
        except BaseException as error:
            self._not_settled(error)
            raise

    def record_ignored(self) -> bool:
        """Give the permit back counting the call as neither success nor failure."""
        try:
            return self._breaker._settle(self._ticket, _IGNORED, None, None, permit=self)
        except BaseException:
            self._breaker._abandon(self)  # interrupted: the slot comes back all the same
            raise

    release = record_ignored

    def _not_settled(self, error: BaseException) -> None:
        """Give the slot back after a settlement raised ``error``, unless a bad duration did."""
        if not isinstance(error, InvalidValueError):  # a bad duration settled nothing
            self._breaker._abandon(self)  # interrupted: the probe slot still comes back

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._settled:
            return
        try:
            if exc is None:
                self.record_success()
            else:
                self.record_failure(exc)
        except BaseException:
            self._breaker._abandon(self)  # interrupted as the settlement started
            raise

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.__exit__(exc_type, exc, tb)
        except BaseException:
            self._breaker._abandon(self)  # interrupted as __exit__ started
            raise

    def __repr__(self) -> str:
        return f"Permit(breaker={self._breaker.name!r}, settled={self._settled})"


Permit.__module__ = "techrevati.runtime.circuit_breaker"


def _duration(value: float | None) -> float | None:
    """Return ``value`` if it is None or a number of seconds >= 0 (a call's measured duration)."""
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0.0
    ):
        raise InvalidValueError(f"duration must be a number >= 0 or None, got {value!r}")
    return value


_ENTERED: Final[ContextVar[tuple[Permit, ...]]] = ContextVar(
    "techrevati_circuit_breaker_entered", default=()
)
"""Permits of the ``with breaker:`` blocks open in this thread or task, innermost last."""


def _exit_entered(breaker: CircuitBreaker, exc: BaseException | None, found: list[Permit]) -> None:
    """Settle the innermost permit ``breaker`` entered in this context, and drop it.

    The permit goes into ``found`` before anything changes, so the caller's
    ``finally`` (:func:`_leave`) knows what to clean up.
    """
    stack = _ENTERED.get()
    index = _innermost(breaker, stack)
    if index < 0:
        raise TechrevatiError(
            f"circuit breaker {breaker.name!r}: __exit__ without a matching __enter__"
        )
    permit = stack[index]
    found.append(permit)
    _ENTERED.set(stack[:index] + stack[index + 1 :])
    permit.__exit__(None, exc, None)


def _leave(breaker: CircuitBreaker, found: list[Permit]) -> None:
    """Finish what an exit (or an entry) of a ``with breaker:`` block left undone.

    ``found`` holds the block's permit once the exit has found it; empty, the
    exit was cut short before that and changed nothing, so the permit is the
    breaker's innermost one. Unless that permit is settled (the exit went
    through), it is taken off this context's entered stack and its lease
    given back: nothing stays entered and no lease stays held.
    """
    if found and found[0]._settled:
        return
    stack = _ENTERED.get()
    if found:
        permit = found[0]
    else:
        index = _innermost(breaker, stack)
        if index < 0:
            return
        permit = stack[index]
    if permit in stack:
        _ENTERED.set(tuple(entered for entered in stack if entered is not permit))
    breaker._abandon(permit)


def _innermost(breaker: CircuitBreaker, stack: tuple[Permit, ...]) -> int:
    """Return the index of ``breaker``'s innermost permit on ``stack``, or -1."""
    for index in range(len(stack) - 1, -1, -1):
        if stack[index]._breaker is breaker:
            return index
    return -1
