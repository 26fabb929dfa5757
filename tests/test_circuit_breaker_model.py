"""The breaker against a small reference model, driven by Hypothesis state machines.

The model restates the documented rules as plainly as possible: periods
numbered from every transition, a dict of live probes, and the window as a
list of outcomes filtered on demand. Rules make calls (through ``call``,
``acall``, a decorated sync or async function, a held permit from
``try_acquire`` or ``acquire``, ``with`` or ``async with``), advance a fake
clock, force the breaker open and reset it; every rejection must carry the
model's state and wait, and after every step state, counters, rates, window
and listener log must agree.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from techrevati.runtime.circuit_breaker import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Permit,
    SlidingWindow,
)
from tests.conftest import examples

Outcome = Literal["success", "failure", "ignored"]
OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "ignored")
CallForm = Literal["call", "acall", "decorated", "decorated_async"]
CALL_FORMS: tuple[CallForm, ...] = ("call", "acall", "decorated", "decorated_async")

CLOSED, OPEN, HALF_OPEN, FORCED = (
    CircuitState.CLOSED,
    CircuitState.OPEN,
    CircuitState.HALF_OPEN,
    CircuitState.FORCED_OPEN,
)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Ignored(Exception):  # noqa: N818 - excluded by the breaker under test
    pass


@dataclass
class Ticket:
    kind: Literal["closed", "probe"]
    ident: int
    granted_at: float


@dataclass
class Model:
    """What the docs promise, written without tickets, rings or buckets."""

    threshold: int
    recovery: float
    success_threshold: int
    max_probes: int
    probe_timeout: float | None
    window: SlidingWindow | None
    state: CircuitState = CLOSED
    period: int = 0
    consecutive: int = 0
    opened_at: float | None = None
    probes: dict[int, float] = field(default_factory=dict)
    next_probe: int = 0
    probe_successes: int = 0
    outcomes: list[tuple[float, bool, bool]] = field(default_factory=list)
    successes: int = 0
    failures: int = 0
    ignored: int = 0
    rejections: int = 0
    changes: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def move(self, new: CircuitState, at: float) -> None:
        if new is not self.state:
            self.changes.append((self.state, new))
        self.state = new
        self.period += 1
        self.probes = {}
        self.probe_successes = 0
        if new is CLOSED:
            self.consecutive = 0
            self.opened_at = None
            self.outcomes = []
        elif new in (OPEN, FORCED):
            self.opened_at = at

    def observe(self, now: float) -> None:
        if self.state is HALF_OPEN and self.probe_timeout is not None and self.probes:
            expired_at = min(self.probes.values()) + self.probe_timeout
            if now >= expired_at:
                self.move(OPEN, expired_at)
        if self.state is OPEN:
            assert self.opened_at is not None
            if now - self.opened_at >= self.recovery:
                self.move(HALF_OPEN, now)

    def admit(self, now: float) -> Ticket | None:
        if self.state is CLOSED:
            return Ticket("closed", self.period, now)
        if self.state is not FORCED:
            self.observe(now)
            if self.state is HALF_OPEN and len(self.probes) < self.max_probes:
                self.next_probe += 1
                self.probes[self.next_probe] = now
                return Ticket("probe", self.next_probe, now)
        self.rejections += 1
        return None

    def retry_after(self, now: float) -> float:
        if self.state is OPEN:
            assert self.opened_at is not None
            return max(0.0, self.opened_at + self.recovery - now)
        return math.inf if self.state is FORCED else 0.0

    def slow(self, duration: float) -> bool:
        limit = None if self.window is None else self.window.slow_call_duration_seconds
        return limit is not None and duration >= limit

    def in_window(self, now: float) -> list[tuple[float, bool, bool]]:
        window = self.window
        if window is None:
            return []
        if window.kind == "count":
            return self.outcomes[-window.size :]
        return [o for o in self.outcomes if math.floor(o[0]) > math.floor(now) - window.size]

    def settle(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        if outcome == "success":
            self.successes += 1
        elif outcome == "failure":
            self.failures += 1
        else:
            self.ignored += 1
        failed = outcome == "failure"
        slow = self.slow(now - ticket.granted_at)
        if ticket.kind == "closed" and ticket.ident == self.period and self.state is CLOSED:
            if outcome == "ignored":
                return
            self.consecutive = self.consecutive + 1 if failed else 0
            window = self.window
            if window is None:
                if self.consecutive >= self.threshold:
                    self.move(OPEN, now)
                return
            self.outcomes.append((now, failed, slow))
            recent = self.in_window(now)
            calls = len(recent)
            if calls >= window.minimum_calls and (
                sum(o[1] for o in recent) / calls >= window.failure_rate_threshold
                or (
                    window.slow_call_duration_seconds is not None
                    and sum(o[2] for o in recent) / calls >= window.slow_call_rate_threshold
                )
            ):
                self.move(OPEN, now)
        elif ticket.kind == "probe" and ticket.ident in self.probes:
            del self.probes[ticket.ident]
            if failed or (outcome == "success" and slow):
                self.move(OPEN, now)
            elif outcome == "success":
                self.probe_successes += 1
                if self.probe_successes >= self.success_threshold:
                    self.move(CLOSED, now)


class BreakerMachine(RuleBasedStateMachine):
    """Shared rules; subclasses choose the mode in ``make_window``."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.held: list[tuple[Permit, Ticket]] = []
        self.changes: list[tuple[CircuitState, CircuitState]] = []
        self.last_failure: BaseException | None = None
        # One loop per run: the async forms must keep the same books as the sync ones.
        self.loop = asyncio.new_event_loop()

    def make_window(self, data: st.DataObject) -> SlidingWindow | None:
        return None

    @initialize(
        data=st.data(),
        threshold=st.integers(1, 4),
        recovery=st.sampled_from([0.0, 1.0, 2.5, 5.0]),
        success_threshold=st.integers(1, 3),
        max_probes=st.integers(1, 3),
        probe_timeout=st.sampled_from([None, 2.0, 4.0]),
    )
    def setup(
        self,
        *,
        data: st.DataObject,
        threshold: int,
        recovery: float,
        success_threshold: int,
        max_probes: int,
        probe_timeout: float | None,
    ) -> None:
        window = self.make_window(data)
        self.breaker = CircuitBreaker(
            "model",
            threshold,
            recovery,
            success_threshold=success_threshold,
            half_open_max_calls=max_probes,
            window=window,
            exclude=(Ignored,),
            probe_timeout_seconds=probe_timeout,
            clock=self.clock,
            listeners=[lambda b, old, new: self.changes.append((old, new))],
        )
        self.model = Model(
            threshold, recovery, success_threshold, max_probes, probe_timeout, window
        )

    # -- rules ----------------------------------------------------------------------

    @rule(
        form=st.sampled_from(CALL_FORMS),
        outcome=st.sampled_from(OUTCOMES),
        duration=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    )
    def call(self, form: CallForm, outcome: Outcome, duration: float) -> None:
        clock = self.clock
        exc = self._exception(outcome)
        args = (3,)
        kwargs = {"scale": 2}

        def fn(x: int, *, scale: int) -> int:
            clock.now += duration
            if exc is not None:
                raise exc
            return x * scale

        async def afn(x: int, *, scale: int) -> int:
            return fn(x, scale=scale)

        ticket = self.model.admit(clock.now)
        raised: BaseException | None = None
        try:
            if form == "call":
                result = self.breaker.call(fn, *args, **kwargs)
            elif form == "acall":
                result = self.loop.run_until_complete(self.breaker.acall(afn, *args, **kwargs))
            elif form == "decorated":
                result = self.breaker.decorate(fn)(*args, **kwargs)
            else:
                result = self.loop.run_until_complete(self.breaker(afn)(*args, **kwargs))
            assert result == 6
        except (CircuitOpenError, ConnectionError, Ignored) as caught:
            raised = caught
        if isinstance(raised, CircuitOpenError):
            assert ticket is None, "the breaker rejected a call the model admits"
            self._check_rejection(raised)
            return
        assert raised is exc
        assert ticket is not None, "the breaker ran a call the model rejects"
        self._settle(ticket, outcome, exc)

    @rule(
        asynchronous=st.booleans(),
        outcome=st.sampled_from(OUTCOMES),
        duration=st.sampled_from([0.0, 1.0, 3.0]),
    )
    def with_block(self, asynchronous: bool, outcome: Outcome, duration: float) -> None:
        exc = self._exception(outcome)
        ticket = self.model.admit(self.clock.now)
        raised: BaseException | None = None

        def body(permit: Permit) -> None:
            assert permit.breaker is self.breaker
            assert not permit.settled
            self.clock.now += duration
            if exc is not None:
                raise exc

        async def ablock() -> None:
            async with self.breaker as permit:
                body(permit)

        try:
            if asynchronous:
                self.loop.run_until_complete(ablock())
            else:
                with self.breaker as permit:
                    body(permit)
        except (CircuitOpenError, ConnectionError, Ignored) as caught:
            raised = caught
        if isinstance(raised, CircuitOpenError):
            assert ticket is None
            self._check_rejection(raised)
            return
        assert raised is exc
        assert ticket is not None
        self._settle(ticket, outcome, exc)

    @rule(raising=st.booleans())
    def acquire(self, raising: bool) -> None:
        ticket = self.model.admit(self.clock.now)
        permit: Permit | None = None
        if raising:
            try:
                permit = self.breaker.acquire()
            except CircuitOpenError as rejection:
                self._check_rejection(rejection)
        else:
            permit = self.breaker.try_acquire()
        assert (permit is None) == (ticket is None)
        if permit is not None and ticket is not None:
            assert not permit.settled
            self.held.append((permit, ticket))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def settle_held(self, data: st.DataObject, outcome: Outcome) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        permit, ticket = self.held.pop(index)
        exc = self._exception(outcome)
        if outcome == "success":
            assert permit.record_success()
        elif outcome == "failure":
            assert permit.record_failure(exc)
        else:
            assert permit.record_ignored()
        assert permit.settled
        assert not permit.record_success(), "a permit settles once"
        self._settle(ticket, outcome, exc)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 7.0]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        if self.model.state is not FORCED:
            self.model.move(FORCED, self.clock.now)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move(CLOSED, self.clock.now)
        self.last_failure = None

    # -- checks ---------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.clock.now
        model = self.model
        model.observe(now)
        metrics = self.breaker.metrics()
        assert metrics.state is model.state
        assert self.breaker.state is model.state
        assert metrics.consecutive_failures == model.consecutive
        assert metrics.half_open_in_flight == len(model.probes)
        assert (metrics.successes, metrics.failures, metrics.ignored, metrics.rejections) == (
            model.successes,
            model.failures,
            model.ignored,
            model.rejections,
        )
        assert metrics.opened_at == model.opened_at
        assert metrics.retry_after == model.retry_after(now)
        recent = model.in_window(now)
        calls = len(recent)
        failures = sum(o[1] for o in recent)
        slow = sum(o[2] for o in recent)
        assert (metrics.window_calls, metrics.window_failures) == (calls, failures)
        assert metrics.window_slow_calls == slow
        assert metrics.failure_rate == (failures / calls if calls else 0.0)
        assert metrics.slow_call_rate == (slow / calls if calls else 0.0)
        assert metrics.last_failure == (
            None if self.last_failure is None else type(self.last_failure).__qualname__
        )
        assert self.breaker.last_failure is self.last_failure
        assert self.changes == model.changes

    def _check_rejection(self, rejection: CircuitOpenError) -> None:
        """A rejection carries the breaker's name, the model's state and wait, the last failure."""
        now = self.clock.now
        assert rejection.name == "model"
        assert rejection.state is self.model.state
        assert rejection.retry_after == self.model.retry_after(now)
        assert rejection.__cause__ is self.last_failure

    def teardown(self) -> None:
        self.loop.close()

    @staticmethod
    def _exception(outcome: Outcome) -> Exception | None:
        if outcome == "failure":
            return ConnectionError("down")
        return Ignored() if outcome == "ignored" else None

    def _settle(self, ticket: Ticket, outcome: Outcome, exc: Exception | None) -> None:
        if outcome == "failure":
            self.last_failure = exc
        self.model.settle(ticket, outcome, self.clock.now)


class CountWindowMachine(BreakerMachine):
    def make_window(self, data: st.DataObject) -> SlidingWindow | None:
        size = data.draw(st.integers(1, 6), label="size")
        return SlidingWindow(
            kind="count",
            size=size,
            minimum_calls=data.draw(st.integers(1, size), label="minimum_calls"),
            failure_rate_threshold=data.draw(st.sampled_from([0.25, 0.5, 1.0])),
            slow_call_duration_seconds=data.draw(st.sampled_from([None, 1.0, 3.0])),
            slow_call_rate_threshold=data.draw(st.sampled_from([0.5, 1.0])),
        )


class TimeWindowMachine(BreakerMachine):
    def make_window(self, data: st.DataObject) -> SlidingWindow | None:
        return SlidingWindow(
            kind="time",
            size=data.draw(st.integers(1, 6), label="size"),
            minimum_calls=data.draw(st.integers(1, 5), label="minimum_calls"),
            failure_rate_threshold=data.draw(st.sampled_from([0.25, 0.5, 1.0])),
            slow_call_duration_seconds=data.draw(st.sampled_from([None, 1.0, 3.0])),
            slow_call_rate_threshold=data.draw(st.sampled_from([0.5, 1.0])),
        )


# Under mutation testing (tools/mutation.py sets MUTANT_UNDER_TEST in every run)
# only whether a run fails matters: shrinking a failing run of 40 steps would
# spend the mutant's whole time budget for nothing.
_PHASES = (
    tuple(phase for phase in Phase if phase is not Phase.shrink)
    if os.environ.get("MUTANT_UNDER_TEST")
    else tuple(Phase)
)
_SETTINGS = settings(
    max_examples=examples(120),
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
    phases=_PHASES,
)

TestConsecutiveBreaker = BreakerMachine.TestCase
TestConsecutiveBreaker.settings = _SETTINGS
TestCountWindowBreaker = CountWindowMachine.TestCase
TestCountWindowBreaker.settings = _SETTINGS
TestTimeWindowBreaker = TimeWindowMachine.TestCase
TestTimeWindowBreaker.settings = _SETTINGS
