"""Governance inside a session: hard stops that no retry catches, and the worker failed at once.

The :class:`Governance` value and its meter are tested in tests/test_governance.py;
here the session counts every turn, streamed turn, failed turn and tool call
against it, refuses the one past a limit before ``fn`` runs, emits
``governance.breached``, and fails the worker with its own failure class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from techrevati.runtime import (
    CircuitBreaker,
    CircuitState,
    Orchestrator,
    RetryPolicy,
    UsageSnapshot,
    retry_call,
)
from techrevati.runtime.errors import (
    BudgetExceededError,
    MaxIterationsExceededError,
    RetriesExhaustedError,
    SessionStateError,
    TransientRuntimeError,
    is_refusal,
)
from techrevati.runtime.events import AgentFailureClass, EventName
from techrevati.runtime.governance import (
    Governance,
    GovernanceBreached,
    GovernanceBreachedError,
    GovernanceLimit,
    GovernanceMeter,
    WithinGovernance,
)
from techrevati.runtime.lifecycle import AgentStatus
from techrevati.runtime.policy_engine import PolicyAction, PolicyEngine, PolicyRule
from tests.conftest import FakeClock

pytestmark = pytest.mark.usefixtures("priced_models")

USAGE = UsageSnapshot(1000, 100)  # on m: $0.003 + $0.0015 = $0.0045
USAGE_COST = Decimal("0.0045")


def orch(governance: Governance, **kwargs: Any) -> Orchestrator:
    return Orchestrator("writer", "draft", governance=governance, **kwargs)


class Calls:
    """A model call that counts how often it ran."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return "ok"


def breaches(session: Any) -> list[dict[str, object]]:
    return [dict(e.data) for e in session.events() if e.name == EventName.GOVERNANCE_BREACHED]


def test_the_turn_past_max_turns_is_refused_before_fn_runs() -> None:
    calls = Calls()
    with orch(Governance(max_turns=2)).session() as session:
        session.run_turn(calls, model="m", usage=USAGE)
        session.run_turn(calls, model="m", usage=USAGE)
        with pytest.raises(GovernanceBreachedError) as caught:
            session.run_turn(calls, model="m", usage=USAGE)
    assert calls.count == 2
    assert caught.value.limit is GovernanceLimit.TURNS
    assert (caught.value.maximum, caught.value.value) == (2, 2)
    assert session.status is AgentStatus.FAILED
    assert session.summary()["failure_class"] == AgentFailureClass.GOVERNANCE_BREACHED.value
    assert breaches(session) == [
        {"limit": "max_turns", "maximum": 2, "value": 2, "refused": "turn", "tool": ""}
    ]
    assert session.tracker.turns == 2


def test_a_caught_breach_still_fails_the_session_and_stops_it() -> None:
    calls = Calls()
    with orch(Governance(max_turns=1)).session() as session:
        session.run_turn(calls, model="m", usage=USAGE)
        with pytest.raises(GovernanceBreachedError):
            session.run_turn(calls, model="m", usage=USAGE)
        with pytest.raises(SessionStateError):  # the worker is FAILED: nothing more runs
            session.run_turn(calls, model="m", usage=USAGE)
    assert calls.count == 1
    summary = session.summary()
    assert summary["outcome"] == "failed"
    assert summary["failure_class"] == "governance_breached"
    ended = [e for e in session.events() if e.name == EventName.SESSION_FAILED]
    assert [e.failure_class for e in ended] == [AgentFailureClass.GOVERNANCE_BREACHED]
    assert len(breaches(session)) == 1


def test_max_cost_lets_the_turn_that_reaches_it_finish_and_refuses_the_next() -> None:
    calls = Calls()
    governance = Governance(max_cost_usd=USAGE_COST * 2)
    with orch(governance).session() as session:
        session.run_turn(calls, model="m", usage=USAGE)
        session.run_turn(calls, model="m", usage=USAGE)
        with pytest.raises(GovernanceBreachedError) as caught:
            session.run_turn(calls, model="m", usage=USAGE)
    assert calls.count == 2
    assert caught.value.limit is GovernanceLimit.COST
    assert caught.value.value == USAGE_COST * 2
    assert session.governance is not None
    assert session.governance.cost_usd == session.tracker.total_cost() == USAGE_COST * 2


def test_billed_failed_attempts_count_toward_max_cost() -> None:
    class BilledError(TransientRuntimeError):
        def __init__(self) -> None:
            super().__init__("cut off")
            # What a provider billed for the failed attempt, as openai's body carries it.
            self.body = {"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}

    def fail() -> str:
        raise BilledError

    governance = Governance(max_cost_usd=USAGE_COST)
    with orch(governance).session() as session:
        with pytest.raises(BilledError):
            session.run_turn(fail, model="m")
        with pytest.raises(GovernanceBreachedError):
            session.run_turn(Calls(), model="m", usage=USAGE)
    assert session.governance is not None
    assert session.governance.cost_usd == session.tracker.total_cost()


def test_consecutive_failed_turns_stop_the_session_and_are_never_retried_past() -> None:
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        raise TransientRuntimeError("the provider is down")

    policy = RetryPolicy(max_attempts=2, sleep=lambda _s: None)
    governance = Governance(max_consecutive_failures=2)
    with orch(governance, retry=policy).session() as session:
        for _ in range(2):
            with pytest.raises(RetriesExhaustedError):
                session.run_turn(flaky, model="m")
        with pytest.raises(GovernanceBreachedError) as caught:
            session.run_turn(flaky, model="m")
    assert caught.value.limit is GovernanceLimit.CONSECUTIVE_FAILURES
    assert attempts == 4  # two failed turns of two attempts each; the third never ran
    assert session.governance is not None
    assert session.governance.consecutive_failures == 2


def test_a_success_resets_the_failures_in_a_row() -> None:
    outcomes = iter([False, True, False, True, False])

    def sometimes() -> str:
        if not next(outcomes):
            raise TransientRuntimeError("down")
        return "ok"

    with orch(Governance(max_consecutive_failures=2)).session() as session:
        for _ in range(5):
            with contextlib.suppress(TransientRuntimeError):
                session.run_turn(sometimes, model="m", usage=USAGE)
    assert session.status is AgentStatus.COMPLETED
    assert session.governance is not None
    assert session.governance.consecutive_failures == 1


def test_tool_calls_per_name_and_in_all() -> None:
    ran: list[str] = []
    governance = Governance(max_tool_calls=3, max_tool_calls_per_name={"search": 1})
    with orch(governance).session() as session:
        session.run_tool("search", ran.append, "a")
        with pytest.raises(GovernanceBreachedError) as per_name:
            session.run_tool("Search", ran.append, "b")  # the same tool, normalised
    assert ran == ["a"]
    assert per_name.value.limit is GovernanceLimit.TOOL_CALLS_PER_NAME
    assert per_name.value.tool == "search"
    assert session.status is AgentStatus.FAILED

    with orch(Governance(max_tool_calls=2)).session() as session:
        session.run_tool("a", ran.append, "1")
        session.run_tool("b", ran.append, "2")
        with pytest.raises(GovernanceBreachedError) as in_all:
            session.run_tool("c", ran.append, "3")
    assert in_all.value.limit is GovernanceLimit.TOOL_CALLS
    assert ran == ["a", "1", "2"]


def test_wall_time_refuses_the_next_turn_and_the_next_retry(fake_clock: FakeClock) -> None:
    governance = Governance(max_wall_seconds=10)
    calls = Calls()
    with orch(governance, clock=fake_clock).session() as session:
        session.run_turn(calls, model="m", usage=USAGE)
        fake_clock.advance(10)
        with pytest.raises(GovernanceBreachedError) as caught:
            session.run_turn(calls, model="m", usage=USAGE)
    assert caught.value.limit is GovernanceLimit.WALL_TIME
    assert calls.count == 1

    attempts = 0

    def slow_and_failing() -> str:
        nonlocal attempts
        attempts += 1
        fake_clock.advance(11)
        raise TransientRuntimeError("down")

    policy = RetryPolicy(max_attempts=5, sleep=lambda _s: None)
    with (
        pytest.raises(GovernanceBreachedError) as mid_turn,
        orch(governance, clock=fake_clock, retry=policy).session() as session,
    ):
        session.run_turn(slow_and_failing, model="m")
    assert mid_turn.value.limit is GovernanceLimit.WALL_TIME
    assert attempts == 1  # 11 s into the session: the retry is refused, not made
    assert session.governance is not None
    assert session.governance.consecutive_failures == 1


def test_async_turns_and_tools_are_counted_and_refused() -> None:
    async def answer() -> str:
        return "ok"

    async def tool() -> str:
        return "done"

    async def main() -> Any:
        governance = Governance(max_turns=1, max_tool_calls=1)
        async with orch(governance).asession() as session:
            await session.arun_turn(answer, model="m", usage=USAGE)
            await session.arun_tool("t", tool)
            with pytest.raises(GovernanceBreachedError) as caught:
                await session.arun_turn(answer, model="m", usage=USAGE)
        return session, caught.value

    session, breach = asyncio.run(main())
    assert breach.limit is GovernanceLimit.TURNS
    assert session.summary()["failure_class"] == "governance_breached"


def test_a_streamed_turn_is_charged_to_the_meter() -> None:
    def chunks() -> Iterator[dict[str, object]]:
        yield {"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}

    governance = Governance(max_cost_usd="1")
    with orch(governance).session() as session:
        assert list(session.stream_turn(chunks, model="m"))
    assert session.governance is not None
    assert session.governance.turns == 1
    assert session.governance.cost_usd == session.tracker.total_cost() == USAGE_COST


def test_the_policy_engine_reads_the_sessions_meter() -> None:
    engine = PolicyEngine(
        [
            PolicyRule("stop", GovernanceBreached(), [PolicyAction.ABORT], priority=0),
            PolicyRule("wrap up", ~WithinGovernance(0.5), [PolicyAction.ESCALATE]),
        ]
    )
    with orch(Governance(max_turns=4), policy_engine=engine).session() as session:
        session.run_turn(Calls(), model="m", usage=USAGE)
        assert session.evaluate_policy() == []
        session.run_turn(Calls(), model="m", usage=USAGE)
        actions = [a.action for a in session.evaluate_policy()]
        assert actions == [PolicyAction.ESCALATE]  # half the turns used
        extra = session.policy_context(extra={"mine": 1}).extra
        assert extra["mine"] == 1
        assert extra["governance"] is session.governance


def test_governance_must_be_a_governance() -> None:
    with pytest.raises(Exception, match="governance must be a Governance"):
        Orchestrator("writer", "draft", governance={"max_turns": 1})  # type: ignore[arg-type]


def test_without_governance_the_session_has_no_meter() -> None:
    with Orchestrator("writer", "draft").session() as session:
        session.run_turn(Calls(), model="m", usage=USAGE)
    assert session.governance is None


def test_a_breach_wrapped_by_a_framework_is_still_never_retried() -> None:
    calls = 0
    meter = GovernanceMeter(Governance(max_tool_calls=0))

    def step() -> str:
        nonlocal calls
        calls += 1
        try:
            meter.before_tool("shell")
        except GovernanceBreachedError as breach:
            raise RuntimeError("the framework's own error") from breach
        return "ran"

    policy = RetryPolicy(max_attempts=5, retry_on=lambda exc: True, sleep=lambda _s: None)
    with pytest.raises(RuntimeError, match="framework"):
        retry_call(step, policy=policy)
    assert calls == 1


def test_refusals_inside_a_breaker_never_count_as_the_dependencys_failures() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=1)
    refusals: list[Exception] = [
        GovernanceBreachedError(GovernanceLimit.TURNS, 1, 1),
        BudgetExceededError("over the cap", limit=Decimal(1), spent=Decimal(1)),
        MaxIterationsExceededError(3),
    ]
    for refusal in refusals:

        def refuse(refusal: Exception = refusal) -> str:
            raise refusal

        with pytest.raises(type(refusal)):
            breaker.call(refuse)
        assert breaker.state is CircuitState.CLOSED, refusal
    assert is_refusal(refusals[0])
    assert not is_refusal(TransientRuntimeError("down"))
    with pytest.raises(TransientRuntimeError):
        breaker.call(lambda: (_ for _ in ()).throw(TransientRuntimeError("down")))
    assert breaker.state is CircuitState.OPEN  # a real failure still counts
