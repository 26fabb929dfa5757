"""The session's turn engine: retries per turn, timeouts and the breaker, budgets on every path.

These use plain fakes; tests/test_turns_real_http.py drives the same paths
with the real SDK clients over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Generator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from techrevati.runtime import (
    AgentStatus,
    BaseHook,
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    GuardrailViolatedError,
    InvalidValueError,
    MaxIterationsExceededError,
    ModelCall,
    Orchestrator,
    RetriesExhaustedError,
    RetryAttempt,
    RetryPolicy,
    RetryStats,
    SessionStateError,
    TurnTimeoutError,
    UsageRecord,
    UsageSnapshot,
    aretry_call,
    retry_call,
    testing,
)
from techrevati.runtime._responses import (
    aclose_refused,
    check_response,
    usage_from_exception,
    usage_from_result,
)
from techrevati.runtime._runner import DeadlineRunner
from techrevati.runtime.orchestrator import EmptyResponseError, StreamResultError
from tests.conftest import FakeClock

USAGE = UsageSnapshot(input_tokens=1000, output_tokens=100)
COST = Decimal("0.0045")  # 1000 * 3e-6 + 100 * 15e-6


pytestmark = pytest.mark.usefixtures("priced_models")


class StatusError(Exception):
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code
        self.headers = headers or {}


class Sleeps:
    """Records the waits asked for; never waits."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


# -- attempts are counted per turn ---------------------------------------------------


def test_a_long_session_survives_a_transient_429_every_tenth_turn() -> None:
    sleeps = Sleeps()
    orch = _orch(retry=RetryPolicy(max_attempts=3, sleep=sleeps))
    pending: list[Exception] = []

    def flaky() -> str:
        if pending:
            raise pending.pop()
        return "ok"

    with orch.session() as session:
        for turn in range(1000):
            if turn % 10 == 9:  # one transient 429 every 10 turns
                pending.append(StatusError(429, {"retry-after": "1"}))
            assert session.run_turn(flaky, model="m", usage=USAGE)[0] == "ok"
    summary = session.summary()
    assert summary["turns"] == 1000
    assert summary["recovery"] == {
        "retries": 100,
        "retries_exhausted": False,
        "max_total_retries": None,
    }
    assert sleeps.slept == [1.0] * 100


def test_max_total_retries_caps_the_whole_session() -> None:
    orch = _orch(retry=RetryPolicy(max_attempts=5, sleep=Sleeps()), max_total_retries=2)
    failures = iter([StatusError(503), StatusError(503), StatusError(503)])

    def fn() -> str:
        raise next(failures)

    with pytest.raises(RetriesExhaustedError) as caught, orch.session() as session:
        session.run_turn(fn, model="m", usage=USAGE)
    # The recipe (3 retries) and max_attempts (5) would allow a third retry.
    assert "all 2 retries shared" in str(caught.value)
    assert caught.value.attempts == 3
    assert session.recovery.total_attempts == 2


def test_max_total_retries_lets_later_turns_run_without_retrying() -> None:
    orch = _orch(retry=RetryPolicy(max_attempts=5, sleep=Sleeps()), max_total_retries=1)
    script: list[object] = [StatusError(503), "a", StatusError(503)]

    def fn() -> object:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    with orch.session() as session:
        assert session.run_turn(fn, model="m", usage=USAGE)[0] == "a"
        with pytest.raises(RetriesExhaustedError):
            session.run_turn(fn, model="m", usage=USAGE)
    assert session.summary()["recovery"]["retries"] == 1  # type: ignore[index]


# -- one policy, one meaning ---------------------------------------------------------


def _via_retry_call(policy: RetryPolicy, fn: Callable[[], str]) -> str:
    return retry_call(fn, policy=policy)


def _via_aretry_call(policy: RetryPolicy, fn: Callable[[], str]) -> str:
    async def afn() -> str:
        return fn()

    return asyncio.run(aretry_call(afn, policy=policy))


def _via_run_turn(policy: RetryPolicy, fn: Callable[[], str]) -> str:
    with _orch(retry=policy).session() as session:
        return session.run_turn(fn, model="m", usage=USAGE)[0]


def _via_arun_turn(policy: RetryPolicy, fn: Callable[[], str]) -> str:
    async def main() -> str:
        async def afn() -> str:
            return fn()

        async with _orch(retry=policy).asession() as session:
            return (await session.arun_turn(afn, model="m", usage=USAGE))[0]

    return asyncio.run(main())


ENTRY_POINTS = [_via_retry_call, _via_aretry_call, _via_run_turn, _via_arun_turn]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_a_policy_means_the_same_everywhere(entry: Callable[..., str]) -> None:
    """sleep, async_sleep, clock (HTTP-date hints), retry_on, on_retry and stats."""
    sleeps = Sleeps()
    seen: list[RetryAttempt] = []
    stats = RetryStats()
    # An HTTP-date hint 7 s after the policy's injected wall clock.
    date_hint = {"retry-after": "Sun, 01 Nov 2026 00:00:07 GMT"}
    policy = RetryPolicy(
        max_attempts=4,
        retry_on=lambda exc: isinstance(exc, StatusError) and exc.status_code != 418,
        on_retry=seen.append,
        stats=stats,
        sleep=sleeps,
        async_sleep=sleeps.async_sleep,
        clock=lambda: 1_793_491_200.0,  # 2026-11-01T00:00:00Z
        seed=7,
    )
    script: list[object] = [StatusError(503, date_hint), StatusError(400), "done"]

    def fn() -> str:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return str(item)

    assert entry(policy, fn) == "done"
    assert sleeps.slept[0] == 7.0  # read against the policy's clock, not the real one
    assert len(sleeps.slept) == 2  # retry_on retried the 400 too, the recipe would not
    assert [a.attempt for a in seen] == [1, 2]
    assert stats.snapshot() == {
        "calls": 1,
        "successes": 1,
        "failures": 2,
        "retries": 2,
        "exhausted": 0,
        "gave_up": 0,
        "by_scenario": {"provider_failure": 1, "bad_request": 1},
    }


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_retry_on_refusal_reraises_unchanged_everywhere(entry: Callable[..., str]) -> None:
    teapot = StatusError(418)
    policy = RetryPolicy(retry_on=lambda exc: False, sleep=Sleeps())

    def fn() -> str:
        raise teapot

    with pytest.raises(StatusError) as caught:
        entry(policy, fn)
    assert caught.value is teapot


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_exhaustion_is_the_same_everywhere(entry: Callable[..., str]) -> None:
    policy = RetryPolicy(max_attempts=2, sleep=Sleeps(), async_sleep=Sleeps().async_sleep)
    last = StatusError(503)
    errors = iter([StatusError(503), last])

    def fn() -> str:
        raise next(errors)

    with pytest.raises(RetriesExhaustedError) as caught:
        entry(policy, fn)
    assert caught.value.__cause__ is last
    assert caught.value.attempts == 2


# -- timeouts and the breaker -------------------------------------------------------------


class Hang:
    """A callable that blocks until released (bounded, so a bug cannot stall the suite)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self._started = threading.Semaphore(0)

    def __call__(self) -> str:
        self.calls += 1
        self._started.release()
        self.release.wait(10)
        return "late"

    def started(self, calls: int) -> int:
        """Wait (bounded) until ``calls`` calls began; return how many began in all.

        A timed-out turn's thread may start its call only after the turn gave
        up, on a loaded machine: count once they all can have started.
        """
        for _ in range(calls):
            assert self._started.acquire(timeout=5)
        return self.calls


def test_sync_timeouts_open_the_breaker_and_recovery_closes_it() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "api", failure_threshold=3, recovery_timeout_seconds=30, clock=lambda: now[0]
    )
    hang = Hang()
    orch = _orch(circuit_breaker=breaker, runner=DeadlineRunner())
    try:
        with orch.session() as session:
            for _ in range(3):
                with pytest.raises(TurnTimeoutError):
                    session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            assert breaker.metrics().state == "open"
            with pytest.raises(CircuitOpenError):
                session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            assert hang.started(3) == 3  # the open breaker did not call the provider
            hang.release.set()  # the hung calls finish late: dropped, never successes
            now[0] = 31.0
            assert session.run_turn(lambda: "back", model="m", usage=USAGE, timeout=5)[0] == "back"
            assert breaker.state is CircuitState.CLOSED
    finally:
        hang.release.set()
    metrics = breaker.metrics()
    assert metrics.failures == 3
    assert metrics.successes == 1  # only the real success, not the 3 late answers
    assert session.summary()["failures"] == {"llm_timeout": 3, "dependency_failed": 1}


def test_a_probe_that_times_out_reopens_instead_of_holding_its_slot() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "api", failure_threshold=1, recovery_timeout_seconds=10, clock=lambda: now[0]
    )
    hang = Hang()
    try:
        with _orch(circuit_breaker=breaker).session() as session:
            with pytest.raises(TurnTimeoutError):
                session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            now[0] = 11.0  # half-open: the next call is the probe
            with pytest.raises(TurnTimeoutError):
                session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            assert breaker.metrics().half_open_in_flight == 0
            with pytest.raises(CircuitOpenError) as rejected:
                session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            assert rejected.value.retry_after == pytest.approx(10.0)
            now[0] = 22.0
            assert session.run_turn(lambda: "ok", model="m", usage=USAGE, timeout=1)[0] == "ok"
    finally:
        hang.release.set()
    assert breaker.state is CircuitState.CLOSED


def test_async_timeouts_open_the_breaker_and_count_as_failures() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "api", failure_threshold=2, recovery_timeout_seconds=5, clock=lambda: now[0]
    )

    async def main() -> None:
        never = asyncio.Event()

        async def hang() -> str:
            await never.wait()
            return "late"

        async with _orch(circuit_breaker=breaker).asession() as session:
            for _ in range(2):
                with pytest.raises(TurnTimeoutError):
                    await session.arun_turn(hang, model="m", usage=USAGE, timeout=0.01)
            with pytest.raises(CircuitOpenError):
                await session.arun_turn(hang, model="m", usage=USAGE, timeout=0.01)
            now[0] = 6.0

            async def ok() -> str:
                return "ok"

            assert (await session.arun_turn(ok, model="m", usage=USAGE, timeout=1))[0] == "ok"

    asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.ignored, metrics.successes) == (2, 0, 1)
    assert breaker.state is CircuitState.CLOSED


def test_sync_turn_error_inside_the_deadline_passes_through_unchanged() -> None:
    error = ValueError("bad prompt")

    def fn() -> str:
        raise error

    with pytest.raises(ValueError, match="bad prompt") as caught, _orch().session() as session:
        session.run_turn(fn, model="m", usage=USAGE, timeout=5)
    assert caught.value is error


def test_async_turn_that_swallows_cancellation_still_ends_at_its_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[float, list[str]]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        seen: list[str] = []

        async def stubborn() -> str:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 5)
                except asyncio.CancelledError:
                    seen.append("cancel ignored")
            return "late"

        async with _orch().asession() as session:
            started = loop.time()
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(stubborn, model="m", usage=USAGE, timeout=0.05)
            elapsed = loop.time() - started
            stop.set()
            for _ in range(3):  # let it see the cancellation, ignore it and finish
                await asyncio.sleep(0)
        return elapsed, seen

    elapsed, seen = asyncio.run(main())
    assert elapsed < 1.0  # not the coroutine's own 5 s, let alone 10x the timeout
    assert seen == ["cancel ignored"]
    assert "ignored the cancellation" in caplog.text


def test_async_turn_that_never_stops_is_reported_while_it_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        reported = asyncio.Event()

        async def deaf() -> str:
            while not stop.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(stop.wait(), 5)
            return "late"

        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(deaf, model="m", usage=USAGE, timeout=0.02)
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, reported.set)  # past the second timeout
            await reported.wait()
            assert "did not stop when cancelled" in caplog.text
            stop.set()
            for _ in range(3):
                await asyncio.sleep(0)

    asyncio.run(main())


def test_a_full_pool_of_hung_calls_times_out_new_turns_without_starting_them() -> None:
    runner = DeadlineRunner(max_threads=2)
    hang = Hang()
    try:
        with _orch(runner=runner).session() as session:
            for _ in range(2):
                with pytest.raises(TurnTimeoutError) as caught:
                    session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
                assert caught.value.started
            with pytest.raises(TurnTimeoutError) as caught:
                session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
            assert not caught.value.started
            assert "no worker thread was free" in str(caught.value)
            assert hang.started(2) == 2
            assert runner.busy == 2
    finally:
        hang.release.set()


# -- budgets on every path ----------------------------------------------------------------


def test_a_bad_usage_argument_is_refused_before_fn_runs_and_leaks_nothing() -> None:
    budget = Budget(max_usd="1")
    called = []
    with _orch(budget=budget).session() as session:
        for _ in range(50):
            with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
                session.run_turn(lambda: called.append(1), model="m", usage={"input": 5})  # type: ignore[call-overload]
        assert session.run_turn(lambda: "ok", model="m", usage=USAGE)[0] == "ok"
    assert called == []
    assert budget.reserved_usd == 0
    assert budget.spent_usd == COST


def test_every_failure_path_releases_its_reservation() -> None:
    budget = Budget(max_usd="1")
    orch = _orch(budget=budget, budget_usd="1")

    def boom() -> str:
        raise StatusError(400)

    with orch.session() as session:
        for _ in range(20):
            with pytest.raises(StatusError):
                session.run_turn(boom, model="m", estimate=USAGE)
    assert budget.reserved_usd == 0
    assert budget.reserved_requests == 0
    assert budget.spent_usd == 0


def test_an_unenforced_budget_keeps_charging_past_its_cap() -> None:
    budget = Budget(max_usd=COST * 2)
    with _orch(budget=budget, enforce_budget=False).session() as session:
        for _ in range(5):
            session.run_turn(lambda: "ok", model="m", usage=USAGE)
    assert budget.spent_usd == COST * 5
    assert budget.requests == 5
    assert session.summary()["budget_warnings"] == 3


class BilledError(Exception):
    """Shaped like openai's LengthFinishReasonError: the completion rides along."""

    class _Completion:
        class usage:  # noqa: N801 - an SDK-shaped attribute
            prompt_tokens = 1000
            completion_tokens = 13_500
            total_tokens = 14_500

    completion = _Completion()


def test_a_billed_call_that_raises_is_charged() -> None:
    budget = Budget(max_usd="10")

    def parse() -> str:
        raise BilledError("length limit reached")

    with pytest.raises(BilledError), _orch(budget=budget).session() as session:
        session.run_turn(parse, model="m")
    expected = Decimal("0.2055")  # 1000 * 3e-6 + 13500 * 15e-6
    assert budget.spent_usd == expected
    assert session.tracker.total_cost() == expected
    failed = [e for e in session.events() if e.name == EventName.TURN_FAILED]
    assert failed[0].data["cost_usd"] == "0.2055"
    assert failed[0].data["output_tokens"] == 13_500


def test_a_budget_without_estimates_holds_the_expected_cost() -> None:
    budget = Budget(max_usd=COST * 10)
    with _orch(budget=budget).session() as session:
        session.run_turn(lambda: "warm", model="m", usage=USAGE)

        held = []

        def fn() -> str:
            held.append(budget.reserved_usd)
            return "ok"

        session.run_turn(fn, model="m", usage=USAGE)
    assert held == [COST]


def _admitted_at_once(orch: Orchestrator, turns: int) -> tuple[int, Any]:
    """Start ``turns`` async turns of one session together; return how many ran, and it."""

    async def main() -> tuple[int, Any]:
        gate = asyncio.Event()

        async def call() -> str:
            await gate.wait()  # every turn holds its budget before any settles
            return "ok"

        async def one(session: Any) -> bool:
            try:
                await session.arun_turn(call, model="m", usage=USAGE)
            except BudgetExceededError:
                return False
            return True

        async with orch.asession() as session:
            tasks = [asyncio.ensure_future(one(session)) for _ in range(turns)]
            await asyncio.sleep(0)
            gate.set()
            results = await asyncio.gather(*tasks)
        return sum(results), session

    return asyncio.run(main())


def test_concurrent_async_turns_on_a_shared_budget_stay_within_the_bound() -> None:
    budget = Budget(max_usd="0.05", default_estimate=USAGE)
    done, _ = _admitted_at_once(_orch(budget=budget), 200)
    assert done == 11  # floor(0.05 / 0.0045)
    assert budget.spent_usd == COST * 11  # actual == estimate: no overshoot at all
    assert budget.spent_usd <= Decimal("0.05")
    assert budget.reserved_usd == 0


def test_threads_on_a_shared_budget_without_estimates_overshoot_within_the_bound() -> None:
    budget = Budget(max_usd="0.05")
    start = threading.Barrier(16)

    def worker() -> None:
        with _orch(budget=budget).session() as session:
            start.wait(5)
            while True:
                try:
                    session.run_turn(lambda: "ok", model="m", usage=USAGE)
                except BudgetExceededError:
                    return

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Cold start: the first turns in flight hold nothing (no history, no default),
    # so at most those 16 can overshoot, each by its whole cost; every later turn
    # holds the learned cost, whose actual equals it.
    assert budget.spent_usd <= Decimal("0.05") + COST * 16
    assert budget.reserved_usd == 0
    assert budget.requests >= 11


# -- what fn returns ----------------------------------------------------------------


class Stream:
    """Named like openai's Stream: a response that is only known once consumed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_stream_result_is_refused_with_a_clear_error() -> None:
    stream = Stream()
    with pytest.raises(StreamResultError, match="Consume it inside fn"), _orch().session() as s:
        s.run_turn(lambda: stream, model="m")
    assert stream.closed
    assert s.tracker.turns == 0


def test_a_stream_result_with_usage_given_is_the_callers_business() -> None:
    stream = Stream()
    with _orch().session() as session:
        assert session.run_turn(lambda: stream, model="m", usage=USAGE)[0] is stream


class Choice:
    def __init__(self, finish_reason: str | None) -> None:
        self.finish_reason = finish_reason


class Completion:
    def __init__(self, finish_reason: str | None, completion_tokens: int) -> None:
        self.choices = [Choice(finish_reason)]
        self.usage = {"prompt_tokens": 10, "completion_tokens": completion_tokens}


def test_a_silent_empty_answer_is_a_provider_failure_and_is_retried() -> None:
    answers = iter([Completion(None, 0), Completion("stop", 5)])
    sleeps = Sleeps()
    with _orch(retry=RetryPolicy(sleep=sleeps)).session() as session:
        result, usage = session.run_turn(lambda: next(answers), model="m")
    assert result.choices[0].finish_reason == "stop"
    assert usage.output_tokens == 5
    assert session.summary()["failures"] == {"provider_failure": 1}
    assert len(sleeps.slept) == 1


def test_a_silent_empty_answer_without_retries_fails_the_turn() -> None:
    with pytest.raises(EmptyResponseError, match="finish_reason None"), _orch().session() as s:
        s.run_turn(lambda: Completion(None, 0), model="m")
    assert s.summary()["failure_class"] == "provider_failure"


def test_an_empty_bedrock_body_is_a_silent_failure() -> None:
    body = {"ResponseMetadata": {"HTTPStatusCode": 200}}
    with pytest.raises(EmptyResponseError, match="without output"), _orch().session() as s:
        s.run_turn(lambda: body, model="m")


def test_a_finished_answer_with_no_tokens_is_not_a_failure() -> None:
    with _orch().session() as session:
        session.run_turn(lambda: Completion("stop", 0), model="m")
    assert session.summary()["failures"] == {}


# -- the session itself ------------------------------------------------------------


def test_a_guardrail_raised_by_fn_records_a_failed_turn() -> None:
    def fn() -> str:
        raise GuardrailViolatedError("the model asked for secrets")

    with pytest.raises(GuardrailViolatedError), _orch().session() as session:
        session.run_turn(fn, model="m", usage=USAGE)
    names = [e.name for e in session.events()]
    assert EventName.TURN_FAILED in names
    assert session.summary()["failures"] == {"validation_error": 1}


def test_one_session_entered_from_two_threads_admits_one() -> None:
    for _ in range(50):
        orch = _orch()
        session = orch.session()
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def enter(
            session: Any = session,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait(5)
            try:
                session.__enter__()
            except SessionStateError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=enter) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert len(errors) == 1
        assert len(orch.registry) == 1
        session.__exit__(None, None, None)
        assert session.status is AgentStatus.COMPLETED
        assert len(orch.registry) == 0


BAD_ARGUMENTS: list[tuple[str, object]] = [
    ("retry", "three"),
    ("budget", 5.0),
    ("permissions", ["writer"]),
    ("circuit_breaker", "breaker"),
    ("quality_gate", "strict"),
    ("policy_engine", []),
    ("registry", {}),
    ("clock", 5),
    ("wall_clock", "now"),
    ("sleep", 0),
    ("async_sleep", 0),
    ("enforce_budget", "no"),
    ("max_iterations", True),
    ("max_total_retries", -1),
    ("event_capacity", 0),
    ("default_estimate", {"input_tokens": 1}),
    ("runner", object()),
    ("project_id", 1.5),
    ("hooks", [3]),
    ("hooks", "hooks"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
def test_a_wrong_argument_fails_at_construction_naming_it(name: str, value: object) -> None:
    with pytest.raises(InvalidValueError) as caught:
        _orch(**{name: value})
    assert name.rstrip("s") in str(caught.value)
    shown = repr(value[0] if isinstance(value, list) and value else value)
    assert shown[:20] in str(caught.value)


BAD_TURN_ARGUMENTS: list[tuple[str, object]] = [
    ("fallback_models", "model-b"),
    ("fallback_models", ["ok", ""]),
    ("timeout", 1e300),
    ("timeout", True),
    ("timeout", 0),
    ("timeout", float("nan")),
    ("model", 5),
    ("estimate", 5),
]


def test_a_callable_that_is_not_one_is_refused_before_anything_runs() -> None:
    with _orch().session() as session:
        with pytest.raises(InvalidValueError, match="fn must be callable, got 'call me'"):
            session.run_turn("call me", model="m")  # type: ignore[call-overload]
        with pytest.raises(InvalidValueError, match="fn must be callable, got 3"):
            session.run_tool("calc", 3)  # type: ignore[arg-type]
        assert session.summary()["turns"] == 0


@pytest.mark.parametrize(("name", "value"), BAD_TURN_ARGUMENTS)
def test_a_wrong_turn_argument_fails_before_anything_runs(name: str, value: object) -> None:
    called = []
    with _orch().session() as session:
        with pytest.raises(InvalidValueError) as caught:
            session.run_turn(lambda: called.append(1), **{name: value})  # type: ignore[call-overload]
        assert name in str(caught.value)
        assert session.summary()["turns"] == 0
    assert called == []


def test_async_wrong_turn_argument_fails_the_same() -> None:
    async def main() -> None:
        async def fn() -> str:
            return "x"

        async with _orch().asession() as session:
            with pytest.raises(InvalidValueError, match="fallback_models"):
                await session.arun_turn(fn, fallback_models="model-b")

    asyncio.run(main())


def test_a_silent_empty_answer_counts_against_the_breaker() -> None:
    breaker = CircuitBreaker("api", failure_threshold=2)
    with _orch(circuit_breaker=breaker).session() as session:
        for _ in range(2):
            with pytest.raises(EmptyResponseError):
                session.run_turn(lambda: Completion(None, 0), model="m")
        with pytest.raises(CircuitOpenError):
            session.run_turn(lambda: Completion("stop", 3), model="m")
    assert breaker.metrics().failures == 2


def test_concurrent_turns_of_one_session_stay_within_its_own_cap() -> None:
    done, session = _admitted_at_once(_orch(budget_usd="0.05", default_estimate=USAGE), 200)
    assert done == 11
    assert session.tracker.total_cost() == COST * 11
    assert session.summary()["failures"] == {"budget_exceeded": 189}


def test_the_session_cap_counts_a_billed_failure_and_refuses_after_it() -> None:
    def parse() -> str:
        raise BilledError("length limit reached")

    with _orch(budget_usd="0.2").session() as session:
        with pytest.raises(BilledError):
            session.run_turn(parse, model="m")  # $0.2055: over the cap, but billed
        with pytest.raises(BudgetExceededError, match=r"spent \$0\.2055"):
            session.run_turn(lambda: "more", model="m", usage=USAGE)


def test_an_unenforced_session_cap_keeps_counting() -> None:
    with _orch(budget_usd=COST * 2, enforce_budget=False).session() as session:
        for _ in range(4):
            session.run_turn(lambda: "ok", model="m", usage=USAGE)
    assert session.tracker.total_cost() == COST * 4
    assert session.summary()["budget_warnings"] == 2


def test_a_failed_attempt_gives_its_hold_on_the_session_cap_back() -> None:
    def boom() -> str:
        raise StatusError(400)

    with _orch(budget_usd=COST * 2).session() as session:
        for _ in range(10):
            with pytest.raises(StatusError):
                session.run_turn(boom, model="m", estimate=USAGE)
        # Had the holds leaked, the cap would refuse at once.
        session.run_turn(lambda: "ok", model="m", usage=USAGE, estimate=USAGE)
        session.run_turn(lambda: "ok", model="m", usage=USAGE, estimate=USAGE)
        with pytest.raises(BudgetExceededError):
            session.run_turn(lambda: "ok", model="m", usage=USAGE, estimate=USAGE)


# -- a timeout under a retry policy, an error inside the deadline, the async sleep ------


def _turn_events(session: Any) -> list[tuple[str, str | None, dict[str, object]]]:
    """The turn's own events: name, failure class and data (session and status events left out)."""
    kept = {
        EventName.TURN_FAILED,
        EventName.TURN_RETRIED,
        EventName.TURN_COMPLETED,
        EventName.BREAKER_REJECTED,
        EventName.MODEL_SWITCHED,
    }
    return [
        (str(e.name), None if e.failure_class is None else e.failure_class.value, dict(e.data))
        for e in session.events()
        if e.name in kept
    ]


def _completed(attempt: int, model: str = "m", duration: float = 0.0) -> dict[str, object]:
    return {
        "model": model,
        "attempt": attempt,
        "duration_seconds": duration,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": "0.0045",
        "usage_unknown": False,
    }


def _no_sync_sleep(seconds: float) -> None:
    raise AssertionError(f"an async turn slept {seconds}s with the sync sleep")


def test_a_turn_that_times_out_then_succeeds_is_retried_once_with_its_backoff() -> None:
    """Every attempt has the whole deadline: 0.5 s, so the second makes it on a busy machine."""
    clock = FakeClock()
    hang = Hang()
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        return hang() if len(calls) == 1 else "second try"

    policy = RetryPolicy(max_attempts=3, base_delay=0.25, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=clock.sleep, runner=DeadlineRunner())
    try:
        with orch.session() as session:
            result, usage = session.run_turn(fn, model="m", usage=USAGE, timeout=0.5)
            assert session.policy_context().timed_out is True
    finally:
        hang.release.set()
    assert (result, usage) == ("second try", USAGE)
    assert len(calls) == 2
    assert clock.slept == [0.25]  # the backoff of retry 1, slept once
    assert _turn_events(session) == [
        (
            "turn.failed",
            "llm_timeout",
            {"model": "m", "attempt": 1, "duration_seconds": 0.0, "error_type": "TurnTimeoutError"},
        ),
        (
            "turn.retried",
            "llm_timeout",
            {"model": "m", "attempt": 1, "delay_seconds": 0.25, "scenario": "llm_timeout"},
        ),
        ("turn.completed", None, _completed(attempt=2)),
    ]
    failed = next(e for e in session.events() if e.name == EventName.TURN_FAILED)
    assert failed.detail == "TurnTimeoutError: turn on model 'm' did not finish within 0.5 seconds"
    summary = session.summary()
    assert summary["turns"] == 1
    assert summary["failures"] == {"llm_timeout": 1}
    assert summary["recovery"] == {
        "retries": 1,
        "retries_exhausted": False,
        "max_total_retries": None,
    }
    assert session.tracker.total_cost() == COST  # charged once: the timed-out call billed nothing


def test_a_timed_out_turn_moves_to_the_fallback_model() -> None:
    clock = FakeClock()
    hang = Hang()
    seen: list[str] = []

    def complete(model: str) -> str:
        seen.append(model)
        return hang() if model == "m" else f"answer from {model}"

    policy = RetryPolicy(max_attempts=3, base_delay=0.5, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=clock.sleep, runner=DeadlineRunner())
    try:
        with orch.session() as session:
            result, _ = session.run_turn(
                complete, model="m", fallback_models=["backup"], usage=USAGE, timeout=0.5
            )
    finally:
        hang.release.set()
    assert result == "answer from backup"
    assert seen == ["m", "backup"]
    assert clock.slept == [0.5]
    assert [(name, data.get("model")) for name, _, data in _turn_events(session)] == [
        ("turn.failed", "m"),
        ("turn.model_switched", "backup"),
        ("turn.retried", "backup"),
        ("turn.completed", "backup"),
    ]


def test_timeouts_exhaust_the_policy_with_every_attempt_recorded() -> None:
    clock = FakeClock()
    hang = Hang()
    policy = RetryPolicy(max_attempts=2, base_delay=0.25, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=clock.sleep, runner=DeadlineRunner())
    try:
        with pytest.raises(RetriesExhaustedError) as caught, orch.session() as session:
            session.run_turn(hang, model="m", usage=USAGE, timeout=0.02)
    finally:
        hang.release.set()
    assert caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, TurnTimeoutError)
    assert caught.value.scenario.value == "llm_timeout"
    assert clock.slept == [0.25]
    assert [(name, data["attempt"]) for name, _, data in _turn_events(session)] == [
        ("turn.failed", 1),
        ("turn.retried", 1),
        ("turn.failed", 2),
    ]
    summary = session.summary()
    assert summary["failures"] == {"llm_timeout": 2}
    assert summary["recovery"]["retries_exhausted"] is True  # type: ignore[index]
    assert summary["failure_class"] == "llm_timeout"


class UnavailableError(Exception):
    """A provider's 503, as an SDK raises it."""

    status_code = 503


def test_an_error_raised_inside_a_timed_turn_is_classified_and_retried() -> None:
    """The deadline runner hands fn's exception back: it is this 503 that is retried."""
    clock = FakeClock()
    first = UnavailableError("overloaded")
    script: list[object] = [first, "recovered"]

    def fn() -> object:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    policy = RetryPolicy(max_attempts=3, base_delay=0.25, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=clock.sleep, runner=DeadlineRunner())
    with orch.session() as session:
        result, _ = session.run_turn(fn, model="m", usage=USAGE, timeout=5)
    assert result == "recovered"
    assert clock.slept == [0.25]
    assert _turn_events(session) == [
        (
            "turn.failed",
            "provider_failure",
            {"model": "m", "attempt": 1, "duration_seconds": 0.0, "error_type": "UnavailableError"},
        ),
        (
            "turn.retried",
            "provider_failure",
            {"model": "m", "attempt": 1, "delay_seconds": 0.25, "scenario": "provider_failure"},
        ),
        ("turn.completed", None, _completed(attempt=2)),
    ]
    assert session.summary()["failures"] == {"provider_failure": 1}
    assert session.policy_context().timed_out is False  # an error inside the deadline is no timeout


def test_an_error_raised_inside_a_timed_turn_surfaces_unchanged_without_a_policy() -> None:
    error = UnavailableError("overloaded")

    def fn(model: str) -> str:
        raise error

    orch = _orch(runner=DeadlineRunner(), clock=FakeClock())
    with pytest.raises(UnavailableError) as caught, orch.session() as s:
        s.run_turn(fn, model="m", usage=USAGE, timeout=5)
    assert caught.value is error
    assert caught.value.__cause__ is None  # not wrapped, not chained to a timeout
    assert _turn_events(s) == [
        (
            "turn.failed",
            "provider_failure",
            {"model": "m", "attempt": 1, "duration_seconds": 0.0, "error_type": "UnavailableError"},
        )
    ]
    assert s.summary()["failure_class"] == "provider_failure"
    assert s.policy_context().timed_out is False


def test_arun_turn_awaits_the_injected_async_sleep_with_each_backoff() -> None:
    clock = FakeClock()
    script: list[object] = [UnavailableError("down"), UnavailableError("still down"), "up"]

    async def fn() -> object:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    policy = RetryPolicy(max_attempts=3, base_delay=0.25, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=_no_sync_sleep, async_sleep=clock.asleep)

    async def main() -> tuple[object, Any]:
        async with orch.asession() as session:
            result, _ = await session.arun_turn(fn, model="m", usage=USAGE)
        return result, session

    result, session = asyncio.run(main())
    assert result == "up"
    assert clock.slept == [0.25, 0.5]  # awaited, with the delays the policy computed
    retried = [data for name, _, data in _turn_events(session) if name == "turn.retried"]
    assert [(d["attempt"], d["delay_seconds"]) for d in retried] == [(1, 0.25), (2, 0.5)]
    assert session.summary()["recovery"]["retries"] == 2


def test_arun_turn_uses_the_policys_async_sleep_when_the_orchestrator_has_none() -> None:
    clock = FakeClock()
    failures = [UnavailableError("down")]

    async def fn() -> str:
        if failures:
            raise failures.pop()
        return "up"

    policy = RetryPolicy(
        base_delay=0.75, jitter="none", sleep=_no_sync_sleep, async_sleep=clock.asleep
    )

    async def main() -> str:
        async with _orch(retry=policy).asession() as session:
            return (await session.arun_turn(fn, model="m", usage=USAGE))[0]

    assert asyncio.run(main()) == "up"
    assert clock.slept == [0.75]


def test_a_retry_with_no_wait_does_not_sleep_at_all() -> None:
    """Testing mode makes every delay 0: neither loop calls its sleep for a zero wait."""
    failures = [UnavailableError("down"), UnavailableError("down")]

    def fn() -> str:
        if failures:
            raise failures.pop()
        return "up"

    async def afn() -> str:
        return fn()

    policy = RetryPolicy(
        max_attempts=3, sleep=_no_sync_sleep, async_sleep=_never_awaited_sleep, base_delay=1
    )

    async def main() -> str:
        async with _orch(retry=policy).asession() as session:
            return (await session.arun_turn(afn, model="m", usage=USAGE))[0]

    with testing(attempts=3):
        with _orch(retry=policy).session() as session:
            assert session.run_turn(fn, model="m", usage=USAGE)[0] == "up"
        failures.extend([UnavailableError("down"), UnavailableError("down")])
        assert asyncio.run(main()) == "up"
    assert session.summary()["recovery"]["retries"] == 2  # type: ignore[index]


async def _never_awaited_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s for a zero wait")


def test_a_timed_async_turn_that_times_out_then_succeeds_is_retried() -> None:
    clock = FakeClock()

    async def main() -> tuple[str, Any]:
        never = asyncio.Event()
        calls: list[int] = []

        async def fn() -> str:
            calls.append(1)
            if len(calls) == 1:
                await never.wait()
            return "second try"

        policy = RetryPolicy(max_attempts=3, base_delay=0.25, jitter="none")
        orch = _orch(retry=policy, clock=clock, sleep=_no_sync_sleep, async_sleep=clock.asleep)
        async with orch.asession() as session:
            result, _ = await session.arun_turn(fn, model="m", usage=USAGE, timeout=0.02)
        assert len(calls) == 2
        return result, session

    result, session = asyncio.run(main())
    assert result == "second try"
    assert clock.slept == [0.25]
    assert [(name, fc, data["attempt"]) for name, fc, data in _turn_events(session)] == [
        ("turn.failed", "llm_timeout", 1),
        ("turn.retried", "llm_timeout", 1),
        ("turn.completed", None, 2),
    ]


# -- the async deadline: a cancelled caller, a late failure, a call that honours it -------


def test_a_caller_cancelled_while_its_timed_turn_waits_cancels_the_call_too() -> None:
    async def main() -> tuple[list[str], Any]:
        seen: list[str] = []
        started = asyncio.Event()

        async def slow() -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            return "never"

        async with _orch().asession() as session:
            task = asyncio.ensure_future(session.arun_turn(slow, model="m", timeout=30))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(3):
                await asyncio.sleep(0)
        return seen, session

    seen, session = asyncio.run(main())
    assert seen == ["cancelled"]
    (failed,) = [e for e in session.events() if e.name == EventName.TURN_FAILED]
    assert failed.failure_class is not None
    assert failed.failure_class.value == "cancelled"
    assert failed.data["error_type"] == "CancelledError"
    assert session.summary()["failures"] == {"cancelled": 1}


def test_a_late_call_that_fails_after_its_deadline_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="techrevati.runtime.orchestrator")

    async def main() -> None:
        stop = asyncio.Event()

        async def stubborn() -> str:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await stop.wait()  # ignores the cancellation, then fails
            raise ValueError("failed late")

        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError) as caught:
                await session.arun_turn(stubborn, model="m", usage=USAGE, timeout=0.01)
            assert str(caught.value) == "turn on model 'm' did not finish within 0.01 seconds"
            stop.set()
            for _ in range(5):
                await asyncio.sleep(0)

    asyncio.run(main())
    late = [
        r
        for r in caplog.records
        if r.getMessage() == "a turn's late call failed after its deadline"
    ]
    assert len(late) == 1
    assert late[0].exc_info is not None
    assert str(late[0].exc_info[1]) == "failed late"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        "turn on model 'm' passed its 0.01s deadline and ignored the cancellation; "
        "it finished later and its result was dropped"
    ) in warned


def test_a_call_that_stops_when_cancelled_at_its_deadline_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="techrevati.runtime.orchestrator")

    async def main() -> None:
        async def polite() -> str:
            await asyncio.Event().wait()
            return "never"

        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(polite, model="m", usage=USAGE, timeout=0.01)
            past = asyncio.Event()  # past the second deadline: no "still running" report
            asyncio.get_running_loop().call_later(0.03, past.set)
            await past.wait()

    asyncio.run(main())
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "ignored the cancellation" not in messages
    assert "did not stop when cancelled" not in messages
    assert "late call failed" not in messages


def test_a_still_running_call_is_reported_once_with_its_model_and_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        reported = asyncio.Event()

        async def deaf(model: str) -> str:
            while not stop.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await stop.wait()
            return "late"

        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(deaf, model="gpt-x", usage=USAGE, timeout=0.02)
            asyncio.get_running_loop().call_later(0.06, reported.set)
            await reported.wait()
            stop.set()
            for _ in range(3):
                await asyncio.sleep(0)

    asyncio.run(main())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        warned.count(
            "turn on model 'gpt-x' passed its 0.02s deadline and did not stop when cancelled; "
            "it runs on in the background and its result will be dropped"
        )
        == 1
    )


# -- what a turn writes: usage records, failure data, budget events ------------------------


class UsageSink:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def write_usage(self, record: UsageRecord) -> None:
        self.records.append(record)


STAMP = datetime(2026, 11, 1, tzinfo=UTC)


def test_every_billed_attempt_writes_its_usage_record() -> None:
    clock = FakeClock()
    sink = UsageSink()
    script: list[object] = [BilledError("length limit reached"), "ok"]

    def fn() -> object:
        clock.advance(1.25)
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    orch = _orch(
        project_id="p1",
        sinks=[sink],
        clock=clock,
        wall_clock=lambda: STAMP,
        retry=RetryPolicy(
            max_attempts=2,
            sleep=clock.sleep,
            retry_on=lambda exc: True,
            base_delay=0.5,
            jitter="none",
        ),
    )
    with orch.session() as session:
        session.run_turn(fn, model="m", usage=USAGE)
    worker_id = session.worker.id if session.worker else ""
    common: dict[str, Any] = {
        "model": "m",
        "duration_seconds": 1.25,
        "role": "writer",
        "phase": "draft",
        "session_id": session.id,
        "worker_id": worker_id,
        "project_id": "p1",
        "timestamp": STAMP,
        "priced": True,
    }
    assert sink.records == [
        UsageRecord(
            input_tokens=1000, output_tokens=13_500, cost_usd=Decimal("0.2055"), **common
        ),  # the failed attempt's bill, read from its exception
        UsageRecord(input_tokens=1000, output_tokens=100, cost_usd=COST, **common),
    ]
    failed = next(e for e in session.events() if e.name == EventName.TURN_FAILED)
    assert failed.data == {
        "model": "m",
        "attempt": 1,
        "duration_seconds": 1.25,
        "error_type": "BilledError",
        "input_tokens": 1000,
        "output_tokens": 13_500,
        "cost_usd": "0.2055",
    }
    assert session.tracker.total_cost() == Decimal("0.2055") + COST


def test_budget_refusals_are_events_whether_enforced_or_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = UsageSnapshot(input_tokens=1_000_000)  # $3
    with (
        _orch(budget_usd="1").session() as enforced,
        pytest.raises(BudgetExceededError) as caught,
    ):
        enforced.run_turn(lambda: "never", model="m", estimate=big)
    (refused,) = [e for e in enforced.events() if e.name == EventName.BUDGET_EXCEEDED]
    assert refused.failure_class is not None
    assert refused.failure_class.value == "budget_exceeded"
    assert (refused.detail, refused.data) == (str(caught.value), {"model": "m", "enforced": True})
    assert enforced.summary()["failures"] == {"budget_exceeded": 1}
    assert enforced.summary()["budget_warnings"] == 0

    with _orch(budget_usd="1", enforce_budget=False).session() as warned:
        assert warned.run_turn(lambda: "ran", model="m", estimate=big, usage=USAGE)[0] == "ran"
    (noted,) = [e for e in warned.events() if e.name == EventName.BUDGET_EXCEEDED]
    assert noted.failure_class is None
    assert noted.data == {"model": "m", "enforced": False}
    assert warned.summary()["failures"] == {}
    assert warned.summary()["budget_warnings"] == 1
    assert f"budget exceeded (not enforced): {noted.detail}" in caplog.text


def test_the_session_cap_expects_the_last_cost_of_a_model_and_refuses_before_calling() -> None:
    called: list[str] = []

    def fn(model: str) -> str:
        called.append(model)
        return model

    with _orch(budget_usd=COST * Decimal("1.5")).session() as session:
        session.run_turn(fn, model="m", usage=USAGE)  # nothing known yet: held at nothing
        with pytest.raises(BudgetExceededError):
            session.run_turn(fn, model="m", usage=USAGE)  # expects COST again: over the cap
        session.run_turn(fn, model="free", usage=USAGE)  # unpriced: free, still room for it
    assert called == ["m", "free"]


def test_a_spent_cap_refuses_even_a_turn_that_looks_free() -> None:
    called: list[int] = []
    with _orch(budget_usd=COST).session() as session:
        session.run_turn(lambda: "one", model="m", usage=USAGE)  # exactly the cap
        with pytest.raises(BudgetExceededError):
            session.run_turn(lambda: called.append(1), model="free", usage=USAGE)
    assert called == []


def test_the_default_estimate_is_held_when_a_model_has_no_history() -> None:
    called: list[int] = []
    big = UsageSnapshot(input_tokens=1_000_000)  # $3
    orch = _orch(budget_usd="1", default_estimate=big)
    with orch.session() as session, pytest.raises(BudgetExceededError):
        session.run_turn(lambda: called.append(1), model="m", usage=USAGE)
    assert called == []


class FlakyBudget(Budget):
    """A budget whose hold or settlement fails once with an error of its own."""

    def __init__(self, *, hold: bool = False, settle: bool = False) -> None:
        super().__init__(max_usd="10")
        self.fail_hold = hold
        self.fail_settle = settle

    def _hold(self, model: str, estimate: UsageSnapshot | None) -> Any:
        if self.fail_hold:
            self.fail_hold = False
            raise RuntimeError("hold failed")
        return super()._hold(model, estimate)

    def _settle_hold(self, *args: Any, **kwargs: Any) -> None:
        if self.fail_settle:
            self.fail_settle = False
            raise RuntimeError("settle failed")
        super()._settle_hold(*args, **kwargs)


def test_a_hold_that_fails_gives_the_caps_hold_back_and_raises() -> None:
    budget = FlakyBudget(hold=True)
    with _orch(budget=budget, budget_usd=COST).session() as session:
        with pytest.raises(RuntimeError, match="hold failed"):
            session.run_turn(lambda: "never", model="m", estimate=USAGE)
        # the cap's hold was given back: the whole cap is free for the next turn
        assert session.run_turn(lambda: "ok", model="m", estimate=USAGE, usage=USAGE)[0] == "ok"
    assert budget.reserved_usd == 0
    assert budget.spent_usd == COST


def test_a_settlement_that_fails_releases_the_holds_and_raises() -> None:
    budget = FlakyBudget(settle=True)
    with _orch(budget=budget).session() as session:
        with pytest.raises(RuntimeError, match="settle failed"):
            session.run_turn(lambda: "ok", model="m", estimate=USAGE, usage=USAGE)
        assert budget.reserved_usd == 0
        assert budget.reserved_requests == 0
        session.run_turn(lambda: "ok", model="m", estimate=USAGE, usage=USAGE)
    assert budget.reserved_usd == 0
    assert budget.spent_usd == COST


def test_a_retry_on_a_fallback_model_is_announced_with_both_models() -> None:
    clock = FakeClock()

    def complete(model: str) -> str:
        if model == "m":
            raise StatusError(503)
        return model

    policy = RetryPolicy(max_attempts=3, sleep=clock.sleep, base_delay=0.5, jitter="none")
    with _orch(retry=policy, clock=clock).session() as session:
        assert (
            session.run_turn(complete, model="m", fallback_models=["backup", "third"], usage=USAGE)[
                0
            ]
            == "backup"
        )
    (switched,) = [e for e in session.events() if e.name == EventName.MODEL_SWITCHED]
    assert (switched.detail, switched.data) == (
        "m -> backup",
        {"from_model": "m", "model": "backup"},
    )
    (retried,) = [e for e in session.events() if e.name == EventName.TURN_RETRIED]
    assert retried.detail == (
        "provider_failure: recovery attempt 1 of 3; retry_with_backoff, switch_provider; "
        "wait 0.500s"
    )
    assert session.tracker.per_model_summary()["backup"]["turns"] == 1
    assert "m" not in session.tracker.per_model_summary()


class Redirect(BaseHook):
    """Moves the first attempt to ``backup``; records every call it is shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def before_model(self, call: ModelCall) -> ModelCall | None:
        self.seen.append((call.model, call.attempt))
        return replace(call, model="backup") if call.attempt == 1 else None


def test_a_retry_shows_the_hooks_the_next_attempt_on_the_model_they_chose() -> None:
    clock = FakeClock()
    hook = Redirect()
    seen: list[str] = []

    def fn(model: str) -> str:
        seen.append(model)
        if len(seen) == 1:
            raise StatusError(503)
        return model

    policy = RetryPolicy(max_attempts=2, sleep=clock.sleep)
    with _orch(hooks=[hook], retry=policy, clock=clock).session() as session:
        assert session.run_turn(fn, model="m", usage=USAGE)[0] == "backup"
    assert hook.seen == [("m", 1), ("backup", 2)]
    assert seen == ["backup", "backup"]


def test_the_iteration_limit_is_a_budget_failure_named_in_the_error() -> None:
    with _orch(max_iterations=1).session() as session:
        session.run_turn(lambda: "one")
        with pytest.raises(MaxIterationsExceededError) as caught:
            session.run_turn(lambda: "two")
    assert caught.value.max_iterations == 1
    assert session.summary()["failures"] == {"budget_exceeded": 1}
    assert session.summary()["turns"] == 1


# -- which callables get the model ----------------------------------------------------------


class Client:
    def complete(self, model: str) -> str:
        return f"method:{model}"

    def __call__(self, model: str) -> str:
        return f"object:{model}"


def _takes_model(prefix: str, model: str) -> str:
    return f"{prefix}:{model}"


def _keyword_only(*, model: str = "default") -> str:
    return f"kw:{model}"


def test_every_kind_of_callable_that_takes_model_gets_it() -> None:
    calls: list[Callable[..., str]] = [
        Client().complete,
        Client(),
        functools.partial(_takes_model, "partial"),
        _keyword_only,
        lambda model: f"lambda:{model}",
    ]
    with _orch().session() as session:
        results = [session.run_turn(fn, model="gpt-x")[0] for fn in calls]
        assert session.run_turn(lambda: "no model")[0] == "no model"
        assert session.run_turn(functools.partial(str, "text"))[0] == "text"
    assert results == [
        "method:gpt-x",
        "object:gpt-x",
        "partial:gpt-x",
        "kw:gpt-x",
        "lambda:gpt-x",
    ]


def test_a_callable_without_a_signature_is_called_without_the_model() -> None:
    from techrevati.runtime._turns import _accepts_model

    assert _accepts_model(dict) is False  # a class: no code object, no usable signature
    assert _accepts_model(print) is False
    assert _accepts_model(_takes_model) is True
    assert _accepts_model(_takes_model) is True  # cached the second time
    assert _accepts_model(Client().complete) is True
    assert _accepts_model(lambda models: models) is False


# -- reading what fn returned or raised (_responses) -------------------------------------------


def _ns(**fields: object) -> Any:
    return SimpleNamespace(**fields)


class Candidate:
    def __init__(self, finish_reason: object) -> None:
        self.finish_reason = finish_reason


class FinishReason:
    """google-genai's FinishReason enum member: a ``.name``."""

    def __init__(self, name: str) -> None:
        self.name = name


SILENT: list[tuple[object, str | None]] = [
    # OpenAI Chat Completions
    (_ns(choices=[]), "no choices and no output tokens"),
    (_ns(choices=[Choice(None)]), "finish_reason None, no output tokens"),
    (_ns(choices=[Choice("weird")]), "finish_reason 'weird', no output tokens"),
    (_ns(choices=[Choice("stop")]), None),
    (_ns(choices=[Choice("length")]), None),
    (_ns(choices=[Choice("tool_calls")]), None),
    (_ns(choices=[Choice("content_filter")]), None),
    (_ns(choices=[Choice("function_call")]), None),
    (_ns(choices=5), "no choices and no output tokens"),  # not iterable
    # Anthropic
    (_ns(stop_reason=None, content=[]), "stop_reason None, no output tokens"),
    (_ns(stop_reason="end_turn", content=[]), None),
    (_ns(stop_reason="refusal", content=[]), None),
    (_ns(stop_reason="pause_turn", content=[]), None),
    (_ns(stop_reason="model_context_window_exceeded", content=[]), None),
    (_ns(stop_reason="aborted", content=[]), "stop_reason 'aborted', no output tokens"),
    (_ns(stop_reason=None), None),  # no content: not an Anthropic message
    # Gemini
    (_ns(candidates=[]), "no candidates and no output tokens"),
    (_ns(candidates=None), "no candidates and no output tokens"),
    (_ns(candidates=[Candidate(None)]), "finish_reason None, no output tokens"),
    (
        _ns(candidates=[Candidate(FinishReason("FINISH_REASON_UNSPECIFIED"))]),
        "finish_reason 'FINISH_REASON_UNSPECIFIED', no output tokens",
    ),
    (_ns(candidates=[Candidate(FinishReason("STOP"))]), None),
    (_ns(candidates=[Candidate("SAFETY")]), None),
    (_ns(candidates=[_ns()]), "finish_reason None, no output tokens"),
    (_ns(candidates=[], prompt_feedback=_ns(block_reason="SAFETY")), None),  # blocked: said why
    (
        _ns(candidates=[], prompt_feedback=_ns(block_reason=None)),
        "no candidates and no output tokens",
    ),
    (_ns(candidates=[], prompt_feedback=None), "no candidates and no output tokens"),
    # Bedrock Converse
    ({"ResponseMetadata": {}, "output": {}, "stopReason": "end_turn"}, None),
    ({"ResponseMetadata": {}, "output": {}, "stopReason": "guardrail_intervened"}, None),
    ({"ResponseMetadata": {}, "output": {}, "stopReason": "malformed_tool_use"}, None),
    (
        {"ResponseMetadata": {}, "output": {}, "stopReason": "odd"},
        "stopReason 'odd', no output tokens",
    ),
    ({"ResponseMetadata": {}}, "Bedrock response without output"),
    ({"output": {}}, None),  # a plain dict of the caller's
    # anything else
    (_ns(text="hi"), None),
    (object(), None),
]


@pytest.mark.parametrize(("result", "reason"), SILENT)
def test_a_silent_failure_is_told_from_a_finished_answer(
    result: object, reason: str | None
) -> None:
    if reason is None:
        check_response(result, None)
        check_response(result, UsageSnapshot.ZERO)
        return
    for usage in (None, UsageSnapshot.ZERO, UsageSnapshot(input_tokens=50)):
        with pytest.raises(EmptyResponseError) as caught:
            check_response(result, usage)
        assert caught.value.reason == reason
        assert caught.value.response is result
        assert str(caught.value) == f"empty model response: {reason}"
    check_response(result, UsageSnapshot(output_tokens=1))  # output tokens: an answer


@pytest.mark.parametrize("plain", ["text", b"bytes", 3, 2.5, True, None, [1], (1,)])
def test_plain_results_are_never_checked_or_read(plain: object) -> None:
    check_response(plain, None)
    assert usage_from_result(plain) is None


class OpenAIStream:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


OpenAIStream.__name__ = "Stream"
OpenAIStream.__module__ = "openai._streaming"


class MessageStreamManager:
    def close(self) -> None:
        raise RuntimeError("already closed")  # best effort: the refusal is what matters


def test_a_returned_stream_is_named_and_closed() -> None:
    stream = OpenAIStream()
    with pytest.raises(StreamResultError) as caught:
        check_response(stream, None)
    assert caught.value.kind == "openai Stream"
    assert caught.value.stream is stream
    assert stream.closed == 1
    check_response(stream, USAGE)  # usage given: the caller's stream, not refused
    assert stream.closed == 1
    with pytest.raises(StreamResultError) as managed:
        check_response(MessageStreamManager(), None)
    assert managed.value.kind == f"{__name__.split('.')[0]} MessageStreamManager"


def test_generators_and_bedrock_event_streams_are_streams_too() -> None:
    def chunks() -> Generator[str, None, None]:
        yield "a"

    generator = chunks()
    with pytest.raises(StreamResultError) as caught:
        check_response(generator, None)
    assert caught.value.kind == "generator"
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED

    class EventStream:
        def __init__(self) -> None:
            self.closed = False

        def close(self) -> None:
            self.closed = True

    events = EventStream()
    bedrock = {"ResponseMetadata": {}, "stream": events}
    with pytest.raises(StreamResultError) as caught:
        check_response(bedrock, None)
    assert caught.value.kind == "botocore EventStream"
    assert events.closed
    check_response({"stream": "not a stream"}, None)


def test_a_refused_async_stream_is_closed_by_awaiting_it() -> None:
    class AsyncStream:
        def __init__(self) -> None:
            self.closed: list[str] = []

        async def aclose(self) -> None:
            self.closed.append("aclose")

        async def close(self) -> None:
            self.closed.append("close")

    class Closes:
        def __init__(self) -> None:
            self.closed: list[str] = []

        async def close(self) -> None:
            self.closed.append("close")
            raise RuntimeError("connection gone")

    both, only_close = AsyncStream(), Closes()
    asyncio.run(aclose_refused(StreamResultError("x", both)))
    asyncio.run(aclose_refused(StreamResultError("x", only_close)))
    asyncio.run(aclose_refused(StreamResultError("x", {"stream": only_close})))
    asyncio.run(aclose_refused(StreamResultError("x", object())))
    assert both.closed == ["aclose"]  # one close, aclose first
    assert only_close.closed == ["close", "close"]


class CarriesUsageError(Exception):
    def __init__(self, **carriers: object) -> None:
        super().__init__("billed")
        for name, value in carriers.items():
            setattr(self, name, value)


def test_the_usage_a_billed_exception_carries_is_read_where_the_sdks_put_it() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    read = UsageSnapshot(input_tokens=7, output_tokens=3)
    assert usage_from_exception(CarriesUsageError(completion=_ns(usage=usage))) == read
    assert usage_from_exception(CarriesUsageError(response=_ns(usage=usage))) == read
    assert usage_from_exception(CarriesUsageError(body={"usage": usage})) == read
    # the first carrier with tokens decides; empty, plain or missing ones are skipped
    empty = _ns(usage={"prompt_tokens": 0, "completion_tokens": 0})
    assert usage_from_exception(CarriesUsageError(completion=empty, body={"usage": usage})) == read
    assert (
        usage_from_exception(CarriesUsageError(completion="text", response=[1], body=None)) is None
    )
    assert usage_from_exception(CarriesUsageError(response=_ns(status_code=429))) is None
    assert usage_from_exception(ValueError("plain")) is None

    class RaisingError(Exception):
        @property
        def completion(self) -> object:
            raise RuntimeError("unset")

    assert usage_from_exception(RaisingError()) is None


def test_a_result_whose_usage_cannot_be_read_has_none() -> None:
    assert usage_from_result(_ns(usage="garbage")) is None
    assert usage_from_result(_ns(text="no usage at all")) is None
    assert usage_from_result({"usage": {"prompt_tokens": 2, "completion_tokens": 1}}) == (
        UsageSnapshot(input_tokens=2, output_tokens=1)
    )


def test_a_response_whose_attributes_raise_is_not_a_silent_failure() -> None:
    class Hostile:
        @property
        def choices(self) -> object:
            raise RuntimeError("lazy")

        @property
        def candidates(self) -> object:
            raise RuntimeError("lazy")

    check_response(Hostile(), None)

    class BadMapping(dict[str, object]):
        def get(self, key: str, default: object = None) -> object:
            raise RuntimeError("no")

    check_response(BadMapping(ResponseMetadata={}), None)


TURN_ARGUMENT_ERRORS: list[tuple[str, object, str]] = [
    (
        "fallback_models",
        "model-b",
        "fallback_models must be a sequence of model names (a list, not a str), got 'model-b'",
    ),
    (
        "fallback_models",
        5,
        "fallback_models must be a sequence of model names (a list, not a str), got 5",
    ),
    (
        "fallback_models",
        ["ok", ""],
        "fallback_models must hold non-empty str model names, got '' in ['ok', '']",
    ),
    (
        "fallback_models",
        ["ok", 3],
        "fallback_models must hold non-empty str model names, got 3 in ['ok', 3]",
    ),
    (
        "fallback_models",
        ["ok", "  "],
        "fallback_models must hold non-empty str model names, got '  ' in ['ok', '  ']",
    ),
    (
        "fallback_models",
        b"ab",
        "fallback_models must be a sequence of model names (a list, not a str), got b'ab'",
    ),
    ("timeout", 0, "timeout must be None or a number of seconds > 0 and <= 9.22337e+09, got 0"),
    ("model", 5, "model must be a str, got 5"),
    ("estimate", 5, "estimate must be a UsageSnapshot or None, got 5"),
    ("usage", {"input": 5}, "usage must be a UsageSnapshot or None, got {'input': 5}"),
]


@pytest.mark.parametrize(("name", "value", "message"), TURN_ARGUMENT_ERRORS)
def test_a_wrong_turn_argument_is_refused_with_a_message_naming_it(
    name: str, value: object, message: str
) -> None:
    async def afn() -> str:
        return "never"

    async def main(session: Any) -> None:
        with pytest.raises(InvalidValueError) as caught:
            await session.arun_turn(afn, **{name: value})
        assert str(caught.value) == message

    wrong: dict[str, Any] = {name: value}
    with _orch().session() as session:
        with pytest.raises(InvalidValueError) as caught:
            session.run_turn(lambda: "never", **wrong)
        assert str(caught.value) == message
        asyncio.run(main(session))
        assert session.summary()["turns"] == 0


def test_fallback_models_may_be_any_sequence_of_names() -> None:
    clock = FakeClock()
    seen: list[str] = []

    def complete(model: str) -> str:
        seen.append(model)
        if len(seen) < 3:
            raise StatusError(503)
        return model

    policy = RetryPolicy(max_attempts=3, sleep=clock.sleep)
    with _orch(retry=policy).session() as session:
        assert session.run_turn(complete, model="m", fallback_models=("b1", "b2"))[0] == "b2"
    assert seen == ["m", "b1", "b2"]


def test_a_timeout_names_its_deadline_and_the_model_and_hides_the_runners_error() -> None:
    hang = Hang()
    try:
        with (
            _orch(runner=DeadlineRunner()).session() as session,
            pytest.raises(TurnTimeoutError) as caught,
        ):
            session.run_turn(hang, model="gpt-x", usage=USAGE, timeout=0.02)
    finally:
        hang.release.set()
    error = caught.value
    assert (error.timeout, error.model, error.started) == (0.02, "gpt-x", True)
    assert error.__cause__ is None
    assert error.__suppress_context__ is True  # the runner's DeadlineExceededError is internal


def test_an_async_stream_returned_by_fn_is_refused_and_closed() -> None:
    class AsyncStream:
        def __init__(self) -> None:
            self.closed = False

        async def aclose(self) -> None:
            self.closed = True

    stream = AsyncStream()

    async def fn() -> AsyncStream:
        return stream

    async def main() -> None:
        async with _orch().asession() as session:
            with pytest.raises(StreamResultError) as caught:
                await session.arun_turn(fn, model="m")
            assert caught.value.kind == f"{__name__.split('.')[0]} AsyncStream"

    asyncio.run(main())
    assert stream.closed


def test_a_given_usage_is_charged_rather_than_the_one_in_the_response() -> None:
    response = {"usage": {"prompt_tokens": 9, "completion_tokens": 9}}
    with _orch().session() as session:
        given = session.run_turn(lambda: response, model="m", usage=USAGE)[1]
        read = session.run_turn(lambda: response, model="m")[1]
    assert given == USAGE
    assert read == UsageSnapshot(input_tokens=9, output_tokens=9)
    assert session.summary()["turns_without_usage"] == 0


def test_no_hold_on_the_session_cap_outlives_its_attempt() -> None:
    clock = FakeClock()
    failures: list[Exception] = []
    big = UsageSnapshot(input_tokens=2_000_000)  # $6: over the cap

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    for enforce in (True, False):
        orch = _orch(
            budget_usd=COST * 3,
            enforce_budget=enforce,
            retry=RetryPolicy(max_attempts=2, sleep=clock.sleep),
        )
        with orch.session() as session:
            session.run_turn(lambda: "ok", model="m", usage=USAGE, estimate=USAGE)
            failures.append(StatusError(503))
            session.run_turn(flaky, model="m", usage=USAGE, estimate=USAGE)  # retried once
            with contextlib.suppress(StatusError):
                session.run_turn(lambda: (_ for _ in ()).throw(StatusError(400)), model="m")
            with contextlib.suppress(BudgetExceededError):
                session.run_turn(lambda: "ok", model="m", usage=USAGE, estimate=big)
            assert session._cap_held == 0
            assert session._cap_spent == int(COST * 10**15) * (2 if enforce else 3)


def test_a_call_that_outlives_its_cancelled_caller_and_then_fails_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="techrevati.runtime.orchestrator")

    async def main() -> None:
        started, stop = asyncio.Event(), asyncio.Event()

        async def stubborn() -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await stop.wait()  # ignores the cancellation, then fails
            raise ValueError("failed after the caller left")

        async with _orch().asession() as session:
            task = asyncio.ensure_future(session.arun_turn(stubborn, model="m", timeout=30))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            stop.set()
            for _ in range(5):
                await asyncio.sleep(0)

    asyncio.run(main())
    late = [r for r in caplog.records if r.getMessage().startswith("a turn's late call failed")]
    assert len(late) == 1
    assert late[0].exc_info is not None
    assert str(late[0].exc_info[1]) == "failed after the caller left"


def test_a_turn_without_a_model_is_recorded_under_the_unnamed_model() -> None:
    from techrevati.runtime.orchestrator import UNNAMED_MODEL

    seen: list[str] = []

    def fn(model: str) -> str:
        seen.append(model)
        return "ok"

    with _orch().session() as session:
        session.run_turn(fn, usage=USAGE)
    assert seen == [UNNAMED_MODEL] == ["unnamed-model"]
    (completed,) = [e for e in session.events() if e.name == EventName.TURN_COMPLETED]
    assert completed.data["model"] == "unnamed-model"
    assert list(session.tracker.per_model_summary()) == ["unnamed-model"]


def test_a_cancellation_is_never_retried_even_under_a_policy() -> None:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        raise KeyboardInterrupt

    policy = RetryPolicy(max_attempts=5, sleep=_no_sync_sleep)
    with pytest.raises(KeyboardInterrupt), _orch(retry=policy).session() as session:
        session.run_turn(fn, model="m", usage=USAGE)
    assert calls == [1]
    assert session.summary()["failures"] == {"cancelled": 1}
    assert session.summary()["recovery"]["retries"] == 0  # type: ignore[index]


def test_a_shared_budget_counts_the_tokens_and_requests_of_each_turn() -> None:
    budget = Budget(max_usd="10", max_total_tokens=100_000, max_requests=10)
    with _orch(budget=budget).session() as session:
        held: list[int] = []

        def fn() -> str:
            held.append(budget.reserved_tokens)
            return "ok"

        session.run_turn(
            fn, model="m", estimate=UsageSnapshot(input_tokens=400, output_tokens=50), usage=USAGE
        )
        session.run_turn(fn, model="m", usage=USAGE)
    assert held[0] == 450  # the estimate's tokens, held while the call runs
    assert (budget.spent_tokens, budget.requests, budget.reserved_tokens) == (2200, 2, 0)
    assert budget.spent_usd == COST * 2
