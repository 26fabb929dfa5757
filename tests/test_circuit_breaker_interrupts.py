"""CircuitBreaker under Ctrl-C: an interrupt at any point leaks neither its lock nor a probe slot.

Each test runs one operation (a call, a probe, a permit, ``with breaker:``)
once to count the points where an interrupt could land inside the library,
then again for every point N, raising ``KeyboardInterrupt`` at the N-th, and
checks after each that the lock is free, no probe slot is held, the counters
add up and the breaker still opens, probes and closes. No signals, no sleeps:
``sys.settrace`` and ``sys.setprofile`` pick the points.

The points are the ones where CPython can deliver a signal, and more:
the entry of every function the library calls (its own, ``fn``, the clock,
listeners), the return of every C function it calls (a real SIGINT is raised
right after such a call returns; just after ``lock.acquire()`` is the leak
this guards against) and every line it runs once its frame has made a call.
Left out are the places where CPython never raises and no code could
defend, which line tracing would otherwise report:

- a public method's own first and last event (that boundary belongs to the
  caller, as for any function handing back a resource);
- lines of a frame that has made no call since it started, or since an
  exception reached it (CPython checks for signals on entry and after
  calls, so an exception is never interrupted on its way into its handler);
- the line event for leaving a ``with`` block, which comes before
  ``__exit__`` is called and outside the block's handler (even
  ``with lock:`` would "leak" there), and the one for a ``try:`` line, a
  ``NOP`` that CPython 3.11 leaves outside the enclosing handlers when the
  ``try`` is nested (a ``finally`` around it would not run).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dis
import functools
import gc
import inspect
import linecache
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _typeshed import TraceFunction

from techrevati.runtime import _breaker_permit, _breaker_settings, _breaker_state, circuit_breaker
from techrevati.runtime.circuit_breaker import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    SlidingWindow,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
LIBRARY: frozenset[str] = frozenset(
    inspect.getfile(module)
    for module in (circuit_breaker, _breaker_state, _breaker_permit, _breaker_settings)
)
"""The breaker's files: the public module and the private ones it is made of."""
RECOVERY: float = 30.0
FAILURES_TO_OPEN: int = 2  # in both modes below
WINDOW = SlidingWindow(kind="count", size=2, minimum_calls=2, failure_rate_threshold=0.5)

Change = tuple[CircuitState, CircuitState]


class _Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _BadRequestError(Exception):
    """Not the dependency's fault: ignored."""

    status_code = 400


def _ok() -> str:
    return "ok"


def _fail() -> None:
    raise ConnectionError("down")


def _bad_request() -> None:
    raise _BadRequestError("bad prompt")


async def _aok() -> str:
    return "ok"


# -- the interrupter --------------------------------------------------------------


@functools.cache
def _inert_offsets(code: CodeType) -> frozenset[int]:
    """Where ``code`` reports line events that no signal can share.

    A ``NOP`` (a ``try:`` line: CPython 3.11 leaves the one of a nested
    ``try`` outside every handler, even the enclosing ``finally``) and the
    start of a ``with`` block's exit, which runs before ``__exit__`` is
    called but outside the block's handler.
    """
    instructions = list(dis.get_instructions(code))
    inert = {i.offset for i in instructions if i.opname == "NOP"}
    previous: int | None = None
    for index, instruction in enumerate(instructions):
        line = instruction.positions.lineno if instruction.positions else None
        if line is None or line == previous:
            continue
        previous = line
        if not linecache.getline(code.co_filename, line).lstrip().startswith("with "):
            continue
        run: list[str] = []
        for later in instructions[index:]:
            if later.positions is None or later.positions.lineno != line:
                break
            run.append(later.opname)
        if "BEFORE_WITH" not in run:
            inert.add(instruction.offset)
    return frozenset(inert)


@dataclass
class Interrupter:
    """Count the interrupt points inside the breaker's files; raise KeyboardInterrupt at ``at``.

    ``at=0`` only counts. After it fires it stays quiet, so one run sees
    exactly one interrupt.
    """

    at: int
    points: int = 0
    fired: bool = False
    # Frames that made no call since they started or since an exception reached
    # them: CPython checks for signals on entry and after calls, not in between.
    _quiet: set[FrameType] = field(default_factory=set)

    def _point(self) -> None:
        self.points += 1
        if self.points == self.at:
            self.fired = True
            raise KeyboardInterrupt(f"injected at point {self.at}")

    def _called_from(self, frame: FrameType | None) -> bool:
        if frame is None or frame.f_code.co_filename not in LIBRARY:
            return False
        self._quiet.discard(frame)
        return True

    def trace(self, frame: FrameType, event: str, arg: Any) -> TraceFunction | None:
        """The global trace function: sees every frame start."""
        if self._called_from(frame.f_back):
            self._point()  # entering a function the library calls (its own, fn, the clock)
        if frame.f_code.co_filename not in LIBRARY:
            return None
        self._quiet.add(frame)
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> TraceFunction:
        if event == "exception":
            if not issubclass(arg[0], StopIteration):  # that one: an awaited coroutine returned
                self._quiet.add(frame)
        elif event == "line":
            if frame not in self._quiet and frame.f_lasti not in _inert_offsets(frame.f_code):
                self._point()
        elif event == "return":
            quiet = frame in self._quiet
            self._quiet.discard(frame)
            back = frame.f_back
            if not quiet and back is not None and back.f_code.co_filename in LIBRARY:
                self._point()
        return self._local

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        """The profile function: sees C calls; a return from one is a point."""
        if event.startswith("c_") and self._called_from(frame) and event == "c_return":
            self._point()


@contextlib.contextmanager
def interrupting(at: int) -> Iterator[Interrupter]:
    """Trace the block with an :class:`Interrupter`; the hooks are always removed.

    The garbage collector is off meanwhile: a finalizer it ran would be
    called from the library's frames and shift the points.
    """
    interrupter = Interrupter(at)
    old_trace, old_profile = sys.gettrace(), sys.getprofile()
    collecting = gc.isenabled()
    gc.disable()
    sys.settrace(interrupter.trace)
    sys.setprofile(interrupter.profile)
    try:
        yield interrupter
    finally:
        sys.settrace(old_trace)
        sys.setprofile(old_profile)
        if collecting:
            gc.enable()


# -- breakers in each starting state ----------------------------------------------


@dataclass
class Subject:
    breaker: CircuitBreaker
    clock: _Clock
    changes: list[Change]

    def total(self) -> int:
        """Calls and rejections so far, read without ``metrics()``.

        Reading the state would already turn an OPEN breaker whose timeout
        passed HALF_OPEN, before the call under test could do it.
        """
        b = self.breaker
        return b._successes + b._failures + b._ignored + b._rejections


def _breaker(*, window: bool = False, failures: int = 0, recovered: bool = False) -> Subject:
    """A breaker with a listener; ``failures`` calls failed; ``recovered``: probes are due."""
    clock = _Clock()
    changes: list[Change] = []
    breaker = CircuitBreaker(
        "api",
        failure_threshold=FAILURES_TO_OPEN,
        recovery_timeout_seconds=RECOVERY,
        window=WINDOW if window else None,
        clock=clock,
        listeners=[lambda b, old, new: changes.append((old, new))],
    )
    for _ in range(failures):
        with contextlib.suppress(ConnectionError):
            breaker.call(_fail)
    if recovered:
        clock.now += RECOVERY  # half-open on the next admission (not read here: lazily)
    return Subject(breaker, clock, changes)


def _half_open() -> Subject:
    return _breaker(failures=FAILURES_TO_OPEN, recovered=True)


# -- the checks after each interrupt ----------------------------------------------


def assert_intact(subject: Subject, total_before: int) -> None:
    """The lock is free, nothing is held, the counts add up, and the breaker still cycles."""
    breaker, clock = subject.breaker, subject.clock
    assert breaker._lock.acquire(blocking=False), "the breaker's lock was left held"
    breaker._lock.release()
    metrics = breaker.metrics()
    state = breaker.state
    assert metrics.half_open_in_flight == 0, "a probe slot was left held"
    assert circuit_breaker._ENTERED.get() == (), "a `with breaker:` block was left entered"
    assert subject.total() - total_before in (0, 1), "the call was counted twice"
    if state is OPEN:
        clock.now += RECOVERY
        state = breaker.state
    if state is HALF_OPEN:  # a fresh probe is admitted, and closes it
        probe = breaker.try_acquire()
        assert probe is not None, "half-open but no probe admitted"
        assert probe.record_success()
    assert breaker.state is CLOSED
    for _ in range(FAILURES_TO_OPEN):
        if breaker.state is not CLOSED:
            break
        with contextlib.suppress(ConnectionError):
            breaker.call(_fail)
    assert breaker.state is OPEN
    clock.now += RECOVERY
    assert breaker.call(_ok) == "ok"
    assert breaker.state is CLOSED
    assert subject.changes[-3:] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # Lock-free admission is back (a torn transition would leave every call on the slow path).
    assert breaker._closed_ticket == breaker._generation
    if breaker.window is None:
        assert breaker._fast_ticket == breaker._generation


def count_points(make: Callable[[], Subject], run: Callable[[CircuitBreaker], object]) -> int:
    """How many interrupt points one uninterrupted ``run`` passes."""
    subject = make()
    with interrupting(0) as counter:
        run(subject.breaker)
    assert counter.points >= 5, "the tracer saw nothing: the test would prove nothing"
    return counter.points


def interrupt_everywhere(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], object]
) -> None:
    """Run ``run`` once per interrupt point, interrupting it there, and check the breaker."""
    for at in range(1, count_points(make, run) + 1):
        contextvars.Context().run(_interrupt_once, make, run, at)  # no `with` left over


def _interrupt_once(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], object], at: int
) -> None:
    subject = make()
    before = subject.total()
    with pytest.raises(KeyboardInterrupt), interrupting(at) as interrupter:
        run(subject.breaker)
    assert interrupter.fired
    assert_intact(subject, before)


# -- scenarios ----------------------------------------------------------------------


def _call_ok(breaker: CircuitBreaker) -> None:
    assert breaker.call(_ok) == "ok"


def _call_failing(breaker: CircuitBreaker) -> None:
    with pytest.raises(ConnectionError):
        breaker.call(_fail)


def _call_ignored(breaker: CircuitBreaker) -> None:
    with pytest.raises(_BadRequestError):
        breaker.call(_bad_request)


def _call_rejected(breaker: CircuitBreaker) -> None:
    with pytest.raises(CircuitOpenError):
        breaker.call(_ok)


def _read_state(breaker: CircuitBreaker) -> None:
    assert breaker.state is HALF_OPEN


def _reset(breaker: CircuitBreaker) -> None:
    breaker.reset()


@pytest.mark.parametrize(
    ("make", "run"),
    [
        pytest.param(_breaker, _call_ok, id="closed-success"),
        pytest.param(lambda: _breaker(failures=1), _call_failing, id="closed-failure-opens"),
        pytest.param(lambda: _breaker(window=True), _call_ok, id="window-success"),
        pytest.param(
            lambda: _breaker(window=True, failures=1), _call_failing, id="window-failure-opens"
        ),
        pytest.param(_half_open, _call_ok, id="probe-success-closes"),
        pytest.param(_half_open, _call_failing, id="probe-failure-reopens"),
        pytest.param(_half_open, _call_ignored, id="probe-ignored"),
        pytest.param(lambda: _breaker(failures=FAILURES_TO_OPEN), _call_rejected, id="rejected"),
    ],
)
def test_an_interrupt_anywhere_in_call_leaks_nothing(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], None]
) -> None:
    interrupt_everywhere(make, run)


@pytest.mark.parametrize(
    ("make", "run"),
    [
        pytest.param(_half_open, _read_state, id="state-read-half-opens"),
        pytest.param(lambda: _breaker(failures=FAILURES_TO_OPEN), _reset, id="reset"),
    ],
)
def test_an_interrupt_anywhere_in_a_state_change_leaks_nothing(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], None]
) -> None:
    interrupt_everywhere(make, run)


def test_the_tracer_alone_changes_nothing() -> None:
    probe = _half_open()
    with interrupting(0):
        _call_ok(probe.breaker)
    assert probe.breaker.state is CLOSED
    failing = _half_open()
    with interrupting(0):
        _call_failing(failing.breaker)
    assert failing.breaker.state is OPEN
    ignored = _half_open()
    with interrupting(0):
        _call_ignored(ignored.breaker)
    assert ignored.breaker.metrics().ignored == 1
    assert ignored.breaker.state is HALF_OPEN


def _acquire_then_succeed(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    assert permit.record_success()


def _try_acquire_as_context(breaker: CircuitBreaker) -> None:
    permit = breaker.try_acquire()
    assert permit is not None
    with permit:
        pass


def _try_acquire_rejected(breaker: CircuitBreaker) -> None:
    assert breaker.try_acquire() is None


def _try_acquire_then_fail(breaker: CircuitBreaker) -> None:
    permit = breaker.try_acquire()
    assert permit is not None
    assert permit.record_failure(ConnectionError("down"))


def _with_breaker(breaker: CircuitBreaker) -> None:
    with breaker:
        pass


def _with_breaker_failing(breaker: CircuitBreaker) -> None:
    with pytest.raises(ConnectionError), breaker:
        _fail()


@pytest.mark.parametrize(
    ("make", "run"),
    [
        pytest.param(_half_open, _acquire_then_succeed, id="acquire-record_success"),
        pytest.param(_breaker, _acquire_then_succeed, id="closed-acquire-record_success"),
        pytest.param(_half_open, _try_acquire_as_context, id="try_acquire-with-permit"),
        pytest.param(_half_open, _try_acquire_then_fail, id="try_acquire-record_failure"),
        pytest.param(
            lambda: _breaker(failures=FAILURES_TO_OPEN),
            _try_acquire_rejected,
            id="try_acquire-none",
        ),
        pytest.param(_half_open, _with_breaker, id="with-breaker"),
        pytest.param(_half_open, _with_breaker_failing, id="with-breaker-failing"),
        pytest.param(lambda: _breaker(window=True), _with_breaker, id="window-with-breaker"),
    ],
)
def test_an_interrupt_anywhere_in_a_permit_leaks_nothing(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], None]
) -> None:
    interrupt_everywhere(make, run)


def _outer_entered() -> Subject:
    subject = _breaker()
    subject.breaker.__enter__()  # an enclosing `with breaker:` block of the same breaker
    return subject


def _check_inner_with(at: int) -> None:
    subject = _outer_entered()
    (outer,) = circuit_breaker._ENTERED.get()
    with pytest.raises(KeyboardInterrupt), interrupting(at):
        _with_breaker(subject.breaker)
    inner_took_it = outer.settled
    assert not inner_took_it
    assert circuit_breaker._ENTERED.get() == (outer,)
    subject.breaker.__exit__(None, None, None)
    assert outer.settled
    assert circuit_breaker._ENTERED.get() == ()
    assert subject.breaker.metrics().successes in (1, 2)  # the outer block, and the inner's?


def test_an_interrupted_inner_with_block_leaves_the_outer_one_alone() -> None:
    points = contextvars.Context().run(count_points, _outer_entered, _with_breaker)
    for at in range(1, points + 1):
        contextvars.Context().run(_check_inner_with, at)


# -- asyncio ------------------------------------------------------------------------


def _interrupt_everywhere_async(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], Awaitable[object]]
) -> None:
    """:func:`interrupt_everywhere` for a coroutine, every run in one event loop."""

    async def once(at: int) -> None:
        subject = make()
        before = subject.total()
        with pytest.raises(KeyboardInterrupt), interrupting(at) as interrupter:
            await run(subject.breaker)
        assert interrupter.fired
        assert_intact(subject, before)

    async def main() -> None:
        counting = make()
        with interrupting(0) as counter:
            await run(counting.breaker)
        assert counter.points >= 5
        for at in range(1, counter.points + 1):  # a task each, in a fresh context
            await asyncio.create_task(once(at), context=contextvars.Context())

    asyncio.run(main())


async def _acall_ok(breaker: CircuitBreaker) -> None:
    assert await breaker.acall(_aok) == "ok"


async def _async_with_breaker(breaker: CircuitBreaker) -> None:
    async with breaker:
        pass


@pytest.mark.parametrize(
    ("make", "run"),
    [
        pytest.param(_breaker, _acall_ok, id="closed-acall"),
        pytest.param(lambda: _breaker(window=True), _acall_ok, id="window-acall"),
        pytest.param(_half_open, _acall_ok, id="probe-acall"),
        pytest.param(_half_open, _async_with_breaker, id="async-with-breaker"),
    ],
)
def test_an_interrupt_anywhere_in_acall_leaks_nothing(
    make: Callable[[], Subject], run: Callable[[CircuitBreaker], Awaitable[None]]
) -> None:
    _interrupt_everywhere_async(make, run)


def test_cancelling_a_suspended_probe_gives_its_slot_back() -> None:
    subject = _half_open()

    async def main() -> None:
        started, never = asyncio.Event(), asyncio.Event()

        async def hang() -> None:
            started.set()
            await never.wait()

        probe = asyncio.create_task(subject.breaker.acall(hang))
        await started.wait()
        assert subject.breaker.metrics().half_open_in_flight == 1
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe

    asyncio.run(main())
    metrics = subject.breaker.metrics()
    assert (metrics.state, metrics.half_open_in_flight, metrics.ignored) == (HALF_OPEN, 0, 1)
    assert_intact(subject, subject.total())


# -- the harness itself -------------------------------------------------------------


def test_the_hooks_are_removed_even_when_the_block_raises() -> None:
    before = sys.gettrace(), sys.getprofile()
    with pytest.raises(KeyboardInterrupt), interrupting(1):
        _breaker(failures=1).breaker.call(_ok)
    assert (sys.gettrace(), sys.getprofile()) == before
