from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from techrevati.runtime import (
    AgentEvent,
    AgentFailureClass,
    AgentRegistry,
    AgentStatus,
    BaseHook,
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    EventName,
    GuardrailViolatedError,
    InvalidValueError,
    MaxIterationsExceededError,
    ModelCall,
    Orchestrator,
    PermissionDeniedError,
    PermissionMode,
    PermissionPolicy,
    PhaseCompleted,
    PolicyAction,
    PolicyActionData,
    PolicyEngine,
    PolicyRule,
    QualityGate,
    QualityLevel,
    RetriesExhaustedError,
    RetryPolicy,
    RolePermissionConfig,
    Session,
    SessionStateError,
    SqliteSink,
    ToolCall,
    TurnTimeoutError,
    UsageSnapshot,
)
from techrevati.runtime._runner import DeadlineRunner
from techrevati.runtime._session_core import failure_class_of
from techrevati.runtime.orchestrator import EmptyResponseError, Handoff, StreamResultError
from tests.conftest import CollectingSink, FakeClock

USAGE = UsageSnapshot(input_tokens=1000, output_tokens=100)


pytestmark = pytest.mark.usefixtures("priced_models")


class StatusError(Exception):
    def __init__(self, status_code: int, message: str = "", headers: dict[str, str] | None = None):
        super().__init__(message or f"status {status_code}")
        self.status_code = status_code
        if headers is not None:
            self.response = type("R", (), {"status_code": status_code, "headers": headers})()


def _orch(**kwargs: object) -> Orchestrator:
    return Orchestrator("writer", "draft", **kwargs)  # type: ignore[arg-type]


# -- lifecycle ------------------------------------------------------------------


def test_clean_exit_completes_and_summary_is_json() -> None:
    with _orch(project_id=7).session() as session:
        assert str(session.status) == "running"
        result, usage = session.run_turn(lambda: "hi", model="m", usage=USAGE)
    assert (result, usage) == ("hi", USAGE)
    assert session.status is AgentStatus.COMPLETED
    summary = session.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["outcome"] == "completed"
    assert summary["turns"] == 1
    assert summary["cost_usd"] == "0.0045"
    assert summary["project_id"] == 7


def test_exception_fails_worker_with_class_and_reraises_same_object() -> None:
    error = StatusError(429, "slow down")
    with pytest.raises(StatusError) as caught, _orch().session() as session:
        session.run_turn(lambda: (_ for _ in ()).throw(error))
    assert caught.value is error
    assert session.status is AgentStatus.FAILED
    summary = session.summary()
    assert summary["failure_class"] == AgentFailureClass.RATE_LIMIT.value
    assert summary["failures"] == {"rate_limit": 1}


def test_keyboard_interrupt_cancels() -> None:
    with pytest.raises(KeyboardInterrupt), _orch().session() as session:
        raise KeyboardInterrupt
    assert session.status is AgentStatus.CANCELLED
    assert session.summary()["outcome"] == "cancelled"


def test_async_cancellation_cancels() -> None:
    async def main() -> AgentStatus | None:
        orch = _orch()
        session = orch.asession()

        async def body() -> None:
            async with session:
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return session.status

    assert asyncio.run(main()) is AgentStatus.CANCELLED


def test_turn_outside_the_block_is_refused() -> None:
    session = _orch().session()
    with pytest.raises(SessionStateError, match="not started"):
        session.run_turn(lambda: 1)
    with session:
        pass
    with pytest.raises(SessionStateError, match="completed"):
        session.run_turn(lambda: 1)


def test_pause_and_provide_input() -> None:
    with _orch().session() as session:
        session.pause_for_input("which tone?")
        assert session.status is AgentStatus.WAITING_FOR_INPUT
        with pytest.raises(SessionStateError, match="waiting_for_input"):
            session.run_turn(lambda: 1)
        session.provide_input("formal")
        assert session.run_turn(lambda: 2)[0] == 2
    names = [e.name for e in session.events()]
    assert EventName.INPUT_REQUESTED in names
    assert EventName.INPUT_PROVIDED in names


def test_clean_exit_while_waiting_for_input_completes() -> None:
    with _orch().session() as session:
        session.pause_for_input("anything else?")
    assert session.status is AgentStatus.COMPLETED
    assert session.summary()["outcome"] == "completed"


def test_own_registry_forgets_finished_workers_but_a_given_one_keeps_them() -> None:
    orch = _orch()
    with orch.session():
        assert len(orch.registry) == 1
    assert len(orch.registry) == 0
    registry = AgentRegistry()
    with _orch(registry=registry).session() as session:
        pass
    assert session.worker is not None
    assert registry.get(session.worker.id).status is AgentStatus.COMPLETED


# -- usage ------------------------------------------------------------------------


def test_usage_is_read_from_the_response_when_not_given() -> None:
    response = {"usage": {"prompt_tokens": 2000, "completion_tokens": 10}}
    with _orch().session() as session:
        _, usage = session.run_turn(lambda: response, model="m")
    assert usage.input_tokens == 2000
    assert usage.output_tokens == 10
    assert session.summary()["turns_without_usage"] == 0


def test_missing_usage_counts_zero_and_is_flagged() -> None:
    with _orch().session() as session:
        _, usage = session.run_turn(lambda: "plain text", model="m")
    assert usage == UsageSnapshot()
    assert session.summary()["turns_without_usage"] == 1
    turn = next(e for e in session.events() if e.name == EventName.TURN_COMPLETED)
    assert turn.data["usage_unknown"] is True


# -- budget -----------------------------------------------------------------------


def test_session_budget_refuses_before_calling_when_estimate_exceeds() -> None:
    called: list[int] = []
    big = UsageSnapshot(input_tokens=1_000_000, output_tokens=0)  # $3
    with pytest.raises(BudgetExceededError), _orch(budget_usd=1).session() as session:
        session.run_turn(lambda: called.append(1), model="m", estimate=big)
    assert called == []
    assert session.summary()["failure_class"] == AgentFailureClass.BUDGET_EXCEEDED.value


def test_spent_budget_refuses_the_next_turn() -> None:
    spend = UsageSnapshot(input_tokens=400_000, output_tokens=0)  # $1.20
    called: list[int] = []
    with _orch(budget_usd="1").session() as session:
        session.run_turn(lambda: None, model="m", usage=spend)
        with pytest.raises(BudgetExceededError):
            session.run_turn(lambda: called.append(1), model="m", usage=spend)
    assert called == []


def test_unenforced_budget_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    spend = UsageSnapshot(input_tokens=400_000, output_tokens=0)
    with _orch(budget_usd="1", enforce_budget=False).session() as session:
        session.run_turn(lambda: None, model="m", usage=spend)
        session.run_turn(lambda: None, model="m", usage=spend)
    summary = session.summary()
    assert summary["turns"] == 2
    assert summary["budget_warnings"] == 1
    assert "budget exceeded" in caplog.text


def test_shared_budget_caps_concurrent_sessions_exactly() -> None:
    budget = Budget(max_usd="0.03")  # 10 turns of $0.003
    orch = _orch(budget=budget)
    one = UsageSnapshot(input_tokens=1000, output_tokens=0)
    done = []
    lock = threading.Lock()

    def worker() -> None:
        with orch.session() as session:
            for _ in range(10):
                try:
                    session.run_turn(lambda: None, model="m", usage=one, estimate=one)
                except BudgetExceededError:
                    break
                with lock:
                    done.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 10
    assert budget.spent_usd == Decimal("0.03")


# -- breaker and retries ------------------------------------------------------------


def test_circuit_open_error_is_not_a_failure_of_fn() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=2, recovery_timeout_seconds=10, clock=clock)
    with _orch(circuit_breaker=breaker).session() as session:
        for _ in range(2):
            with pytest.raises(StatusError):
                session.run_turn(lambda: (_ for _ in ()).throw(StatusError(503)))
        with pytest.raises(CircuitOpenError):
            session.run_turn(lambda: "never")
    names = [e.name for e in session.events()]
    assert names.count(EventName.TURN_FAILED) == 2
    assert names.count(EventName.BREAKER_REJECTED) == 1
    assert breaker.metrics().failures == 2


def test_retry_honours_wait_hint_then_succeeds() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise StatusError(429, "rate limited", headers={"retry-after": "7"})
        return "ok"

    orch = _orch(retry=RetryPolicy(max_attempts=3), clock=clock, sleep=clock.sleep)
    with orch.session() as session:
        assert session.run_turn(flaky, model="m", usage=USAGE)[0] == "ok"
    assert clock.slept == [7.0]
    assert session.summary()["recovery"] == {
        "retries": 1,
        "retries_exhausted": False,
        "max_total_retries": None,
    }


def test_fallback_models_are_passed_to_fn_that_accepts_model() -> None:
    clock = FakeClock()
    seen: list[str] = []

    def complete(model: str) -> str:
        seen.append(model)
        if model == "m":
            raise StatusError(503, "overloaded")
        return model

    orch = _orch(retry=RetryPolicy(max_attempts=4), clock=clock, sleep=clock.sleep)
    with orch.session() as session:
        result, _ = session.run_turn(complete, model="m", fallback_models=["backup"], usage=USAGE)
    assert result == "backup"
    assert seen[0] == "m"
    assert seen[-1] == "backup"
    assert session.tracker.per_model_summary()["backup"]["turns"] == 1


def test_non_retryable_error_is_raised_at_once_unchanged() -> None:
    clock = FakeClock()
    error = StatusError(401, "bad key")
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise error

    orch = _orch(retry=RetryPolicy(max_attempts=5), clock=clock, sleep=clock.sleep)
    with pytest.raises(StatusError) as caught, orch.session() as session:
        session.run_turn(fn)
    assert caught.value is error
    assert calls == [1]
    assert clock.slept == []


def test_retries_exhausted_raise_retries_exhausted_from_the_last_exception() -> None:
    clock = FakeClock()
    errors = [StatusError(503, f"down {i}") for i in range(3)]
    it = iter(errors)

    def fn() -> None:
        raise next(it)

    orch = _orch(retry=RetryPolicy(max_attempts=3), clock=clock, sleep=clock.sleep)
    with pytest.raises(RetriesExhaustedError) as caught, orch.session() as session:
        session.run_turn(fn)
    assert caught.value.__cause__ is errors[-1]
    assert caught.value.attempts == 3
    summary = session.summary()
    assert summary["recovery"]["retries_exhausted"] is True  # type: ignore[index]
    assert summary["failure_class"] == "provider_failure"
    assert len(clock.slept) == 2


# -- timeouts ---------------------------------------------------------------------


def test_sync_timeout_returns_at_the_deadline_while_fn_blocks() -> None:
    release = threading.Event()
    runner = DeadlineRunner()
    with _orch(runner=runner).session() as session:
        with pytest.raises(TurnTimeoutError) as caught:
            session.run_turn(release.wait, model="m", timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        release.set()
        assert session.run_turn(lambda: 5, timeout=5.0)[0] == 5
    assert session.summary()["failures"] == {"llm_timeout": 1}


def test_sync_timeout_reuses_worker_threads() -> None:
    runner = DeadlineRunner()
    with _orch(runner=runner).session() as session:
        for i in range(20):
            assert session.run_turn(lambda i=i: i, timeout=5.0)[0] == i
    assert runner.threads_started <= 2


def test_async_timeout_cancels_the_coroutine() -> None:
    cancelled: list[bool] = []

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(slow, timeout=0.01)

    asyncio.run(main())
    assert cancelled == [True]


def test_async_turn_and_tool() -> None:
    async def answer(model: str) -> str:
        return f"a:{model}"

    async def tool(x: int) -> int:
        return x * 2

    async def main() -> tuple[str, int]:
        async with _orch().asession() as session:
            text, _ = await session.arun_turn(answer, model="m", usage=USAGE)
            doubled = await session.arun_tool("calc", tool, 21)
        return text, doubled

    assert asyncio.run(main()) == ("a:m", 42)


# -- limits, tools, hooks -----------------------------------------------------------


def test_max_iterations_is_checked_before_the_call() -> None:
    calls: list[int] = []
    with _orch(max_iterations=2).session() as session:
        for _ in range(2):
            session.run_turn(lambda: calls.append(1))
        with pytest.raises(MaxIterationsExceededError):
            session.run_turn(lambda: calls.append(1))
    assert calls == [1, 1]


def _enforced(**kwargs: object) -> Orchestrator:
    policy = PermissionPolicy(
        role_configs={
            "writer": RolePermissionConfig(
                role="writer", mode=PermissionMode.WORKSPACE_WRITE, denied_tools=["shell"]
            )
        },
        tool_requirements={"deploy": PermissionMode.FULL_ACCESS},
    )
    return _orch(permissions=policy, **kwargs)


def test_denied_tool_raises_with_outcome_and_is_not_called() -> None:
    called: list[int] = []
    with _enforced().session() as session:
        for name in ("shell", " SHELL ", "deploy"):
            with pytest.raises(PermissionDeniedError) as caught:
                session.run_tool(name, lambda: called.append(1))
            assert not caught.value.outcome.allowed
        assert session.run_tool("read", lambda: "fine") == "fine"
    assert called == []
    assert session.summary()["failures"] == {"permission_denied": 3}


def test_tool_error_passes_through_and_is_classified() -> None:
    error = ValueError("bad input")
    with pytest.raises(ValueError, match="bad input") as caught, _orch().session() as session:
        session.run_tool("parse", lambda: (_ for _ in ()).throw(error))
    assert caught.value is error
    assert session.summary()["failures"]["tool_error"] == 1  # type: ignore[index]


class SwitchModel(BaseHook):
    def before_model(self, call: ModelCall) -> ModelCall | None:
        return ModelCall(
            model="backup",
            turn=call.turn,
            attempt=call.attempt,
            role=call.role,
            phase=call.phase,
            session_id=call.session_id,
        )

    def after_model(self, call: ModelCall, result: object) -> object | None:
        return f"{result}!"


class Explodes(BaseHook):
    def before_tool(self, call: ToolCall) -> ToolCall | None:
        raise KeyError("boom")


def test_hooks_modify_the_call_and_the_result() -> None:
    with _orch(hooks=[SwitchModel()]).session() as session:
        result, _ = session.run_turn(lambda model: model, model="m", usage=USAGE)
    assert result == "backup!"
    assert list(session.tracker.per_model_summary()) == ["backup"]


def test_a_raising_hook_is_a_veto_not_a_crash() -> None:
    called: list[int] = []
    with _orch(hooks=[Explodes()]).session() as session:
        with pytest.raises(GuardrailViolatedError) as caught:
            session.run_tool("t", lambda: called.append(1))
        assert caught.value.hook == "Explodes"
        assert isinstance(caught.value.__cause__, KeyError)
        assert session.status is AgentStatus.RUNNING
    assert called == []
    assert session.summary()["event_counts"][EventName.HOOK_VETOED.value] == 1  # type: ignore[index]


def test_handoff_completes_this_worker_and_registers_the_next() -> None:
    registry = AgentRegistry()
    with _orch(registry=registry).session() as session:
        handoff = session.handoff_to("reviewer", "draft ready", {"doc": "a.md"})
        with pytest.raises(SessionStateError):
            session.run_turn(lambda: 1)
    assert session.status is AgentStatus.COMPLETED
    target = registry.get(handoff.to_worker_id)
    assert target.role == "reviewer"
    assert handoff.context == {"doc": "a.md"}
    assert session.summary()["handoff"]["to_role"] == "reviewer"  # type: ignore[index]


def test_policy_and_gate_use_session_facts() -> None:
    engine = PolicyEngine(
        [
            PolicyRule(
                name="advance",
                condition=PhaseCompleted(),
                actions=[PolicyActionData(PolicyAction.ADVANCE_PHASE)],
            )
        ]
    )
    orch = _orch(policy_engine=engine, quality_gate=QualityGate(QualityLevel.STRICT))
    with orch.session() as session:
        session.run_turn(lambda: None, model="m", usage=USAGE)
        ctx = session.policy_context()
        assert ctx.cost_usd == Decimal("0.0045")
        assert session.evaluate_policy() == []
        assert [a.action for a in session.evaluate_policy(phase_completed=True)] == [
            PolicyAction.ADVANCE_PHASE
        ]
        assert not session.evaluate_gate("standard").satisfied


# -- sinks, memory, concurrency ---------------------------------------------------


class Broken:
    def write_event(self, event: AgentEvent) -> None:
        raise OSError("disk full")


def test_sinks_get_records_and_a_broken_sink_loses_nothing_for_the_others() -> None:
    good = CollectingSink()
    with _orch(sinks=[Broken(), good]).session() as session:
        session.run_turn(lambda: None, model="m", usage=USAGE)
    assert good.events[0].name == EventName.SESSION_STARTED
    assert good.events[-1].name == EventName.SESSION_COMPLETED
    assert len(good.usage) == 1
    assert good.usage[0].cost_usd == Decimal("0.0045")
    assert good.usage[0].session_id == session.id
    assert session.summary()["sink_failures"] == len(good.events)


def test_memory_is_bounded_and_counts_are_exact() -> None:
    with _orch(event_capacity=50).session() as session:
        for _ in range(2_000):
            session.run_turn(lambda: None, model="m", usage=USAGE)
    summary = session.summary(last_events=5)
    assert len(session.events()) == 50
    assert summary["event_counts"][EventName.TURN_COMPLETED.value] == 2_000  # type: ignore[index]
    assert len(summary["last_events"]) == 5  # type: ignore[arg-type]
    assert Decimal(str(summary["cost_usd"])) == Decimal("0.0045") * 2_000


def test_threads_hammering_one_session_give_exact_totals() -> None:
    with _orch().session() as session:

        def work() -> None:
            for _ in range(500):
                session.run_turn(lambda: None, model="m", usage=USAGE)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    summary = session.summary()
    assert summary["turns"] == 4_000
    assert session.tracker.total_cost() == Decimal("0.0045") * 4_000
    assert summary["event_counts"][EventName.TURN_COMPLETED.value] == 4_000  # type: ignore[index]


def test_sqlite_sink_records_a_sessions_events_and_usage(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with SqliteSink(path, flush_every=1000) as sink:
        orch = _orch(project_id="p1", sinks=[sink])
        with orch.session() as session:
            for _ in range(3):
                session.run_turn(lambda: None, model="m", usage=USAGE)
        sink.flush()
        usage_rows = sink.read_usage(project="p1")
        sessions = sink.read_sessions()
        events = sink.read_events()
    assert [row.cost_usd for row in usage_rows] == [Decimal("0.0045")] * 3
    assert {row.session_id for row in usage_rows} == {session.id}
    (row,) = sessions
    assert row.session_id == session.id
    assert row.status == "completed"
    assert row.turns == 3
    assert row.cost_usd == Decimal("0.0135")
    assert sum(e.name == EventName.TURN_COMPLETED for e in events) == 3


# -- failure classes of what a session sees ------------------------------------------------


def _denied() -> PermissionDeniedError:
    enforcer = _enforced().permissions
    assert enforcer is not None
    return PermissionDeniedError(enforcer.check("writer", "shell"))


FAILURE_CLASSES: list[tuple[BaseException, AgentFailureClass]] = [
    (KeyboardInterrupt(), AgentFailureClass.CANCELLED),
    (asyncio.CancelledError(), AgentFailureClass.CANCELLED),
    (BudgetExceededError("over the cap"), AgentFailureClass.BUDGET_EXCEEDED),
    (MaxIterationsExceededError(3), AgentFailureClass.BUDGET_EXCEEDED),
    (_denied(), AgentFailureClass.PERMISSION_DENIED),
    (GuardrailViolatedError("no secrets"), AgentFailureClass.VALIDATION_ERROR),
    (InvalidValueError("bad"), AgentFailureClass.VALIDATION_ERROR),
    (StreamResultError("openai Stream"), AgentFailureClass.VALIDATION_ERROR),
    (CircuitOpenError("api", 5.0), AgentFailureClass.DEPENDENCY_FAILED),
    (TurnTimeoutError(1.0, "m"), AgentFailureClass.LLM_TIMEOUT),
    (EmptyResponseError("no choices", None), AgentFailureClass.PROVIDER_FAILURE),
    (SystemExit(2), AgentFailureClass.UNKNOWN),
    (StatusError(429), AgentFailureClass.RATE_LIMIT),
    (StatusError(401), AgentFailureClass.AUTH_FAILURE),
    (ValueError("whatever"), AgentFailureClass.UNKNOWN),
]


@pytest.mark.parametrize(
    ("exc", "expected"), FAILURE_CLASSES, ids=[type(e).__name__ for e, _ in FAILURE_CLASSES]
)
def test_failure_class_of_every_kind_of_exception(
    exc: BaseException, expected: AgentFailureClass
) -> None:
    assert failure_class_of(exc) is expected


def test_failure_class_of_retries_exhausted_is_the_scenario_that_gave_up() -> None:
    clock = FakeClock()
    orch = _orch(retry=RetryPolicy(max_attempts=1), clock=clock, sleep=clock.sleep)
    with pytest.raises(RetriesExhaustedError) as caught, orch.session() as session:
        session.run_turn(lambda: (_ for _ in ()).throw(StatusError(429)), model="m")
    assert failure_class_of(caught.value) is AgentFailureClass.RATE_LIMIT
    assert session.summary()["failure_class"] == "rate_limit"


@pytest.mark.parametrize(
    ("exc", "outcome", "failure_class", "status"),
    [
        (_denied(), "failed", "permission_denied", AgentStatus.FAILED),
        (GuardrailViolatedError("no secrets"), "failed", "validation_error", AgentStatus.FAILED),
        (MaxIterationsExceededError(3), "failed", "budget_exceeded", AgentStatus.FAILED),
        (KeyboardInterrupt(), "cancelled", "cancelled", AgentStatus.CANCELLED),
    ],
)
def test_the_exception_that_ends_a_session_names_its_failure_class(
    exc: BaseException, outcome: str, failure_class: str, status: AgentStatus
) -> None:
    with pytest.raises(type(exc)) as caught, _orch().session() as session:
        raise exc
    assert caught.value is exc
    summary = session.summary()
    assert (summary["outcome"], summary["failure_class"]) == (outcome, failure_class)
    assert session.status is status
    last = session.events()[-1]
    assert last.failure_class is not None
    assert last.failure_class.value == failure_class
    if outcome == "failed":
        assert last.name == EventName.SESSION_FAILED
        assert last.data["error_type"] == type(exc).__name__
        assert last.detail == str(exc)
    else:
        assert last.name == EventName.SESSION_CANCELLED


# -- async tools and turns ---------------------------------------------------------------


def test_a_failing_async_tool_raises_unchanged_and_is_recorded() -> None:
    clock = FakeClock()
    error = ValueError("bad input")

    async def tool(x: int) -> int:
        clock.advance(1.5)
        raise error

    async def main() -> Session:
        async with _orch(clock=clock).asession() as session:
            with pytest.raises(ValueError, match="bad input") as caught:
                await session.arun_tool("parse", tool, 3)
            assert caught.value is error
            assert session.status is AgentStatus.RUNNING  # a tool's failure ends no session
        return session

    session = asyncio.run(main())
    failed = [e for e in session.events() if e.name == EventName.TOOL_FAILED]
    assert len(failed) == 1
    assert failed[0].failure_class is AgentFailureClass.TOOL_ERROR
    assert failed[0].detail == "ValueError: bad input"
    assert failed[0].data == {"tool": "parse", "duration_seconds": 1.5, "error_type": "ValueError"}
    summary = session.summary()
    assert summary["failures"] == {"tool_error": 1}
    assert summary["tool_calls"] == 1
    assert summary["outcome"] == "completed"


def test_a_cancelled_async_tool_is_recorded_as_cancelled() -> None:
    async def tool() -> None:
        raise asyncio.CancelledError

    async def main() -> Session:
        async with _orch().asession() as session:
            with pytest.raises(asyncio.CancelledError):
                await session.arun_tool("wait", tool)
        return session

    session = asyncio.run(main())
    (failed,) = [e for e in session.events() if e.name == EventName.TOOL_FAILED]
    assert failed.failure_class is AgentFailureClass.CANCELLED
    assert session.summary()["failures"] == {"cancelled": 1}


def test_a_denied_async_tool_is_not_called() -> None:
    called: list[int] = []

    async def shell() -> None:
        called.append(1)

    async def main() -> Session:
        async with _enforced().asession() as session:
            with pytest.raises(PermissionDeniedError):
                await session.arun_tool("shell", shell)
        return session

    session = asyncio.run(main())
    assert called == []
    (denied,) = [e for e in session.events() if e.name == EventName.TOOL_DENIED]
    assert denied.data["tool"] == "shell"
    assert session.summary()["failures"] == {"permission_denied": 1}
    assert session.summary()["tool_calls"] == 0


def test_arun_turn_goes_through_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=2, recovery_timeout_seconds=10, clock=clock)

    async def down() -> str:
        raise StatusError(503)

    async def up() -> str:
        return "up"

    async def main() -> Session:
        async with _orch(circuit_breaker=breaker, clock=clock).asession() as session:
            assert (await session.arun_turn(up, model="m", usage=USAGE))[0] == "up"
            for _ in range(2):
                with pytest.raises(StatusError):
                    await session.arun_turn(down, model="m", usage=USAGE)
            with pytest.raises(CircuitOpenError) as rejected:
                await session.arun_turn(up, model="m", usage=USAGE)
            assert rejected.value.retry_after == 10.0
            clock.advance(10)
            assert (await session.arun_turn(up, model="m", usage=USAGE))[0] == "up"
        return session

    session = asyncio.run(main())
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.state) == (2, 2, "closed")
    (rejected_event,) = [e for e in session.events() if e.name == EventName.BREAKER_REJECTED]
    assert rejected_event.failure_class is AgentFailureClass.DEPENDENCY_FAILED
    assert rejected_event.data["retry_after"] == 10.0
    assert rejected_event.data["error_type"] == "CircuitOpenError"
    changes = [e.data for e in session.events() if e.name == EventName.BREAKER_STATE_CHANGED]
    assert [(c["from_state"], c["to_state"]) for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert session.summary()["failures"] == {"provider_failure": 2, "dependency_failed": 1}


# -- hooks that replace calls and results -----------------------------------------------------


class Calls(BaseHook):
    """Records every model call it sees and replaces the tool call's arguments and result."""

    def __init__(self) -> None:
        self.model_calls: list[ModelCall] = []

    def before_model(self, call: ModelCall) -> ModelCall | None:
        self.model_calls.append(call)
        return None

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        return ToolCall(
            name=call.name,
            args=(10,),
            kwargs={"scale": 3},
            role=call.role,
            phase=call.phase,
            session_id=call.session_id,
        )

    def after_tool(self, call: ToolCall, result: object) -> object | None:
        return {"tool": call.name, "args": call.args, "result": result}


def test_a_before_tool_hook_replaces_the_arguments_and_after_tool_the_result() -> None:
    def calc(x: int, scale: int = 1) -> int:
        return x * scale

    async def acalc(x: int, scale: int = 1) -> int:
        return x * scale

    async def main(session: Session) -> object:
        return await session.arun_tool("calc", acalc, 1, scale=1)

    with _orch(hooks=[Calls()]).session() as session:
        replaced: object = session.run_tool("calc", calc, 1, scale=1)
        assert replaced == {"tool": "calc", "args": (10,), "result": 30}
        assert asyncio.run(main(session)) == {"tool": "calc", "args": (10,), "result": 30}
    assert session.summary()["tool_calls"] == 2


def test_model_hooks_see_each_attempt_of_each_turn() -> None:
    clock = FakeClock()
    hook = Calls()
    failures = [StatusError(503)]

    def fn() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    orch = _orch(hooks=[hook], retry=RetryPolicy(max_attempts=2), clock=clock, sleep=clock.sleep)
    with orch.session() as session:
        session.run_turn(lambda: "first", model="m", usage=USAGE)
        assert session.run_turn(fn, model="m", usage=USAGE)[0] == "ok"
    seen = [(c.model, c.turn, c.attempt, c.role, c.phase, c.session_id) for c in hook.model_calls]
    assert seen == [
        ("m", 1, 1, "writer", "draft", session.id),
        ("m", 2, 1, "writer", "draft", session.id),
        ("m", 2, 2, "writer", "draft", session.id),
    ]


class WrongType(BaseHook):
    def before_model(self, call: ModelCall) -> ModelCall | None:
        return "gpt-other"  # type: ignore[return-value]

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        return {"name": call.name}  # type: ignore[return-value]


def test_a_hook_that_returns_the_wrong_type_is_a_guardrail_naming_it() -> None:
    called: list[int] = []
    with _orch(hooks=[WrongType()]).session() as session:
        with pytest.raises(GuardrailViolatedError) as model_caught:
            session.run_turn(lambda: called.append(1), model="m", usage=USAGE)
        with pytest.raises(GuardrailViolatedError) as tool_caught:
            session.run_tool("calc", lambda: called.append(1))
    assert called == []
    assert (model_caught.value.hook, model_caught.value.point) == ("WrongType", "before_model")
    assert model_caught.value.reason == "before_model returned str, not ModelCall"
    assert (tool_caught.value.hook, tool_caught.value.point) == ("WrongType", "before_tool")
    assert tool_caught.value.reason == "before_tool returned dict, not ToolCall"
    # Recorded as the vetoes they are, like a hook that raises.
    assert session.summary()["failures"] == {"validation_error": 2}
    vetoed = [e for e in session.events() if e.name == EventName.HOOK_VETOED]
    assert [(e.failure_class, e.detail, e.data) for e in vetoed] == [
        (
            AgentFailureClass.VALIDATION_ERROR,
            "before_model returned str, not ModelCall",
            {"hook": "WrongType", "point": "before_model"},
        ),
        (
            AgentFailureClass.VALIDATION_ERROR,
            "before_tool returned dict, not ToolCall",
            {"hook": "WrongType", "point": "before_tool"},
        ),
    ]
    assert session.summary()["tool_calls"] == 0


class Veto(BaseHook):
    def __init__(self, error: GuardrailViolatedError) -> None:
        self.error = error

    def after_model(self, call: ModelCall, result: object) -> object | None:
        raise self.error


def test_a_hooks_own_guardrail_is_named_after_the_hook_and_the_point() -> None:
    plain = GuardrailViolatedError("no secrets in answers")
    with (
        _orch(hooks=[Veto(plain)]).session() as session,
        pytest.raises(GuardrailViolatedError) as caught,
    ):
        session.run_turn(lambda: "the secret", model="m", usage=USAGE)
    assert caught.value is not plain
    assert caught.value.__cause__ is plain
    assert (caught.value.reason, caught.value.hook, caught.value.point) == (
        "no secrets in answers",
        "Veto",
        "after_model",
    )
    assert str(caught.value) == "guardrail violated (Veto at after_model): no secrets in answers"
    (vetoed,) = [e for e in session.events() if e.name == EventName.HOOK_VETOED]
    assert vetoed.failure_class is AgentFailureClass.VALIDATION_ERROR
    assert vetoed.detail == "no secrets in answers"
    assert vetoed.data == {"hook": "Veto", "point": "after_model"}
    assert session.summary()["failures"] == {"validation_error": 1}


def test_a_guardrail_that_names_its_hook_is_raised_as_it_is() -> None:
    named = GuardrailViolatedError("pii", hook="PiiFilter", point="after_model")
    with (
        _orch(hooks=[Veto(named)]).session() as session,
        pytest.raises(GuardrailViolatedError) as caught,
    ):
        session.run_turn(lambda: "an address", model="m", usage=USAGE)
    assert caught.value is named
    (vetoed,) = [e for e in session.events() if e.name == EventName.HOOK_VETOED]
    assert vetoed.data == {"hook": "PiiFilter", "point": "after_model"}


def test_a_hook_that_raises_is_a_veto_naming_the_error() -> None:
    with (
        _orch(hooks=[Explodes()]).session() as session,
        pytest.raises(GuardrailViolatedError) as caught,
    ):
        session.run_tool("t", lambda: None)
    assert caught.value.reason == "hook raised KeyError: 'boom'"
    assert (caught.value.hook, caught.value.point) == ("Explodes", "before_tool")


# -- the summary, the policy facts and the session's own checks -----------------------------

STAMP = datetime(2026, 11, 1, tzinfo=UTC)


def test_the_summary_holds_every_aggregate_exactly() -> None:
    clock = FakeClock()
    failures = [StatusError(503)]

    def fn() -> str:
        clock.advance(2)
        if failures:
            raise failures.pop()
        return "ok"

    orch = Orchestrator(
        "writer",
        "draft",
        "p1",
        retry=RetryPolicy(base_delay=0.5, jitter="none"),
        clock=clock,
        sleep=clock.sleep,
        wall_clock=lambda: STAMP,
        budget_usd="1",
        max_total_retries=4,
        event_capacity=9,
    )
    with orch.session(metadata={"ticket": 9}) as session:
        session.run_turn(fn, model="m", usage=USAGE)
        session.run_tool("calc", lambda: 3)
        session.run_turn(lambda: "x", model="m")
    summary = session.summary(last_events=2)
    assert json.loads(json.dumps(summary)) == summary
    worker = summary.pop("worker")
    usage = summary.pop("usage")
    last = summary.pop("last_events")
    assert summary == {
        "session_id": session.id,
        "role": "writer",
        "phase": "draft",
        "project_id": "p1",
        "outcome": "completed",
        "failure_class": None,
        "duration_seconds": 4.5,  # two calls of 2 s and the 0.5 s backoff
        "turns": 2,
        "turns_without_usage": 1,
        "tool_calls": 1,
        "cost_usd": "0.0045",
        "cost": "$0.0045",
        "budget_usd": "1",
        "budget_warnings": 0,
        "failures": {"provider_failure": 1},
        "recovery": {"retries": 1, "retries_exhausted": False, "max_total_retries": 4},
        "event_counts": {
            "session.started": 1,
            "worker.status_changed": 3,
            "turn.failed": 1,
            "turn.retried": 1,
            "tool.completed": 1,
            "session.completed": 1,
            "turn.completed": 2,
        },
        "events_dropped": 1,  # 10 written, 9 kept
        "sink_failures": 0,
        "handoff": None,
    }
    assert isinstance(worker, dict)
    assert session.worker is not None
    assert (worker["id"], worker["status"]) == (session.worker.id, "completed")
    assert isinstance(usage, dict)
    assert (usage["turns"], usage["cost_usd"]) == (2, "0.0045")
    assert last == [
        {
            "name": "worker.status_changed",
            "role": "writer",
            "phase": "draft",
            "status": "completed",
            "failure_class": None,
            "detail": None,
            "data": {"to": "completed"},
            "timestamp": "2026-11-01T00:00:00+00:00",
            "session_id": session.id,
            "worker_id": session.worker.id,
            "project_id": "p1",
        },
        {
            "name": "session.completed",
            "role": "writer",
            "phase": "draft",
            "status": "completed",
            "failure_class": None,
            "detail": None,
            "data": {"duration_seconds": 4.5, "cost_usd": "0.0045", "turns": 2},
            "timestamp": "2026-11-01T00:00:00+00:00",
            "session_id": session.id,
            "worker_id": session.worker.id,
            "project_id": "p1",
        },
    ]
    assert session.events()[0].name == EventName.STATUS_CHANGED  # session.started was dropped


def test_a_summary_before_the_session_starts() -> None:
    session = _orch().session()
    summary = session.summary()
    assert (summary["outcome"], summary["worker"], summary["duration_seconds"]) == (
        "not_started",
        None,
        None,
    )
    assert summary["last_events"] == []
    assert session.status is None


def test_a_running_sessions_duration_is_measured_to_now() -> None:
    clock = FakeClock()
    with _orch(clock=clock).session() as session:
        clock.advance(3)
        assert session.summary()["duration_seconds"] == 3.0
        assert session.summary()["outcome"] == "running"
        clock.advance(1)
    clock.advance(10)
    assert session.summary()["duration_seconds"] == 4.0  # ended: no longer growing


@pytest.mark.parametrize("last", [-1, True, 1.5, "2"])
def test_events_last_must_be_a_non_negative_int(last: object) -> None:
    with _orch().session() as session:
        with pytest.raises(InvalidValueError) as caught:
            session.events(last)  # type: ignore[arg-type]
        assert str(caught.value) == f"last must be an int >= 0 or None, got {last!r}"


def test_events_last_keeps_the_newest() -> None:
    with _orch().session() as session:
        for _ in range(3):
            session.run_tool("t", lambda: None)
    everything = session.events()
    assert len(everything) == 8  # started, 2 status changes, 3 tools, 1 status change, completed
    assert session.events(0) == []
    assert session.events(2) == everything[-2:]
    assert session.events(100) == everything
    assert session.events(None) == everything


def test_policy_context_carries_the_sessions_facts() -> None:
    gate = QualityGate(QualityLevel.STRICT)
    with _orch(quality_gate=gate).session() as session:
        quiet = session.policy_context()
        assert (quiet.failed_roles, quiet.completed_roles) == ({}, frozenset())
        assert (quiet.retries_exhausted, quiet.timed_out, quiet.phase) == (False, False, "draft")
        assert quiet.all_roles == frozenset({"writer"})
        with pytest.raises(StatusError):
            session.run_turn(lambda: (_ for _ in ()).throw(StatusError(401)), model="m")
        failed = session.policy_context(phase_completed=True)
    assert failed.failures == {AgentFailureClass.AUTH_FAILURE: 1}
    assert set(failed.failed_roles) == {"writer"}
    assert failed.phase_completed is True
    assert failed.gate_required is QualityLevel.STRICT
    done = session.policy_context()
    assert done.completed_roles == frozenset({"writer"})
    assert session.policy_context(phase="review").phase == "review"  # a fact overrides


def test_without_an_engine_or_a_gate_evaluating_them_is_refused() -> None:
    with _orch().session() as session:
        with pytest.raises(SessionStateError) as no_engine:
            session.evaluate_policy()
        with pytest.raises(SessionStateError) as no_gate:
            session.evaluate_gate("strict")
    assert str(no_engine.value) == "no policy engine: pass policy_engine= to the Orchestrator"
    assert str(no_gate.value) == "no quality gate: pass quality_gate= to the Orchestrator"


def test_evaluations_are_recorded_as_events() -> None:
    engine = PolicyEngine(
        [
            PolicyRule(
                name="advance",
                condition=PhaseCompleted(),
                actions=[PolicyActionData(PolicyAction.ADVANCE_PHASE)],
            )
        ]
    )
    gate = QualityGate(QualityLevel.STANDARD)
    with _orch(quality_gate=gate).session() as session:
        session.evaluate_policy(engine, phase_completed=True)
        outcome = session.evaluate_gate("strict")
    policy_event, gate_event = [
        e
        for e in session.events()
        if e.name in (EventName.POLICY_EVALUATED, EventName.GATE_EVALUATED)
    ]
    assert policy_event.data == {"actions": ["advance_phase"]}
    assert gate_event.data == outcome.to_dict()


def test_input_is_provided_only_while_waiting_for_it() -> None:
    with _orch().session() as session:
        with pytest.raises(SessionStateError) as caught:
            session.provide_input("too early")
        assert str(caught.value) == f"session {session.id} is running, not waiting for input"
        session.pause_for_input()
        session.provide_input()
        session.pause_for_input("tone?")
        session.provide_input("formal")
    asked = [(e.name, e.detail) for e in session.events() if "input" in str(e.name)]
    assert asked == [
        (EventName.INPUT_REQUESTED, None),
        (EventName.INPUT_PROVIDED, None),
        (EventName.INPUT_REQUESTED, "tone?"),
        (EventName.INPUT_PROVIDED, "formal"),
    ]
    statuses = [e.data["to"] for e in session.events() if e.name == EventName.STATUS_CHANGED]
    assert statuses == [
        "initializing",
        "running",
        "waiting_for_input",
        "running",
        "waiting_for_input",
        "running",
        "completed",
    ]


def test_a_session_is_entered_once() -> None:
    session = _orch().session()
    with session:
        pass
    with pytest.raises(SessionStateError) as caught:
        session.__enter__()
    assert str(caught.value) == (
        f"session {session.id} was already started: a session is entered once"
    )


def test_a_turn_before_the_start_and_after_the_end_says_why() -> None:
    session = _orch().session()
    with pytest.raises(SessionStateError) as early:
        session.run_turn(lambda: 1)
    assert str(early.value) == (
        f"session {session.id} is not started: use it as 'with orch.session() as s:'"
    )
    with session:
        pass
    with pytest.raises(SessionStateError) as late:
        session.run_tool("t", lambda: 1)
    assert str(late.value) == f"session {session.id} is completed; turns need it RUNNING"


def test_an_error_after_a_handoff_fails_the_session_but_keeps_the_worker_completed() -> None:
    registry = AgentRegistry()
    session = _orch(registry=registry).session()

    def work() -> Handoff:
        with session:
            handoff = session.handoff_to("reviewer", "draft ready")
            raise RuntimeError(handoff.to_worker_id)

    with pytest.raises(RuntimeError) as caught:
        work()
    handoff = session.summary()["handoff"]
    assert isinstance(handoff, dict)
    assert str(caught.value) == handoff["to_worker_id"]
    assert session.status is AgentStatus.COMPLETED  # terminal already: not moved to FAILED
    summary = session.summary()
    assert (summary["outcome"], summary["failure_class"]) == ("failed", "unknown")
    assert session.events()[-1].name == EventName.SESSION_FAILED
    assert session.worker is not None
    assert handoff == {
        "from_worker_id": session.worker.id,
        "to_worker_id": handoff["to_worker_id"],
        "from_role": "writer",
        "to_role": "reviewer",
        "reason": "draft ready",
        "context": {},
        "timestamp": handoff["timestamp"],
    }
    assert registry.get(str(handoff["to_worker_id"])).status is AgentStatus.IDLE
    (event,) = [e for e in session.events() if e.name == EventName.HANDOFF]
    assert (event.detail, event.data) == (
        "draft ready",
        {"to_role": "reviewer", "to_worker_id": handoff["to_worker_id"]},
    )


def test_a_cancel_after_a_handoff_keeps_the_worker_completed() -> None:
    session = _orch().session()

    def work() -> None:
        with session:
            session.handoff_to("reviewer", "draft ready")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()
    assert session.status is AgentStatus.COMPLETED
    assert session.summary()["outcome"] == "cancelled"
    assert session.events()[-1].name == EventName.SESSION_CANCELLED


class KeepsResult(BaseHook):
    def after_tool(self, call: ToolCall, result: object) -> object | None:
        return None


def test_an_after_tool_hook_that_returns_none_keeps_the_result() -> None:
    with _orch(hooks=[KeepsResult()]).session() as session:
        assert session.run_tool("calc", lambda: 42) == 42


# -- construction: every argument checked, the message naming it and its value -------------

_OPAQUE = object()
CONSTRUCTION_ERRORS: list[tuple[str, object, str]] = [
    ("role", "", "role must be a non-empty str, got ''"),
    ("phase", 3, "phase must be a non-empty str, got 3"),
    ("project_id", 1.5, "project_id must be a str, an int or None, got 1.5"),
    ("project_id", True, "project_id must be a str, an int or None, got True"),
    ("retry", "three", "retry must be a RetryPolicy or None, got 'three'"),
    ("budget", 5.0, "budget must be a Budget or None, got 5.0"),
    ("permissions", ["w"], "permissions must be a PermissionEnforcer or None, got ['w']"),
    ("circuit_breaker", "b", "circuit_breaker must be a CircuitBreaker or None, got 'b'"),
    ("quality_gate", "strict", "quality_gate must be a QualityGate or None, got 'strict'"),
    ("policy_engine", [], "policy_engine must be a PolicyEngine or None, got []"),
    ("registry", {}, "registry must be a AgentRegistry or None, got {}"),
    ("clock", 5, "clock must be callable or None, got 5"),
    ("wall_clock", "now", "wall_clock must be callable or None, got 'now'"),
    ("sleep", 0, "sleep must be callable or None, got 0"),
    ("async_sleep", 0, "async_sleep must be callable or None, got 0"),
    ("enforce_budget", "no", "enforce_budget must be a bool, got 'no'"),
    ("max_iterations", 0, "max_iterations must be None or an int >= 1, got 0"),
    ("max_total_retries", -1, "max_total_retries must be None or an int >= 0, got -1"),
    ("event_capacity", 0, "event_capacity must be an int >= 1, got 0"),
    (
        "default_estimate",
        {"input_tokens": 1},
        "default_estimate must be a UsageSnapshot or None, got {'input_tokens': 1}",
    ),
    ("runner", _OPAQUE, f"runner must be a DeadlineRunner or None, got {_OPAQUE!r}"),
    ("hooks", "hooks", "hooks must be an iterable of hook objects, got 'hooks'"),
    ("budget_usd", "-1", "budget_usd must be finite and >= 0, got '-1'"),
    ("budget_usd", "lots", "budget_usd must be a decimal number, got 'lots'"),
    (
        "budget_usd",
        "0.0000000000000001",
        "budget_usd has more precision than 1e-15 USD can hold exactly, "
        "got 0.0000000000000001 (refusing to round it)",
    ),
]


@pytest.mark.parametrize(("name", "value", "message"), CONSTRUCTION_ERRORS)
def test_a_wrong_argument_is_refused_with_a_message_naming_it(
    name: str, value: object, message: str
) -> None:
    arguments: dict[str, object] = {"role": "writer", "phase": "draft", name: value}
    with pytest.raises(InvalidValueError) as caught:
        Orchestrator(**arguments)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_the_session_cap_is_kept_as_an_exact_decimal() -> None:
    orch = _orch(budget_usd="0.50")
    assert orch.budget_usd == Decimal("0.50")
    assert orch._budget_femto == 5 * 10**14
    assert _orch(budget_usd=2).budget_usd == Decimal(2)
    assert _orch().budget_usd is None
    with orch.session() as session:
        assert session.summary()["budget_usd"] == "0.50"


def test_arun_tool_refuses_what_is_not_callable_before_counting_a_call() -> None:
    async def main() -> Session:
        async with _orch().asession() as session:
            with pytest.raises(InvalidValueError) as caught:
                await session.arun_tool("calc", 3)  # type: ignore[arg-type]
            assert str(caught.value) == "fn must be callable, got 3"
        return session

    session = asyncio.run(main())
    assert session.summary()["tool_calls"] == 0
    assert session.summary()["failures"] == {}


# -- what the session logs ---------------------------------------------------------------------


def test_every_event_is_logged_at_its_level_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="techrevati.runtime.orchestrator")
    clock = FakeClock()
    orch = _orch(project_id="p1", permissions=_enforced().permissions, clock=clock)
    session = orch.session()

    def work() -> None:
        with session:
            session.run_turn(lambda: "ok", model="m", usage=USAGE)
            session.run_tool("read", lambda: None)
            with pytest.raises(PermissionDeniedError):
                session.run_tool("shell", lambda: None)
            session.run_turn(lambda: (_ for _ in ()).throw(StatusError(429, "slow")), model="m")

    with pytest.raises(StatusError):
        work()
    levels = [(r.levelname, r.event) for r in caplog.records if hasattr(r, "event")]
    assert levels == [
        ("INFO", "session.started"),
        ("DEBUG", "worker.status_changed"),
        ("DEBUG", "worker.status_changed"),
        ("DEBUG", "turn.completed"),
        ("DEBUG", "tool.completed"),
        ("WARNING", "tool.denied"),
        ("WARNING", "turn.failed"),
        ("DEBUG", "worker.status_changed"),
        ("ERROR", "session.failed"),
    ]
    completed = next(r for r in caplog.records if getattr(r, "event", "") == "turn.completed")
    assert completed.getMessage() == "turn.completed "
    assert (completed.role, completed.phase, completed.project_id) == ("writer", "draft", "p1")  # type: ignore[attr-defined]
    assert (completed.session_id, completed.model, completed.cost) == (session.id, "m", "0.0045")  # type: ignore[attr-defined]
    assert completed.worker_id == session.worker.id  # type: ignore[attr-defined,union-attr]
    assert completed.failure_class is None  # type: ignore[attr-defined]
    failed = next(r for r in caplog.records if getattr(r, "event", "") == "turn.failed")
    assert failed.getMessage() == "turn.failed StatusError: slow"
    assert failed.failure_class == "rate_limit"  # type: ignore[attr-defined]


def test_nothing_is_logged_below_the_loggers_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="techrevati.runtime.orchestrator")
    with _orch().session() as session:
        session.run_turn(lambda: "ok", model="m", usage=USAGE)
    assert [r for r in caplog.records if r.name == "techrevati.runtime.orchestrator"] == []


def test_a_long_error_is_cut_to_200_characters_in_its_event() -> None:
    long, exact = "x" * 300, "y" * (200 - len("ValueError: "))
    with _orch().session() as session:
        for message in (long, exact):
            with pytest.raises(ValueError, match=r"^[xy]+$"):
                session.run_turn(lambda m=message: (_ for _ in ()).throw(ValueError(m)))
    details = [e.detail for e in session.events() if e.name == EventName.TURN_FAILED]
    assert details == [f"ValueError: {'x' * 185}...", f"ValueError: {exact}"]
    assert [len(d or "") for d in details] == [200, 200]


def test_the_breakers_changes_are_session_events() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("api", failure_threshold=1, recovery_timeout_seconds=5, clock=clock)
    with _orch(circuit_breaker=breaker).session() as session, pytest.raises(StatusError):
        session.run_turn(lambda: (_ for _ in ()).throw(StatusError(503)))
    (changed,) = [e for e in session.events() if e.name == EventName.BREAKER_STATE_CHANGED]
    assert changed.detail == "api: closed -> open"
    assert changed.data == {"breaker": "api", "from_state": "closed", "to_state": "open"}
    breaker.reset()  # the session ended: it no longer listens
    assert [e.name for e in session.events()].count(EventName.BREAKER_STATE_CHANGED) == 1


def test_the_sessions_metadata_opens_its_log_and_is_a_copy() -> None:
    metadata = {"ticket": 9}
    with _orch().session(metadata=metadata) as session:
        metadata["ticket"] = 10
    assert session.metadata == {"ticket": 9}
    first = session.events()[0]
    assert (first.name, first.data, first.status) == (
        EventName.SESSION_STARTED,
        {"ticket": 9},
        "idle",
    )
    assert _orch().session().metadata == {}


class AfterOnly(BaseHook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def after_model(self, call: ModelCall, result: object) -> object | None:
        self.calls.append((call.model, call.turn, call.attempt))
        return None


def test_an_after_model_hook_alone_sees_each_turns_call() -> None:
    hook = AfterOnly()
    with _orch(hooks=[hook]).session() as session:
        assert session.run_turn(lambda: "a", model="m", usage=USAGE)[0] == "a"
        assert session.run_turn(lambda: "b", model="backup", usage=USAGE)[0] == "b"
    assert hook.calls == [("m", 1, 1), ("backup", 2, 1)]


class EventSinkOnly:
    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def write_event(self, event: AgentEvent) -> None:
        self.events.append(event)


def test_an_event_sink_gets_each_turn_completed_as_it_happens() -> None:
    sink = EventSinkOnly()
    with _orch(sinks=[sink], wall_clock=lambda: STAMP).session() as session:
        session.run_turn(lambda: "ok", model="m", usage=USAGE)
        (completed,) = [e for e in sink.events if e.name == EventName.TURN_COMPLETED]
    assert completed == session.events()[3]
    assert completed.timestamp == STAMP
    assert completed.data["cost_usd"] == "0.0045"
    assert completed.status == "running"


def test_a_turn_completed_with_the_default_wall_clock_is_stamped_now_in_utc() -> None:
    before = datetime.now(UTC)
    with _orch().session() as session:
        session.run_turn(lambda: "ok", model="m", usage=USAGE)
    after = datetime.now(UTC)
    (completed,) = [e for e in session.events() if e.name == EventName.TURN_COMPLETED]
    assert before <= completed.timestamp <= after
    assert completed.timestamp.tzinfo is UTC


# -- tools, handoffs and endings: every field they record ---------------------------------


class SeesTools(BaseHook):
    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        self.calls.append(call)
        return None


def test_a_sync_tool_records_its_duration_and_the_call_its_hooks_see() -> None:
    clock = FakeClock()
    hook = SeesTools()

    def slow(x: int, *, scale: int) -> int:
        clock.advance(0.75)
        return x * scale

    def failing() -> None:
        clock.advance(0.25)
        raise KeyError("missing")

    with _orch(hooks=[hook], clock=clock).session() as session:
        assert session.run_tool("calc", slow, 2, scale=3) == 6
        with pytest.raises(KeyError):
            session.run_tool("lookup", failing)
    assert [
        (c.name, c.args, dict(c.kwargs), c.role, c.phase, c.session_id) for c in hook.calls
    ] == [
        ("calc", (2,), {"scale": 3}, "writer", "draft", session.id),
        ("lookup", (), {}, "writer", "draft", session.id),
    ]
    tools = [
        (e.name, e.failure_class, e.detail, e.data)
        for e in session.events()
        if e.name in (EventName.TOOL_COMPLETED, EventName.TOOL_FAILED)
    ]
    assert tools == [
        (EventName.TOOL_COMPLETED, None, None, {"tool": "calc", "duration_seconds": 0.75}),
        (
            EventName.TOOL_FAILED,
            AgentFailureClass.TOOL_ERROR,
            "KeyError: 'missing'",
            {"tool": "lookup", "duration_seconds": 0.25, "error_type": "KeyError"},
        ),
    ]
    assert session.summary()["tool_calls"] == 2


def test_a_denied_tool_names_the_rule_that_denied_it() -> None:
    with _enforced().session() as session, pytest.raises(PermissionDeniedError) as caught:
        session.run_tool("shell", lambda: None)
    (denied,) = [e for e in session.events() if e.name == EventName.TOOL_DENIED]
    assert denied.failure_class is AgentFailureClass.PERMISSION_DENIED
    assert denied.detail == caught.value.outcome.reason
    assert denied.data == {"tool": "shell", "rule": "denied_tools:shell"}


def test_a_tool_is_refused_outside_a_running_session() -> None:
    with _orch().session() as session:
        session.pause_for_input("wait")
        with pytest.raises(SessionStateError) as caught:
            session.run_tool("calc", lambda: 1)
        assert (
            str(caught.value) == f"session {session.id} is waiting_for_input; turns need it RUNNING"
        )
        with pytest.raises(SessionStateError):
            session.pause_for_input("again")
        with pytest.raises(SessionStateError):
            session.handoff_to("reviewer", "not now")


def test_the_transitions_say_why() -> None:
    with pytest.raises(StatusError), _orch().session() as failed:
        failed.run_turn(lambda: (_ for _ in ()).throw(StatusError(429)), model="m")
    with _orch().session() as handed:
        handed.handoff_to("reviewer", "draft ready", {"doc": "a.md"})
    with _orch().session() as waiting:
        waiting.pause_for_input("tone?")

    def details(session: Session) -> list[tuple[object, object]]:
        return [
            (e.data["to"], e.detail) for e in session.events() if e.name == EventName.STATUS_CHANGED
        ]

    assert details(failed)[-1] == ("failed", "rate_limit: StatusError")
    assert details(handed)[-1] == ("completed", "handoff to reviewer: draft ready")
    assert details(waiting)[-3:] == [
        ("waiting_for_input", "tone?"),
        ("running", "session ended while waiting for input"),
        ("completed", None),
    ]
    summary = handed.summary()["handoff"]
    assert isinstance(summary, dict)
    assert summary["context"] == {"doc": "a.md"}


def test_a_cancelled_session_records_how_it_ended() -> None:
    clock = FakeClock()
    session = _orch(clock=clock).session()

    def work() -> None:
        with session:
            clock.advance(2)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()
    last = session.events()[-2:]
    assert [(e.name, e.detail, e.data.get("to")) for e in last] == [
        (EventName.STATUS_CHANGED, "KeyboardInterrupt", "cancelled"),
        (EventName.SESSION_CANCELLED, None, None),
    ]
    assert last[1].data == {"duration_seconds": 2.0, "cost_usd": "0", "turns": 0}
    assert session.summary()["failure_class"] == "cancelled"


def test_a_session_that_fails_outside_any_turn_counts_its_role_as_failed() -> None:
    with pytest.raises(RuntimeError), _orch().session() as session:
        raise RuntimeError("outside a turn")
    assert session.summary()["failures"] == {}
    assert set(session.policy_context().failed_roles) == {"writer"}
    assert session.policy_context().completed_roles == frozenset()
