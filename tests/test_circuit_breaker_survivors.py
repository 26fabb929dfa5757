"""CircuitBreaker: behaviours a mutation run showed no other test pinned down.

Nested ``with`` blocks of one breaker, the async forms next to their sync
twins, a listener interrupting a probe's settlement, the clock readings a
window makes, and a clock that breaks part-way through a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from techrevati.runtime.circuit_breaker import (
    _ENTERED,
    CircuitBreaker,
    CircuitBreakerMetrics,
    CircuitState,
    SlidingWindow,
)
from tests.conftest import FakeClock

FORMS = ["call", "acall", "with", "async with"]


class ClockBrokeError(RuntimeError):
    """What a :class:`ReadingClock` raises when told to."""


class ReadingClock(FakeClock):
    """A FakeClock that counts its readings and raises on ``breaks`` after ``intact`` more."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0
        self.intact = 0
        self.breaks = 0

    def __call__(self) -> float:
        self.readings += 1
        if self.intact:
            self.intact -= 1
        elif self.breaks:
            self.breaks -= 1
            raise ClockBrokeError("clock broke")
        return self.now


def _outcomes(metrics: CircuitBreakerMetrics) -> tuple[int, int, int]:
    return metrics.successes, metrics.failures, metrics.ignored


def _run(breaker: CircuitBreaker, form: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` through ``breaker`` in one of its four forms (async ones in a fresh loop)."""

    async def afn() -> object:
        return fn()

    async def in_async_with() -> object:
        async with breaker:
            return fn()

    if form == "call":
        return breaker.call(fn)
    if form == "acall":
        return asyncio.run(breaker.acall(afn))
    if form == "with":
        with breaker:
            return fn()
    return asyncio.run(in_async_with())


def _fail() -> None:
    raise ConnectionError("down")


# -- nested blocks ----------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True], ids=["with", "async with"])
def test_nested_blocks_of_one_breaker_each_settle_their_own_permit(asynchronous: bool) -> None:
    breaker = CircuitBreaker("api", clock=FakeClock())

    def nested() -> None:
        with breaker as outer:
            with breaker as inner:
                assert _ENTERED.get() == (outer, inner)
            assert _ENTERED.get() == (outer,)
            assert inner.settled
            assert not outer.settled  # the inner exit leaves the outer block alone

    async def anested() -> None:
        async with breaker as outer:
            async with breaker as inner:
                assert _ENTERED.get() == (outer, inner)
            assert _ENTERED.get() == (outer,)
            assert inner.settled
            assert not outer.settled

    if asynchronous:
        asyncio.run(anested())
    else:
        nested()
    assert _ENTERED.get() == ()
    assert _outcomes(breaker.metrics()) == (2, 0, 0)


# -- a listener interrupting a probe's settlement ---------------------------------


@pytest.mark.parametrize("form", ["call", "acall"])
def test_an_interrupt_from_a_listener_as_a_probe_closes_counts_the_probe_once(form: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", 1, 5.0, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    clock.advance(5.0)

    def interrupt(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        if new is CircuitState.CLOSED:
            raise KeyboardInterrupt  # Ctrl-C while the listener runs

    breaker.add_listener(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(breaker, form, lambda: "ok")
    metrics = breaker.metrics()
    assert metrics.state is CircuitState.CLOSED
    assert _outcomes(metrics) == (1, 1, 0)  # the probe is a success, not also ignored


# -- clock readings ---------------------------------------------------------------


@pytest.mark.parametrize("form", ["call", "acall"])
def test_a_count_window_without_a_slow_call_limit_never_reads_the_clock(form: str) -> None:
    clock = ReadingClock()
    window = SlidingWindow(size=10, minimum_calls=10)  # failure rate only: no durations
    breaker = CircuitBreaker("api", window=window, clock=clock)
    for _ in range(3):
        assert _run(breaker, form, lambda: "ok") == "ok"
    with pytest.raises(ConnectionError):
        _run(breaker, form, _fail)
    assert clock.readings == 0
    assert _outcomes(breaker.metrics()) == (3, 1, 0)


# -- a clock that breaks part-way -------------------------------------------------


@pytest.mark.parametrize("form", ["call", "acall"])
def test_a_clock_breaking_as_a_closed_windowed_call_starts_runs_nothing_and_counts_nothing(
    form: str,
) -> None:
    clock = ReadingClock()
    window = SlidingWindow(size=10, minimum_calls=10, slow_call_duration_seconds=5.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    clock.breaks = 1  # the start time, the call's first reading
    ran: list[bool] = []
    with pytest.raises(ClockBrokeError, match="clock broke"):
        _run(breaker, form, lambda: ran.append(True))
    assert ran == []
    # No lease is taken while CLOSED, so a call that never started counts as nothing.
    assert _outcomes(breaker.metrics()) == (0, 0, 0)
    assert _run(breaker, form, lambda: "ok") == "ok"
    assert _outcomes(breaker.metrics()) == (1, 0, 0)


@pytest.mark.parametrize("form", FORMS)
def test_a_clock_breaking_as_a_failed_probe_ends_gives_the_probe_back_as_ignored(
    form: str,
) -> None:
    clock = ReadingClock()
    # A count window: only the end time of a timed call reads the clock as it settles.
    window = SlidingWindow(size=1, minimum_calls=1, slow_call_duration_seconds=5.0)
    breaker = CircuitBreaker("api", recovery_timeout_seconds=5.0, window=window, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_fail)
    clock.advance(5.0)
    clock.intact, clock.breaks = 2, 1  # admission and start time, then the end time breaks
    with pytest.raises(ClockBrokeError, match="clock broke"):
        _run(breaker, form, _fail)
    metrics = breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight) == (CircuitState.HALF_OPEN, 0)
    # The probe's failure was never recorded (so it did not reopen the breaker):
    # it is given back as ignored, not counted as a failure that changed nothing.
    assert _outcomes(metrics) == (0, 1, 1)
    assert _run(breaker, form, lambda: "ok") == "ok"  # the slot is free for the next probe
    assert breaker.metrics().state is CircuitState.CLOSED
