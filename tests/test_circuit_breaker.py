"""CircuitBreaker: states, windows, probes as leases, forms, listeners, threads."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import pickle
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from techrevati.runtime.circuit_breaker import (
    _ENTERED,
    CircuitBreaker,
    CircuitBreakerMetrics,
    CircuitOpenError,
    CircuitState,
    Permit,
    SlidingWindow,
    is_dependency_failure,
)
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from tests.conftest import FakeClock

WAIT: float = 10.0  # generous bound on thread hand-offs; never reached when correct


class BadRequestError(Exception):
    """Shaped like an SDK's 400: not the dependency's fault."""

    status_code = 400


class UnavailableError(Exception):
    """Shaped like an SDK's 503."""

    status_code = 503


def _fail(exc: BaseException) -> Callable[[], None]:
    def fn() -> None:
        raise exc

    return fn


def _state(breaker: CircuitBreaker) -> CircuitState:
    """Read the state through a call, so mypy does not narrow the property between reads."""
    return breaker.state


def _ok() -> str:
    return "ok"


def _trip(breaker: CircuitBreaker, times: int | None = None) -> ConnectionError:
    """Fail ``times`` calls (default: the threshold); return the last failure."""
    last = ConnectionError("down")
    for _ in range(breaker.failure_threshold if times is None else times):
        last = ConnectionError("down")
        with pytest.raises(ConnectionError):
            breaker.call(_fail(last))
    return last


class BrokenClockError(RuntimeError):
    """What a :class:`BreakingClock` raises."""


class BreakingClock(FakeClock):
    """A FakeClock that raises on ``breaks`` readings after the next ``intact`` ones.

    A clock is caller code too: the breaker must survive it raising anywhere.
    """

    def __init__(self) -> None:
        super().__init__()
        self.intact = 0
        self.breaks = 0

    def __call__(self) -> float:
        if self.intact:
            self.intact -= 1
        elif self.breaks:
            self.breaks -= 1
            raise BrokenClockError("clock broke")
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads every microsecond so the hammer tests really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("api", failure_threshold=3, recovery_timeout_seconds=30.0, clock=clock)


# -- construction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name must be a non-empty str, got ''"),
        ({"failure_threshold": 0}, "failure_threshold must be an int >= 1, got 0"),
        ({"failure_threshold": True}, "failure_threshold must be an int >= 1, got True"),
        (
            {"recovery_timeout_seconds": -1},
            "recovery_timeout_seconds must be a finite number >= 0, got -1",
        ),
        (
            {"recovery_timeout_seconds": math.nan},
            "recovery_timeout_seconds must be a finite number >= 0, got nan",
        ),
        ({"success_threshold": 0}, "success_threshold must be an int >= 1, got 0"),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be an int >= 1, got 0"),
        ({"window": "count"}, "window must be a SlidingWindow or None, got 'count'"),
        ({"is_failure": 3}, "is_failure must be callable or None, got 3"),
        ({"exclude": (ValueError, 3)}, "exclude must hold exception types, got 3"),
        ({"exclude": [int]}, "exclude must hold exception types, got <class 'int'>"),
        ({"exclude": 3}, "exclude must be exception types, got 3"),
        (
            {"probe_timeout_seconds": 0},
            "probe_timeout_seconds must be a finite number > 0, got 0",
        ),
        (
            {"probe_timeout_seconds": math.inf},
            "probe_timeout_seconds must be a finite number > 0, got inf",
        ),
        ({"clock": 1.0}, "clock must be callable, got 1.0"),
        ({"listeners": [None]}, "listener must be callable, got None"),
    ],
)
def test_constructor_rejects_bad_values_naming_them(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"name": "api", **kwargs}
    with pytest.raises(InvalidValueError) as caught:
        CircuitBreaker(**args)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "calls"}, "kind must be 'count' or 'time', got 'calls'"),
        ({"size": 0}, "size must be an int >= 1, got 0"),
        (
            {"failure_rate_threshold": 0},
            "failure_rate_threshold must be a number in (0, 1], got 0",
        ),
        (
            {"failure_rate_threshold": 1.5},
            "failure_rate_threshold must be a number in (0, 1], got 1.5",
        ),
        (
            {"failure_rate_threshold": True},
            "failure_rate_threshold must be a number in (0, 1], got True",
        ),
        (
            {"failure_rate_threshold": "0.5"},
            "failure_rate_threshold must be a number in (0, 1], got '0.5'",
        ),
        (
            {"failure_rate_threshold": math.nan},
            "failure_rate_threshold must be a number in (0, 1], got nan",
        ),
        ({"minimum_calls": 0}, "minimum_calls must be an int >= 1, got 0"),
        (
            {"size": 5, "minimum_calls": 6},
            "minimum_calls must be <= size for a count window (it could never trip), "
            "got minimum_calls=6 with size=5",
        ),
        (
            {"slow_call_duration_seconds": -1.0},
            "slow_call_duration_seconds must be a finite number > 0, got -1.0",
        ),
        (
            {"slow_call_duration_seconds": 0},
            "slow_call_duration_seconds must be a finite number > 0, got 0",
        ),
        (
            {"slow_call_rate_threshold": 0.0},
            "slow_call_rate_threshold must be a number in (0, 1], got 0.0",
        ),
    ],
)
def test_sliding_window_rejects_bad_values_naming_them(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidValueError) as caught:
        SlidingWindow(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_sliding_window_accepts_its_boundaries() -> None:
    window = SlidingWindow(
        size=1,
        minimum_calls=1,
        failure_rate_threshold=1,
        slow_call_duration_seconds=1e-9,
        slow_call_rate_threshold=1.0,
    )
    assert (window.kind, window.size, window.minimum_calls) == ("count", 1, 1)
    assert SlidingWindow() == SlidingWindow(
        kind="count",
        size=100,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        slow_call_duration_seconds=None,
        slow_call_rate_threshold=1.0,
    )


def test_time_window_allows_minimum_calls_above_size() -> None:
    window = SlidingWindow(kind="time", size=5, minimum_calls=50)
    assert window.minimum_calls == 50


def test_exclude_accepts_a_single_type(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, exclude=KeyError, clock=clock)
    with pytest.raises(KeyError):
        breaker.call(_fail(KeyError("k")))
    assert _state(breaker) is CircuitState.CLOSED


def test_defaults_match_the_documented_ones() -> None:
    breaker = CircuitBreaker("api")
    assert breaker.name == "api"
    assert breaker.failure_threshold == 5
    assert breaker.recovery_timeout_seconds == 60.0
    assert breaker.window is None
    assert _state(breaker) is CircuitState.CLOSED
    assert repr(breaker) == "CircuitBreaker('api', state=closed)"


# -- consecutive mode -------------------------------------------------------------


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    _trip(breaker, 2)
    assert _state(breaker) is CircuitState.CLOSED
    _trip(breaker, 1)
    assert _state(breaker) is CircuitState.OPEN


def test_a_success_resets_the_streak(breaker: CircuitBreaker) -> None:
    _trip(breaker, 2)
    assert breaker.call(_ok) == "ok"
    _trip(breaker, 2)
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.metrics().consecutive_failures == 2


def test_open_rejects_without_calling_fn(breaker: CircuitBreaker) -> None:
    _trip(breaker)
    called: list[int] = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: called.append(1))
    assert called == []
    assert breaker.metrics().rejections == 1


def test_rejection_carries_name_retry_after_and_the_last_failure(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    last = _trip(breaker)
    clock.advance(12.5)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(_ok)
    error = info.value
    assert error.name == "api"
    assert error.retry_after == pytest.approx(17.5)
    assert error.state == CircuitState.OPEN
    assert error.__cause__ is last
    assert isinstance(error, TechrevatiError)
    assert str(error) == "circuit 'api' is open; retry after 17.500s"


def test_circuit_open_error_pickles_with_its_fields() -> None:
    error = CircuitOpenError("api", 2.5, CircuitState.HALF_OPEN)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.name, copy.retry_after, copy.state) == ("api", 2.5, CircuitState.HALF_OPEN)


def _frames(error: BaseException) -> int:
    """Frames in ``error``'s traceback, not counting mutmut's trampolines.

    Under mutation testing (tools/mutation.py) every call of a mutated
    function passes through one extra frame of mutmut's; it is not the library's.
    """
    return sum(
        "mutmut" not in Path(frame.filename).parts
        for frame in traceback.extract_tb(error.__traceback__)
    )


def test_each_rejection_is_a_fresh_error_and_tracebacks_do_not_grow(
    breaker: CircuitBreaker,
) -> None:
    last = _trip(breaker)
    cause_frames = _frames(last)
    seen: list[CircuitOpenError] = []
    depths: set[int] = set()
    for _ in range(100):
        try:
            breaker.call(_ok)
        except CircuitOpenError as exc:
            seen.append(exc)
            depths.add(_frames(exc))
    assert len({id(e) for e in seen}) == 100
    assert len(depths) == 1
    assert depths.pop() <= 4  # test, call, its locked path, admission
    assert _frames(last) == cause_frames


def test_exceptions_from_fn_pass_through_as_the_same_object(breaker: CircuitBreaker) -> None:
    original = ValueError("boom")

    def fn() -> None:
        raise original

    with pytest.raises(ValueError, match="boom") as info:
        breaker.call(fn)
    assert info.value is original
    assert traceback.extract_tb(original.__traceback__)[-1].name == "fn"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["call", "acall"])
def test_the_fast_path_adds_one_frame_to_the_traceback_of_fn(
    breaker: CircuitBreaker, asynchronous: bool
) -> None:
    def fn() -> None:
        raise BadRequestError("boom")

    async def afn() -> None:
        fn()

    def depth(run: Callable[..., object], *args: object) -> int:
        with pytest.raises(BadRequestError, match="boom") as caught:
            run(*args)
        return _frames(caught.value)

    through: list[int] = []
    if asynchronous:
        direct = depth(asyncio.run, afn())
        through.append(depth(asyncio.run, breaker.acall(afn)))
        breaker.reset()  # a later period takes the same path
        through.append(depth(asyncio.run, breaker.acall(afn)))
    else:
        direct = depth(fn)
        through.append(depth(breaker.call, fn))
        breaker.reset()
        through.append(depth(breaker.call, fn))
    assert through == [direct + 1, direct + 1]  # the breaker's one frame: call or acall
    assert breaker.metrics().ignored == 2  # a 400 is not the dependency's fault


def test_arguments_and_result_pass_through(breaker: CircuitBreaker) -> None:
    def fetch(url: str, *, timeout: int) -> str:
        return f"{url}:{timeout}"

    assert breaker.call(fetch, "u", timeout=10) == "u:10"


def test_state_turns_half_open_lazily_after_the_recovery_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _trip(breaker)
    clock.advance(29.999)
    assert _state(breaker) is CircuitState.OPEN
    clock.advance(0.001)
    assert _state(breaker) is CircuitState.HALF_OPEN


def test_probe_success_closes_and_failure_reopens(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    _trip(breaker)
    clock.advance(30)
    with pytest.raises(ConnectionError):
        breaker.call(_fail(ConnectionError("still down")))
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.metrics().opened_at == clock.now  # a fresh timer
    clock.advance(30)
    assert breaker.call(_ok) == "ok"
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.metrics().consecutive_failures == 0


def test_success_threshold_needs_that_many_probe_successes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, success_threshold=3, clock=clock)
    _trip(breaker)
    clock.advance(10)
    for _ in range(2):
        breaker.call(_ok)
        assert _state(breaker) is CircuitState.HALF_OPEN
    breaker.call(_ok)
    assert _state(breaker) is CircuitState.CLOSED


def test_half_open_admits_exactly_permitted_probes(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, half_open_max_calls=2, clock=clock)
    _trip(breaker)
    clock.advance(10)
    first, second = breaker.try_acquire(), breaker.try_acquire()
    assert first is not None
    assert second is not None
    assert breaker.try_acquire() is None
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(_ok)
    assert info.value.retry_after == 0.0
    assert info.value.state == CircuitState.HALF_OPEN
    assert "half-open" in str(info.value)
    assert breaker.metrics().half_open_in_flight == 2
    first.record_success()
    assert _state(breaker) is CircuitState.CLOSED
    assert second.record_success()  # a late probe: counted, moves nothing
    assert breaker.metrics().successes == 2


def test_ignored_exception_releases_the_permit_and_counts_neither(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, exclude=(KeyError,), clock=clock)
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(KeyError):
        breaker.call(_fail(KeyError("k")))
    before = breaker.metrics()
    assert before.state == CircuitState.HALF_OPEN
    assert before.half_open_in_flight == 0
    assert (before.successes, before.failures, before.ignored) == (0, 1, 1)
    assert breaker.call(_ok) == "ok"  # the permit came back for a real probe
    assert _state(breaker) is CircuitState.CLOSED


def test_not_the_dependencys_fault_never_trips(breaker: CircuitBreaker) -> None:
    for _ in range(50):
        with pytest.raises(BadRequestError):
            breaker.call(_fail(BadRequestError()))
    metrics = breaker.metrics()
    assert metrics.state == CircuitState.CLOSED
    assert (metrics.failures, metrics.ignored, metrics.consecutive_failures) == (0, 50, 0)
    assert metrics.last_failure is None


def test_ignored_calls_do_not_break_a_streak(breaker: CircuitBreaker) -> None:
    _trip(breaker, 2)
    with pytest.raises(BadRequestError):
        breaker.call(_fail(BadRequestError()))
    _trip(breaker, 1)
    assert _state(breaker) is CircuitState.OPEN


def test_custom_is_failure_decides(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "api", 1, is_failure=lambda e: isinstance(e, BadRequestError), clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(_fail(ConnectionError()))
    assert _state(breaker) is CircuitState.CLOSED
    with pytest.raises(BadRequestError):
        breaker.call(_fail(BadRequestError()))
    assert _state(breaker) is CircuitState.OPEN


def test_raising_is_failure_counts_a_failure_logs_and_keeps_the_error(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def predicate(exc: Exception) -> bool:
        raise RuntimeError("predicate bug")

    breaker = CircuitBreaker("api", 1, is_failure=predicate, clock=clock)
    original = ValueError("x")
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.circuit_breaker"),
        pytest.raises(ValueError, match="x") as info,
    ):
        breaker.call(_fail(original))
    assert info.value is original
    assert _state(breaker) is CircuitState.OPEN
    assert [record.getMessage() for record in caplog.records] == [
        "circuit breaker 'api': is_failure raised on ValueError; counting it as a failure"
    ]
    assert caplog.records[0].exc_info is not None


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exceptions_release_a_probe_and_count_neither(
    clock: FakeClock, exc_type: type[BaseException]
) -> None:
    breaker = CircuitBreaker("api", 1, 10, clock=clock)
    _trip(breaker)
    clock.advance(10)
    with pytest.raises(exc_type):
        breaker.call(_fail(exc_type()))
    metrics = breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight, metrics.ignored) == (
        CircuitState.HALF_OPEN,
        0,
        1,
    )
    assert breaker.try_acquire() is not None


def test_a_hung_probe_expires_and_reopens(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, probe_timeout_seconds=5, clock=clock)
    _trip(breaker)
    clock.advance(10)
    hung = breaker.try_acquire()
    assert hung is not None
    clock.advance(4.9)
    assert _state(breaker) is CircuitState.HALF_OPEN
    clock.advance(0.1)
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.metrics().opened_at == clock.now
    clock.advance(10)
    assert _state(breaker) is CircuitState.HALF_OPEN
    assert hung.record_success()  # too late to count as a probe
    assert _state(breaker) is CircuitState.HALF_OPEN
    assert breaker.metrics().half_open_in_flight == 0


def test_late_results_from_an_earlier_period_do_not_move_the_state(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    stale = [breaker.try_acquire() for _ in range(3)]
    _trip(breaker)
    clock.advance(30)
    breaker.call(_ok)  # probe closes it: a new closed period
    for permit in stale:
        assert permit is not None
        permit.record_failure(ConnectionError("late"))
    metrics = breaker.metrics()
    assert metrics.state == CircuitState.CLOSED
    assert metrics.consecutive_failures == 0
    assert metrics.failures == 6  # lifetime counters still see them


def test_a_late_success_does_not_reset_a_newer_streak(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    def long_call() -> str:
        # While this call runs (no lock is held), the breaker opens, recovers
        # and starts a new streak; the late success belongs to the old period.
        _trip(breaker)
        clock.advance(30)
        breaker.call(_ok)
        _trip(breaker, 2)
        return "late"

    assert breaker.call(long_call) == "late"
    assert breaker.metrics().consecutive_failures == 2

    async def along_call() -> str:
        return long_call()

    breaker.reset()
    assert asyncio.run(breaker.acall(along_call)) == "late"
    assert breaker.metrics().consecutive_failures == 2


def test_force_open_rejects_until_reset(breaker: CircuitBreaker, clock: FakeClock) -> None:
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker.add_listener(lambda b, old, new: changes.append((old, new)))
    breaker.force_open()
    breaker.force_open()  # idempotent
    clock.advance(10_000)
    assert _state(breaker) is CircuitState.FORCED_OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(_ok)
    assert info.value.retry_after == math.inf
    assert info.value.__cause__ is None
    assert "forced open until reset()" in str(info.value)
    assert breaker.try_acquire() is None
    breaker.reset()
    assert breaker.call(_ok) == "ok"
    assert changes == [
        (CircuitState.CLOSED, CircuitState.FORCED_OPEN),
        (CircuitState.FORCED_OPEN, CircuitState.CLOSED),
    ]


def test_reset_closes_and_forgets_but_keeps_lifetime_counters(breaker: CircuitBreaker) -> None:
    _trip(breaker)
    breaker.reset()
    metrics = breaker.metrics()
    assert metrics.state == CircuitState.CLOSED
    assert (metrics.consecutive_failures, metrics.opened_at, metrics.last_failure) == (
        0,
        None,
        None,
    )
    assert metrics.failures == 3
    assert breaker.last_failure is None


def test_zero_recovery_timeout_probes_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 0, clock=clock)
    _trip(breaker)
    assert _state(breaker) is CircuitState.HALF_OPEN


# -- metrics ----------------------------------------------------------------------


def test_metrics_snapshot_is_frozen_and_json_serialisable(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.call(_ok)
    last = _trip(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.call(_ok)
    metrics = breaker.metrics()
    assert isinstance(metrics, CircuitBreakerMetrics)
    assert metrics.calls == 4
    assert (metrics.successes, metrics.failures, metrics.rejections) == (1, 3, 1)
    assert metrics.opened_at == clock.now
    assert metrics.retry_after == 30.0
    assert metrics.last_failure == "ConnectionError"
    assert breaker.last_failure is last
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["state"] == "open"
    assert data["calls"] == 4
    with pytest.raises(AttributeError):
        metrics.failures = 0  # type: ignore[misc]


def test_metrics_to_dict_names_every_field_with_its_value(clock: FakeClock) -> None:
    window = SlidingWindow(size=8, minimum_calls=8, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker(
        "api", window=window, exclude=KeyError, half_open_max_calls=2, clock=clock
    )

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    breaker.call(_ok)
    breaker.call(slow)
    with pytest.raises(KeyError):
        breaker.call(_fail(KeyError("k")))
    _trip(breaker, 2)
    data = breaker.metrics().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "name": "api",
        "state": "closed",
        "consecutive_failures": 2,
        "window_calls": 4,
        "window_failures": 2,
        "window_slow_calls": 1,
        "failure_rate": 0.5,
        "slow_call_rate": 0.25,
        "calls": 5,
        "successes": 2,
        "failures": 2,
        "ignored": 1,
        "rejections": 0,
        "half_open_in_flight": 0,
        "retry_after": 0.0,
        "opened_at": None,
        "last_failure": "ConnectionError",
    }
    breaker.force_open()
    assert breaker.try_acquire() is None
    forced = breaker.metrics().to_dict()
    assert (forced["state"], forced["rejections"]) == ("forced_open", 1)
    assert (forced["opened_at"], forced["retry_after"]) == (clock.now, None)
    assert (forced["window_calls"], forced["consecutive_failures"]) == (4, 2)


def test_metrics_retry_after_is_null_in_json_when_forced(breaker: CircuitBreaker) -> None:
    breaker.force_open()
    assert breaker.metrics().retry_after == math.inf
    assert breaker.metrics().to_dict()["retry_after"] is None


# -- sliding windows --------------------------------------------------------------


def test_count_window_waits_for_minimum_calls(clock: FakeClock) -> None:
    window = SlidingWindow(size=10, minimum_calls=4, failure_rate_threshold=0.5)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    _trip(breaker, 3)
    assert _state(breaker) is CircuitState.CLOSED
    _trip(breaker, 1)
    assert _state(breaker) is CircuitState.OPEN
    metrics = breaker.metrics()
    assert (metrics.window_calls, metrics.window_failures, metrics.failure_rate) == (4, 4, 1.0)


def test_count_window_trips_on_the_rate_not_a_streak(clock: FakeClock) -> None:
    window = SlidingWindow(size=4, minimum_calls=4, failure_rate_threshold=0.5)
    breaker = CircuitBreaker("api", failure_threshold=1, window=window, clock=clock)
    for _ in range(4):
        breaker.call(_ok)
    _trip(breaker, 1)  # evicts one success: 1 failure in 4
    assert _state(breaker) is CircuitState.CLOSED
    assert breaker.metrics().failure_rate == 0.25
    _trip(breaker, 1)  # 2 failures in the last 4: 0.5
    assert _state(breaker) is CircuitState.OPEN


def test_count_window_evicts_slow_and_failed_outcomes_by_their_own_counts(
    clock: FakeClock,
) -> None:
    window = SlidingWindow(
        size=3,
        minimum_calls=3,
        failure_rate_threshold=1.0,
        slow_call_duration_seconds=1.0,
        slow_call_rate_threshold=1.0,
    )
    breaker = CircuitBreaker("api", window=window, clock=clock)

    def outcome(*, slow: bool, failed: bool) -> Callable[[], str]:
        def fn() -> str:
            if slow:
                clock.advance(1.5)
            if failed:
                raise ConnectionError("down")
            return "ok"

        return fn

    def counts() -> tuple[int, int, int]:
        metrics = breaker.metrics()
        return (metrics.window_calls, metrics.window_failures, metrics.window_slow_calls)

    steps = [
        # (slow, failed) of the new call -> (calls, failures, slow) of the window after it
        ((True, False), (1, 0, 1)),
        ((False, True), (2, 1, 1)),
        ((True, True), (3, 2, 2)),
        ((False, False), (3, 2, 1)),  # evicts the slow success
        ((False, False), (3, 1, 1)),  # evicts the fast failure
        ((False, False), (3, 0, 0)),  # evicts the slow failure
        ((True, False), (3, 0, 1)),
        ((False, False), (3, 0, 1)),
    ]
    for (slow, failed), expected in steps:
        try:
            breaker.call(outcome(slow=slow, failed=failed))
        except ConnectionError:
            assert failed
        assert counts() == expected, (slow, failed)
        assert _state(breaker) is CircuitState.CLOSED


def test_count_window_evicts_the_oldest_outcomes(clock: FakeClock) -> None:
    window = SlidingWindow(size=3, minimum_calls=3, failure_rate_threshold=1.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    _trip(breaker, 2)
    breaker.call(_ok)
    for _ in range(3):
        breaker.call(_ok)
    metrics = breaker.metrics()
    assert (metrics.window_calls, metrics.window_failures) == (3, 0)


def test_time_window_forgets_calls_older_than_its_size(clock: FakeClock) -> None:
    window = SlidingWindow(kind="time", size=10, minimum_calls=3, failure_rate_threshold=0.5)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    _trip(breaker, 2)
    clock.advance(10)  # those two fall out of the 10-second window
    assert breaker.metrics().window_calls == 0
    _trip(breaker, 1)
    breaker.call(_ok)
    assert _state(breaker) is CircuitState.CLOSED
    clock.advance(9)
    _trip(breaker, 1)  # 2 of 3 failed within 10 s
    assert _state(breaker) is CircuitState.OPEN


def test_time_window_keeps_partial_buckets_while_sliding(clock: FakeClock) -> None:
    clock.now = 100.0
    window = SlidingWindow(kind="time", size=3, minimum_calls=100)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    for _ in range(4):
        breaker.call(_ok)
        clock.advance(1)
    assert breaker.metrics().window_calls == 2  # now 104: seconds 102..104 hold two calls
    clock.advance(1000)
    assert breaker.metrics().window_calls == 0


def test_slow_calls_trip_the_breaker_without_sleeping(clock: FakeClock) -> None:
    window = SlidingWindow(
        size=5, minimum_calls=3, slow_call_duration_seconds=2.0, slow_call_rate_threshold=0.7
    )
    breaker = CircuitBreaker("api", window=window, clock=clock)

    def slow() -> str:
        clock.advance(2.5)
        return "late"

    breaker.call(slow)
    breaker.call(_ok)
    assert breaker.call(slow) == "late"
    assert _state(breaker) is CircuitState.CLOSED  # 2 of 3 slow: 0.67 < 0.7
    metrics = breaker.metrics()
    assert (metrics.window_calls, metrics.window_slow_calls) == (3, 2)
    breaker.call(slow)  # 3 of 4 slow: 0.75
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.metrics().failures == 0


def test_slow_call_rate_trip_happens_on_the_call_that_crosses(clock: FakeClock) -> None:
    window = SlidingWindow(
        size=3, minimum_calls=3, slow_call_duration_seconds=1.0, slow_call_rate_threshold=0.6
    )
    breaker = CircuitBreaker("api", window=window, clock=clock)

    def slow() -> None:
        clock.advance(1.0)  # exactly the threshold counts as slow

    breaker.call(slow)
    breaker.call(_ok)
    assert _state(breaker) is CircuitState.CLOSED
    breaker.call(slow)
    assert _state(breaker) is CircuitState.OPEN


def _probe_taking(breaker: CircuitBreaker, clock: FakeClock, form: str, seconds: float) -> None:
    """Run one successful probe through ``form`` that takes ``seconds`` on ``clock``."""

    def work(x: int, *, by: int) -> int:
        clock.advance(seconds)
        return x * by

    async def awork(x: int, *, by: int) -> int:
        return work(x, by=by)

    async def ablock() -> None:
        async with breaker:
            work(1, by=1)

    if form == "call":
        assert breaker.call(work, 2, by=3) == 6
    elif form == "acall":
        assert asyncio.run(breaker.acall(awork, 2, by=3)) == 6
    elif form == "with":
        with breaker:
            work(1, by=1)
    elif form == "async with":
        asyncio.run(ablock())
    else:
        with breaker.acquire():
            work(1, by=1)


@pytest.mark.parametrize("form", ["call", "acall", "with", "async with", "permit"])
def test_a_slow_probe_reopens(clock: FakeClock, form: str) -> None:
    window = SlidingWindow(size=2, minimum_calls=1, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker("api", recovery_timeout_seconds=5, window=window, clock=clock)
    _trip(breaker, 1)
    clock.advance(5)
    _probe_taking(breaker, clock, form, 3.0)
    assert _state(breaker) is CircuitState.OPEN
    assert breaker.metrics().opened_at == clock.now
    clock.advance(5)
    _probe_taking(breaker, clock, form, 0.5)
    assert _state(breaker) is CircuitState.CLOSED
    metrics = breaker.metrics()
    assert metrics.window_calls == 0  # a fresh window after closing
    assert (metrics.successes, metrics.failures, metrics.half_open_in_flight) == (2, 1, 0)


def test_a_slow_probe_settled_by_hand_reopens(clock: FakeClock) -> None:
    window = SlidingWindow(size=2, minimum_calls=1, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker("api", recovery_timeout_seconds=5, window=window, clock=clock)
    _trip(breaker, 1)
    clock.advance(5)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record_success(duration=3.0)
    assert _state(breaker) is CircuitState.OPEN
    clock.advance(5)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record_success(duration=0.5)
    assert _state(breaker) is CircuitState.CLOSED


def test_ignored_calls_stay_out_of_the_window(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", window=SlidingWindow(size=5, minimum_calls=1), clock=clock)
    with pytest.raises(BadRequestError):
        breaker.call(_fail(BadRequestError()))
    assert breaker.metrics().window_calls == 0


# -- forms: decorator, context manager, async, permits ----------------------------


def test_decorator_keeps_name_signature_and_guards(breaker: CircuitBreaker) -> None:
    @breaker
    def add(a: int, b: int = 2) -> int:
        """Add."""
        return a + b

    assert add(1) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Add."
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 2) -> 'int'"
    _trip(breaker)
    with pytest.raises(CircuitOpenError):
        add(1)


def test_decorating_a_coroutine_function_gives_a_coroutine_function(
    breaker: CircuitBreaker,
) -> None:
    @breaker.decorate
    async def fetch(x: int) -> int:
        return x * 2

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(21)) == 42
    assert breaker.metrics().successes == 1

    async def scaled(x: int, *, by: int) -> int:
        """Scale."""
        return x * by

    wrapped = breaker(scaled)
    assert (wrapped.__name__, wrapped.__doc__) == ("scaled", "Scale.")
    assert wrapped.__wrapped__ is scaled  # type: ignore[attr-defined]
    assert str(inspect.signature(wrapped)) == "(x: 'int', *, by: 'int') -> 'int'"
    assert asyncio.run(wrapped(3, by=4)) == 12
    assert breaker.metrics().successes == 2


def test_decorating_a_generator_function_is_refused(breaker: CircuitBreaker) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    for fn in (numbers, anumbers):
        with pytest.raises(InvalidValueError) as caught:
            breaker(fn)
        assert str(caught.value) == (
            f"fn must not be a generator function, got {fn!r}; "
            "guard the code that consumes it with `with breaker:` instead"
        )
    with pytest.raises(InvalidValueError, match="fn must be callable, got 3"):
        breaker.decorate(3)  # type: ignore[arg-type]


def test_with_block_checks_the_open_state(breaker: CircuitBreaker) -> None:
    _trip(breaker)
    ran: list[int] = []
    with pytest.raises(CircuitOpenError), breaker:
        ran.append(1)
    assert ran == []


def test_with_block_records_success_and_failure(breaker: CircuitBreaker) -> None:
    with breaker as permit:
        assert isinstance(permit, Permit)
    with pytest.raises(ConnectionError), breaker:
        raise ConnectionError("down")
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures) == (1, 1)


def test_nested_with_blocks_of_two_breakers_settle_their_own(clock: FakeClock) -> None:
    outer = CircuitBreaker("outer", 1, clock=clock)
    inner = CircuitBreaker("inner", 1, clock=clock)

    def work() -> None:
        with outer:
            with inner:
                pass
            raise ConnectionError("outer fails after inner succeeded")

    with pytest.raises(ConnectionError):
        work()
    assert inner.metrics().successes == 1
    assert _state(outer) is CircuitState.OPEN


@pytest.mark.parametrize("asynchronous", [False, True], ids=["with", "async with"])
def test_a_failed_entry_leaves_the_enclosing_block_of_the_same_breaker_entered(
    asynchronous: bool,
) -> None:
    clock = BreakingClock()
    window = SlidingWindow(size=10, minimum_calls=10, slow_call_duration_seconds=5.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)

    def inner() -> None:
        with pytest.raises(BrokenClockError), breaker:
            raise AssertionError("the block ran although its entry failed")

    async def ainner() -> None:
        with pytest.raises(BrokenClockError):
            async with breaker:
                raise AssertionError("the block ran although its entry failed")

    async def amain() -> None:
        async with breaker as outer:
            clock.breaks = 1  # the inner entry's reading of its start time
            await ainner()
            assert _ENTERED.get() == (outer,)

    if asynchronous:
        asyncio.run(amain())
    else:
        with breaker as outer:
            clock.breaks = 1
            inner()
            assert _ENTERED.get() == (outer,)
    assert _ENTERED.get() == ()
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.ignored) == (1, 0, 1)


@pytest.mark.parametrize("form", ["acquire", "try_acquire", "call", "acall", "with", "async with"])
def test_a_clock_breaking_as_a_probe_is_admitted_gives_the_lease_back(form: str) -> None:
    clock = BreakingClock()
    window = SlidingWindow(size=1, minimum_calls=1, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker("api", recovery_timeout_seconds=5, window=window, clock=clock)
    _trip(breaker, 1)
    clock.advance(5)
    clock.intact, clock.breaks = 1, 1  # admission reads the clock, then the start time breaks

    def enter() -> None:
        with breaker:
            raise AssertionError("the block ran although its entry failed")

    async def aenter() -> None:
        async with breaker:
            raise AssertionError("the block ran although its entry failed")

    async def never() -> str:
        raise AssertionError("the call ran although its admission failed")

    admit: Callable[[], object] = {
        "acquire": breaker.acquire,
        "try_acquire": breaker.try_acquire,
        "call": lambda: breaker.call(_ok),
        "acall": lambda: asyncio.run(breaker.acall(never)),
        "with": enter,
        "async with": lambda: asyncio.run(aenter()),
    }[form]
    with pytest.raises(BrokenClockError, match="clock broke"):
        admit()
    assert _ENTERED.get() == ()
    metrics = breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight) == (CircuitState.HALF_OPEN, 0)
    # The admitted probe that never ran is given back as ignored.
    assert (metrics.successes, metrics.failures, metrics.ignored) == (0, 1, 1)
    assert breaker.call(_ok) == "ok"  # the slot is free for the next probe
    assert _state(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize(
    "form", ["record_success", "record_failure", "record_ignored", "with", "async with"]
)
def test_a_clock_breaking_as_a_probe_settles_still_frees_its_slot(form: str) -> None:
    clock = BreakingClock()
    # A time window reads the clock on every settlement, even an ignored one.
    window = SlidingWindow(kind="time", size=10, minimum_calls=1, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker("api", recovery_timeout_seconds=5, window=window, clock=clock)
    _trip(breaker, 1)
    clock.advance(5)
    permit = breaker.acquire()
    assert breaker.metrics().half_open_in_flight == 1
    clock.breaks = 1  # the settlement's reading of the end time

    def settle_in_with() -> None:
        with permit:
            pass

    async def settle_in_async_with() -> None:
        async with permit:
            pass

    settle: Callable[[], object] = {
        "record_success": permit.record_success,
        "record_failure": lambda: permit.record_failure(ConnectionError("down")),
        "record_ignored": permit.record_ignored,
        "with": settle_in_with,
        "async with": lambda: asyncio.run(settle_in_async_with()),
    }[form]
    with pytest.raises(BrokenClockError, match="clock broke"):
        settle()
    assert permit.settled
    metrics = breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight) == (CircuitState.HALF_OPEN, 0)
    assert (metrics.successes, metrics.failures, metrics.ignored) == (0, 1, 1)
    assert not permit.record_success()  # given back as ignored: settled once
    assert breaker.call(_ok) == "ok"  # the slot is free for the next probe
    assert _state(breaker) is CircuitState.CLOSED


def test_blocks_of_different_breakers_may_close_in_any_order(clock: FakeClock) -> None:
    first = CircuitBreaker("first", 1, clock=clock)
    second = CircuitBreaker("second", 1, clock=clock)
    third = CircuitBreaker("third", 1, clock=clock)
    one, two, three = first.__enter__(), second.__enter__(), third.__enter__()
    assert _ENTERED.get() == (one, two, three)
    second.__exit__(None, None, None)  # the middle block closes first
    assert _ENTERED.get() == (one, three)
    first.__exit__(None, None, None)  # then the outermost
    assert _ENTERED.get() == (three,)
    third.__exit__(ConnectionError, ConnectionError("down"), None)
    assert _ENTERED.get() == ()
    assert [b.metrics().successes for b in (first, second, third)] == [1, 1, 0]
    assert _state(third) is CircuitState.OPEN


def test_exit_without_enter_is_an_error(breaker: CircuitBreaker) -> None:
    with pytest.raises(TechrevatiError, match="__exit__ without a matching __enter__"):
        breaker.__exit__(None, None, None)


def test_async_with_block_records_outcomes(breaker: CircuitBreaker) -> None:
    async def main() -> None:
        async with breaker:
            await asyncio.sleep(0)
        with pytest.raises(ConnectionError):
            async with breaker:
                raise ConnectionError("down")

    asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures) == (1, 1)


def test_acall_shares_bookkeeping_with_call(breaker: CircuitBreaker) -> None:
    async def fetch(x: int, *, scale: int) -> int:
        await asyncio.sleep(0)
        return x * scale

    async def broken() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        assert await breaker.acall(fetch, 2, scale=3) == 6
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await breaker.acall(broken)
        with pytest.raises(CircuitOpenError):
            await breaker.acall(fetch, 1, scale=1)

    asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.rejections) == (1, 3, 1)


def test_acall_in_window_mode_measures_durations(clock: FakeClock) -> None:
    window = SlidingWindow(size=2, minimum_calls=2, slow_call_duration_seconds=1.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)

    async def slow() -> str:
        clock.advance(1.5)
        return "late"

    async def main() -> None:
        assert await breaker.acall(slow) == "late"
        assert await breaker.acall(slow) == "late"
        with pytest.raises(CircuitOpenError):
            await breaker.acall(slow)

    asyncio.run(main())
    assert breaker.metrics().window_slow_calls == 2


def test_cancelling_a_probe_task_releases_its_permit(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, clock=clock)
    _trip(breaker)
    clock.advance(10)

    async def main() -> None:
        entered = asyncio.Event()
        never = asyncio.Event()

        async def probe() -> None:
            entered.set()
            await never.wait()

        task = asyncio.create_task(breaker.acall(probe))
        await entered.wait()
        assert breaker.try_acquire() is None  # the probe holds the only permit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight) == (CircuitState.HALF_OPEN, 0)
    assert (metrics.successes, metrics.failures, metrics.ignored) == (0, 1, 1)
    assert breaker.call(_ok) == "ok"
    assert _state(breaker) is CircuitState.CLOSED


def test_try_acquire_returns_none_when_open_and_counts_it(breaker: CircuitBreaker) -> None:
    _trip(breaker)
    assert breaker.try_acquire() is None
    assert breaker.metrics().rejections == 1


def test_acquire_raises_when_open(breaker: CircuitBreaker) -> None:
    _trip(breaker)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_permit_settles_once(breaker: CircuitBreaker) -> None:
    permit = breaker.try_acquire()
    assert permit is not None
    assert permit.breaker is breaker
    assert repr(permit) == "Permit(breaker='api', settled=False)"
    assert permit.record_success()
    assert permit.settled
    assert not permit.record_failure()
    assert not permit.release()
    assert (breaker.metrics().successes, breaker.metrics().failures) == (1, 0)
    assert repr(permit) == "Permit(breaker='api', settled=True)"


def test_permit_record_failure_applies_the_predicate(breaker: CircuitBreaker) -> None:
    for exc in [BadRequestError(), UnavailableError(), None]:
        permit = breaker.acquire()
        assert permit.record_failure(exc)
    metrics = breaker.metrics()
    assert (metrics.ignored, metrics.failures) == (1, 2)


@pytest.mark.parametrize("bad", [-1, math.nan, "1", True])
def test_permit_rejects_a_bad_duration_and_stays_unsettled(
    breaker: CircuitBreaker, bad: object
) -> None:
    permit = breaker.acquire()
    message = f"duration must be a number >= 0 or None, got {bad!r}"
    settlements: list[Callable[[object], object]] = [
        permit.record_success,  # type: ignore[list-item]
        lambda duration: permit.record_failure(None, duration),  # type: ignore[arg-type]
    ]
    for settle in settlements:
        with pytest.raises(InvalidValueError) as caught:
            settle(bad)
        assert str(caught.value) == message
        assert not permit.settled
    assert permit.record_failure(ConnectionError("down"), duration=0.0)
    assert breaker.metrics().failures == 1


def test_a_given_duration_decides_whether_a_settled_call_was_slow(clock: FakeClock) -> None:
    window = SlidingWindow(size=4, minimum_calls=4, slow_call_duration_seconds=2.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)

    def slow_calls() -> int:
        return breaker.metrics().window_slow_calls

    breaker.acquire().record_failure(ConnectionError("down"), duration=2.0)
    assert slow_calls() == 1
    breaker.acquire().record_failure(ConnectionError("down"), duration=1.9)
    assert slow_calls() == 1
    breaker.acquire().record_success(duration=5.0)
    assert slow_calls() == 2
    late = breaker.acquire()
    clock.advance(10.0)  # the time since the grant is ignored when a duration is given
    late.record_failure(ConnectionError("down"), duration=0.0)
    metrics = breaker.metrics()
    assert (metrics.window_calls, metrics.window_failures, metrics.window_slow_calls) == (4, 3, 2)


@pytest.mark.parametrize("form", ["try_acquire", "acquire"])
def test_permits_of_the_fast_path_count_toward_the_streak(
    breaker: CircuitBreaker, form: str
) -> None:
    get = breaker.acquire if form == "acquire" else breaker.try_acquire
    for _ in range(2):
        permit = get()
        assert permit is not None
        assert permit.record_failure(ConnectionError("down"))
    assert breaker.metrics().consecutive_failures == 2
    assert _state(breaker) is CircuitState.CLOSED
    permit = get()
    assert permit is not None
    assert permit.record_failure(ConnectionError("down"))
    assert _state(breaker) is CircuitState.OPEN


def test_permit_as_context_manager_settles_itself(breaker: CircuitBreaker) -> None:
    with breaker.acquire():
        pass
    with pytest.raises(ConnectionError), breaker.acquire():
        raise ConnectionError("down")
    with breaker.acquire() as permit:
        permit.record_ignored()  # settled inside: exit records nothing more
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.ignored) == (1, 1, 1)


def test_permit_async_context_manager(breaker: CircuitBreaker) -> None:
    async def main() -> None:
        permit = breaker.try_acquire()
        assert permit is not None
        async with permit:
            await asyncio.sleep(0)
        assert permit.settled
        for exc in (ConnectionError("down"), BadRequestError()):
            with pytest.raises(type(exc)):
                async with breaker.acquire():
                    raise exc

    asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.ignored) == (1, 1, 1)
    assert metrics.consecutive_failures == 1
    assert metrics.last_failure == "ConnectionError"


def test_permit_without_duration_uses_the_time_since_granted(clock: FakeClock) -> None:
    window = SlidingWindow(size=1, minimum_calls=1, slow_call_duration_seconds=2.0)
    breaker = CircuitBreaker("api", window=window, clock=clock)
    permit = breaker.acquire()
    clock.advance(2.0)
    permit.record_success()
    assert _state(breaker) is CircuitState.OPEN


# -- listeners --------------------------------------------------------------------


def test_listeners_see_every_change_in_order(clock: FakeClock) -> None:
    changes: list[tuple[str, CircuitState, CircuitState]] = []

    def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        changes.append((b.name, old, new))

    breaker = CircuitBreaker("api", 1, 10, clock=clock, listeners=[listener])
    _trip(breaker)
    clock.advance(10)
    breaker.call(_ok)
    assert changes == [
        ("api", CircuitState.CLOSED, CircuitState.OPEN),
        ("api", CircuitState.OPEN, CircuitState.HALF_OPEN),
        ("api", CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]


def test_a_raising_listener_is_logged_and_isolated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[CircuitState] = []

    def bad(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("api", 1, clock=clock, listeners=[bad])
    breaker.add_listener(lambda b, old, new: seen.append(new))
    original = ConnectionError("down")
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.circuit_breaker"),
        pytest.raises(ConnectionError) as info,
    ):
        breaker.call(_fail(original))
    assert info.value is original
    assert _state(breaker) is CircuitState.OPEN
    assert seen == [CircuitState.OPEN]
    assert [record.getMessage() for record in caplog.records] == [
        f"circuit breaker 'api': state listener {bad!r} failed on closed -> open"
    ]
    assert caplog.records[0].exc_info is not None


def test_remove_listener(breaker: CircuitBreaker) -> None:
    seen: list[CircuitState] = []

    def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        seen.append(new)

    breaker.add_listener(listener)
    breaker.remove_listener(listener)
    _trip(breaker)
    assert seen == []
    with pytest.raises(InvalidValueError) as caught:
        breaker.remove_listener(listener)
    assert str(caught.value) == f"listener was not added, got {listener!r}"


def test_a_listener_may_use_the_breaker_without_deadlock(clock: FakeClock) -> None:
    seen: list[tuple[CircuitState, CircuitState, CircuitState]] = []

    def listener(b: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        seen.append((old, new, b.state))
        if new is CircuitState.OPEN:
            b.reset()  # a change from inside a listener is delivered after this one

    breaker = CircuitBreaker("api", 1, clock=clock, listeners=[listener])
    _trip(breaker)
    assert _state(breaker) is CircuitState.CLOSED
    assert seen == [
        (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED, CircuitState.CLOSED),
    ]


# -- threads ----------------------------------------------------------------------


def test_guarded_calls_run_concurrently(breaker: CircuitBreaker) -> None:
    # Both calls must be inside fn at once to pass the barrier; a breaker that
    # held its lock around the call would break it.
    barrier = threading.Barrier(2, timeout=WAIT)
    results: list[int] = []

    def fn() -> int:
        return barrier.wait()

    threads = [threading.Thread(target=lambda: results.append(breaker.call(fn))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(results) == [0, 1]
    assert not barrier.broken


@pytest.mark.parametrize("max_calls", [1, 3])
def test_concurrent_callers_in_half_open_get_exactly_the_permitted_probes(
    clock: FakeClock, max_calls: int
) -> None:
    callers = 12
    breaker = CircuitBreaker("api", 1, 10, half_open_max_calls=max_calls, clock=clock)
    _trip(breaker)
    clock.advance(10)
    start = threading.Barrier(callers, timeout=WAIT)
    release = threading.Event()
    done = threading.Condition()
    entered: list[int] = []
    rejected: list[int] = []

    def probe() -> str:
        with done:
            entered.append(1)
            done.notify_all()
        release.wait(WAIT)
        return "ok"

    def caller() -> None:
        start.wait()
        try:
            breaker.call(probe)
        except CircuitOpenError:
            with done:
                rejected.append(1)
                done.notify_all()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    with done:
        assert done.wait_for(lambda: len(entered) + len(rejected) == callers, WAIT)
        assert (len(entered), len(rejected)) == (max_calls, callers - max_calls)
    release.set()
    for t in threads:
        t.join(WAIT)
    metrics = breaker.metrics()
    assert metrics.state == CircuitState.CLOSED
    assert (metrics.successes, metrics.rejections) == (max_calls, callers - max_calls)


@pytest.mark.usefixtures("busy_switching")
def test_hammering_from_threads_keeps_exact_totals(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", failure_threshold=10**9, clock=clock)
    threads_n, per_thread = 8, 2_000
    start = threading.Barrier(threads_n, timeout=WAIT)

    def worker(seed: int) -> None:
        start.wait()
        for i in range(per_thread):
            if (i + seed) % 4 == 0:
                with pytest.raises(ConnectionError):
                    breaker.call(_fail(ConnectionError()))
            elif (i + seed) % 4 == 1:
                with pytest.raises(BadRequestError):
                    breaker.call(_fail(BadRequestError()))
            else:
                breaker.call(_ok)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    metrics = breaker.metrics()
    total = threads_n * per_thread
    assert (metrics.failures, metrics.ignored, metrics.successes) == (
        total // 4,
        total // 4,
        total // 2,
    )
    assert metrics.state == CircuitState.CLOSED


@pytest.mark.usefixtures("busy_switching")
def test_hammering_probes_never_exceeds_the_permits(clock: FakeClock) -> None:
    breaker = CircuitBreaker("api", 1, 10, half_open_max_calls=2, clock=clock)
    _trip(breaker)
    clock.advance(10)
    lock = threading.Lock()
    in_flight = [0, 0]  # current, peak
    start = threading.Barrier(6, timeout=WAIT)

    def worker() -> None:
        start.wait()
        for _ in range(500):
            permit = breaker.try_acquire()
            if permit is None:
                continue
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
            with lock:
                in_flight[0] -= 1
            permit.release()  # ignored: stays half-open for the next probe

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    metrics = breaker.metrics()
    assert in_flight[1] <= 2
    assert metrics.state == CircuitState.HALF_OPEN
    assert metrics.half_open_in_flight == 0
    assert metrics.ignored + metrics.rejections == 6 * 500


# -- the default failure predicate ------------------------------------------------


class _Response:
    def __init__(self, status_code: object) -> None:
        self.status_code = status_code


class _WithResponseError(Exception):
    def __init__(self, status_code: object) -> None:
        super().__init__(status_code)
        self.response = _Response(status_code)


class _RaisingPropertyError(Exception):
    @property
    def status_code(self) -> int:
        raise RuntimeError("not available")

    @property
    def response(self) -> object:
        raise RuntimeError("not available")


class _HostileGetattrError(Exception):
    def __getattr__(self, name: str) -> object:
        raise ValueError(name)


class _Plain400Error(Exception):
    status_code = 400


class ThrottlingException(_Plain400Error):  # noqa: N818 - botocore's modelled name
    pass


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (TimeoutError(), True),
        (ConnectionError(), True),
        (OSError("disk"), True),
        (ValueError("unknown"), True),
        (UnavailableError(), True),
        (BadRequestError(), False),
        (_WithResponseError(404), False),
        (_WithResponseError(502), True),
        (_WithResponseError("503"), True),  # not an int: no status, counts as unknown
        (_WithResponseError(True), True),  # a bool is not a status
        (_WithResponseError(200), True),  # not an error status: unknown
        (_RaisingPropertyError(), True),
        (_HostileGetattrError(), True),
        (ThrottlingException(), True),
        (_Plain400Error(), False),
        (asyncio.CancelledError(), False),
        (KeyboardInterrupt(), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_default_predicate_on_shapes(exc: BaseException, counts: bool) -> None:
    assert is_dependency_failure(exc) is counts


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        *[(code, False) for code in (400, 401, 403, 404, 409, 422)],
        *[(code, True) for code in (408, 429, 500, 502, 503, 529)],
    ],
)
def test_default_predicate_on_statuses(status: int, counts: bool) -> None:
    exc = Exception("x")
    exc.status = status  # type: ignore[attr-defined]
    assert is_dependency_failure(exc) is counts


def test_default_predicate_on_real_openai_and_anthropic_errors() -> None:
    import anthropic
    import httpx2
    import openai

    request = httpx2.Request("POST", "https://api.example.com/v1/messages")

    def status(cls: type[Exception], code: int) -> Exception:
        return cls("m", response=httpx2.Response(code, request=request), body=None)  # type: ignore[call-arg]

    for sdk in (openai, anthropic):
        assert is_dependency_failure(sdk.APITimeoutError(request=request))
        assert is_dependency_failure(sdk.APIConnectionError(request=request))
        assert is_dependency_failure(status(sdk.RateLimitError, 429))
        assert is_dependency_failure(status(sdk.InternalServerError, 500))
        assert not is_dependency_failure(status(sdk.BadRequestError, 400))
        assert not is_dependency_failure(status(sdk.AuthenticationError, 401))
        assert not is_dependency_failure(status(sdk.PermissionDeniedError, 403))
        assert not is_dependency_failure(status(sdk.NotFoundError, 404))
    assert is_dependency_failure(status(anthropic.OverloadedError, 529))
    # 4xx errors whose names contain words that elsewhere mean an outage.
    assert not is_dependency_failure(status(anthropic.CMEKKeyNetworkBlockedError, 400))
    assert not is_dependency_failure(
        status(anthropic.LinkedOrganizationBillingUnavailableError, 402)
    )


def test_default_predicate_on_real_google_errors() -> None:
    from google.api_core import exceptions as core
    from google.genai import errors as genai

    assert is_dependency_failure(genai.ServerError(503, {"error": {"status": "UNAVAILABLE"}}))
    assert is_dependency_failure(genai.ClientError(429, {"error": {"status": "EXHAUSTED"}}))
    assert not is_dependency_failure(genai.ClientError(400, {"error": {"status": "INVALID"}}))
    cases: list[tuple[Callable[[str], Exception], bool]] = [
        (core.ServiceUnavailable, True),
        (core.TooManyRequests, True),
        (core.DeadlineExceeded, True),
        (core.BadRequest, False),
        (core.Unauthorized, False),
    ]
    for make, counts in cases:
        assert is_dependency_failure(make("x")) is counts


def test_default_predicate_on_real_botocore_errors() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "InvokeModel",
        )

    assert is_dependency_failure(client_error("ThrottlingException", 400))
    assert is_dependency_failure(client_error("ServiceUnavailableException", 503))
    assert is_dependency_failure(client_error("ModelTimeoutException", 408))
    assert not is_dependency_failure(client_error("ValidationException", 400))
    assert not is_dependency_failure(client_error("AccessDeniedException", 403))
    assert is_dependency_failure(EndpointConnectionError(endpoint_url="https://x"))
    assert is_dependency_failure(ReadTimeoutError(endpoint_url="https://x"))


def test_default_predicate_on_real_http_client_errors() -> None:
    import urllib.error

    import httpx
    import requests

    request = httpx.Request("GET", "https://x")
    assert is_dependency_failure(httpx.ConnectTimeout("t"))  # its .request property raises
    assert is_dependency_failure(
        httpx.HTTPStatusError("m", request=request, response=httpx.Response(502))
    )
    assert not is_dependency_failure(
        httpx.HTTPStatusError("m", request=request, response=httpx.Response(404))
    )
    response = requests.Response()
    response.status_code = 400
    assert not is_dependency_failure(requests.HTTPError(response=response))  # an OSError
    response.status_code = 503
    assert is_dependency_failure(requests.HTTPError(response=response))
    assert is_dependency_failure(requests.ConnectionError())
    assert not is_dependency_failure(
        urllib.error.HTTPError("https://x", 401, "no", None, None)  # type: ignore[arg-type]
    )
