"""The turn engine and sessions: behaviours a mutation run of the turns group showed no test pinned.

What a resumed conversation's input and a handoff record on the workers; the
rate limiter's and the budget's part in a turn (the estimate each is given,
the events and log fields of a wait or a refusal); a shared store's events;
how a refused stream is closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from techrevati.runtime import (
    AgentEvent,
    BaseHook,
    Budget,
    BudgetExceededError,
    EventName,
    GuardrailViolatedError,
    Orchestrator,
    RateLimitedError,
    RateLimiter,
    RetryPolicy,
    ToolCall,
    TurnTimeoutError,
    UsageSnapshot,
)
from techrevati.runtime._turns import UNNAMED_MODEL
from techrevati.runtime.errors import StoreUnavailableError
from techrevati.runtime.lifecycle import AgentRegistry, AgentStatus
from techrevati.runtime.orchestrator import Session, StreamResultError
from techrevati.runtime.permissions import PermissionMode, PermissionPolicy, RolePermissionConfig
from techrevati.runtime.redis_store import RedisStore
from tests.conftest import FakeClock

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer

WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_the_input_given_is_the_detail_of_the_workers_return_to_running() -> None:
    with Orchestrator("writer", "draft").session() as session:
        session.pause_for_input("which tone?")
        session.provide_input("formal")
        assert session.worker is not None
        last = session.worker.events[-1]
    assert (last.status, last.detail) == (AgentStatus.RUNNING, "formal")


def test_no_input_text_leaves_the_return_to_running_without_detail() -> None:
    with Orchestrator("writer", "draft").session() as session:
        session.pause_for_input("anything else?")
        session.provide_input()
        assert session.worker is not None
        assert session.worker.events[-1].detail is None


def test_a_handoff_registers_the_next_worker_in_the_same_project_at_the_wall_clock() -> None:
    registry = AgentRegistry()
    orch = Orchestrator(
        "writer", "draft", project_id=42, registry=registry, wall_clock=lambda: WHEN
    )
    with orch.session() as session:
        handoff = session.handoff_to("reviewer", "draft ready")
    target = registry.get(handoff.to_worker_id)
    assert (target.project_id, target.phase) == (42, "draft")
    assert handoff.timestamp == WHEN


# --- the rate limiter's admission of a turn ---------------------------------------------


def _limiter(clock: FakeClock, **limits: float) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, async_sleep=clock.asleep, **limits)  # type: ignore[arg-type]


def _throttled(session: Session) -> list[AgentEvent]:
    return [e for e in session.events() if e.name == EventName.TURN_THROTTLED]


EIGHTY = UsageSnapshot(input_tokens=80)


@pytest.mark.parametrize("where", ["turn", "orchestrator"])
def test_a_turn_is_admitted_on_its_estimate_and_the_wait_is_its_event(where: str) -> None:
    clock = FakeClock()
    rl = _limiter(clock, tokens_per_minute=100)
    default = EIGHTY if where == "orchestrator" else None
    turn_estimate = EIGHTY if where == "turn" else None
    orch = Orchestrator("coder", "build", rate_limiter=rl, clock=clock, default_estimate=default)
    with orch.session() as session:
        session.run_turn(lambda: "a", model="m", estimate=turn_estimate, usage=EIGHTY)
        clock.advance(15)
        session.run_turn(lambda: "b", model="m", estimate=turn_estimate, usage=EIGHTY)
        (event,) = _throttled(session)
    assert clock.slept == [45.0]  # 80 of 100 tokens in the window: the estimate waits
    assert event.detail == "waited 45s for rate-limit capacity"
    assert event.data == {"model": "m", "attempt": 1, "wait_seconds": 45.0}


@pytest.mark.parametrize("where", ["turn", "orchestrator"])
def test_an_async_turn_is_admitted_on_its_estimate_and_the_wait_is_its_event(where: str) -> None:
    clock = FakeClock()
    rl = _limiter(clock, tokens_per_minute=100)
    default = EIGHTY if where == "orchestrator" else None
    turn_estimate = EIGHTY if where == "turn" else None
    orch = Orchestrator("coder", "build", rate_limiter=rl, clock=clock, default_estimate=default)

    async def call() -> str:
        return "a"

    async def go() -> list[AgentEvent]:
        async with orch.asession() as session:
            await session.arun_turn(call, model="m", estimate=turn_estimate, usage=EIGHTY)
            clock.advance(15)
            await session.arun_turn(call, model="m", estimate=turn_estimate, usage=EIGHTY)
            return _throttled(session)

    (event,) = asyncio.run(go())
    assert clock.slept == [45.0]
    assert event.detail == "waited 45s for rate-limit capacity"
    assert event.data == {"model": "m", "attempt": 1, "wait_seconds": 45.0}


REFUSED = {
    "model": "m",
    "attempt": 1,
    "wait_seconds": 0.0,
    "limit": "requests",
    "retry_after": 60.0,
    "refused": True,
}


def test_a_refused_admission_is_an_event_with_the_refusal_as_its_detail() -> None:
    clock = FakeClock()
    rl = _limiter(clock, requests_per_minute=1, max_wait=30)
    rl.acquire()
    with Orchestrator("coder", "build", rate_limiter=rl, clock=clock).session() as session:
        with pytest.raises(RateLimitedError) as caught:
            session.run_turn(lambda: "never", model="m")
        (event,) = _throttled(session)
    assert event.detail == str(caught.value)
    assert event.data == REFUSED


def test_a_refused_async_admission_is_an_event_with_the_refusal_as_its_detail() -> None:
    clock = FakeClock()
    rl = _limiter(clock, requests_per_minute=1, max_wait=30)
    rl.acquire()
    orch = Orchestrator("coder", "build", rate_limiter=rl, clock=clock)

    async def call() -> str:
        return "never"

    async def go() -> tuple[RateLimitedError, list[AgentEvent]]:
        async with orch.asession() as session:
            with pytest.raises(RateLimitedError) as caught:
                await session.arun_turn(call, model="m")
            return caught.value, _throttled(session)

    error, (event,) = asyncio.run(go())
    assert event.detail == str(error)
    assert event.data == REFUSED


# --- the async engine's budget holds ----------------------------------------------------


def test_an_async_turn_holds_its_estimate_on_the_budget() -> None:
    budget = Budget(max_total_tokens=100)
    calls: list[str] = []

    async def call() -> str:
        calls.append("called")
        return "a"

    async def go() -> None:
        async with Orchestrator("coder", "build", budget=budget).asession() as session:
            with pytest.raises(BudgetExceededError):
                await session.arun_turn(
                    call, model="m", estimate=UsageSnapshot(input_tokens=200), usage=EIGHTY
                )

    asyncio.run(go())
    assert calls == []  # refused before the call, on the estimate
    assert budget.reserved_tokens == 0


def test_an_async_turn_over_an_unenforced_budget_is_charged_to_it_after_the_call() -> None:
    budget = Budget(max_requests=1)

    async def call() -> str:
        return "a"

    async def go() -> object:
        orch = Orchestrator("coder", "build", budget=budget, enforce_budget=False)
        async with orch.asession() as session:
            for _ in range(3):
                await session.arun_turn(call, model="m", usage=EIGHTY)
            return session.summary()["budget_warnings"]

    assert asyncio.run(go()) == 2
    assert budget.requests == 3
    assert budget.spent_tokens == 240


def test_an_async_turn_holds_its_estimate_on_a_shared_budget(redis_server: RedisServer) -> None:
    client = redis_server.client()
    store = RedisStore(client, prefix="t")
    budget = Budget(max_total_tokens=100, store=store, name="b")
    calls: list[str] = []

    async def call() -> str:
        calls.append("called")
        return "a"

    async def go() -> None:
        async with Orchestrator("coder", "build", budget=budget).asession() as session:
            with pytest.raises(BudgetExceededError):
                await session.arun_turn(
                    call, model="m", estimate=UsageSnapshot(input_tokens=200), usage=EIGHTY
                )

    try:
        asyncio.run(go())
    finally:
        client.close()
    assert calls == []


def test_an_async_turn_whose_shared_budget_is_unreachable_raises_that_and_holds_nothing(
    tmp_path: Path,
) -> None:
    client = redis.Redis(unix_socket_path=str(tmp_path / "nobody.sock"), socket_timeout=1)
    store = RedisStore(client, prefix="t")  # fail_closed for budgets
    budget = Budget(max_requests=10, store=store, name="b")
    clock = FakeClock()
    rl = _limiter(clock, max_concurrent=1)
    orch = Orchestrator("coder", "build", budget=budget, rate_limiter=rl, budget_usd="1")

    async def call() -> str:
        return "a"

    async def go() -> Session:
        async with orch.asession() as session:
            with pytest.raises(StoreUnavailableError):
                await session.arun_turn(call, model="m", usage=EIGHTY)
            return session

    session = asyncio.run(go())
    client.close()
    assert session._cap_held == 0  # the session cap's hold given back
    assert rl.usage()["open"] == 0


# --- the log record of an unenforced budget ---------------------------------------------


@pytest.mark.usefixtures("priced_models")
def test_an_unenforced_overrun_is_logged_with_the_sessions_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    orch = Orchestrator("coder", "build", project_id=7, budget_usd="1", enforce_budget=False)
    caplog.set_level(logging.WARNING, logger="techrevati.runtime.orchestrator")
    with orch.session() as session:
        session.run_turn(lambda: "a", model="m", usage=UsageSnapshot(input_tokens=1_000_000))
        session.run_turn(lambda: "b", model="m", usage=UsageSnapshot(input_tokens=1))
    (record,) = [r for r in caplog.records if r.getMessage().startswith("budget exceeded")]
    fields = {
        name: getattr(record, name, None)
        for name in ("role", "phase", "project_id", "session_id", "model")
    }
    assert fields == {
        "role": "coder",
        "phase": "build",
        "project_id": 7,
        "session_id": session.id,
        "model": "m",
    }


# --- a shared store's events ------------------------------------------------------------


def test_a_stores_outage_and_recovery_are_events_naming_the_store_primitive_and_reason(
    fresh_redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    client = fresh_redis_server.client()
    store = RedisStore(client, prefix="t", clock=clock, retry_interval=1)
    budget = Budget(max_requests=100, store=store, name="b")
    orch = Orchestrator("writer", "draft", budget=budget)
    with orch.session() as session:
        session.run_turn(lambda: "ok", model="m", usage=UsageSnapshot())
        fresh_redis_server.kill()
        with pytest.raises(StoreUnavailableError):
            session.run_turn(lambda: "never", model="m", usage=UsageSnapshot())
        fresh_redis_server.restart()
        clock.advance(1)
        session.run_turn(lambda: "ok", model="m", usage=UsageSnapshot())
        events = [e for e in session.events() if str(e.name).startswith("store.")]
    client.close()
    down, up = events
    assert (down.name, up.name) == (EventName.STORE_UNAVAILABLE, EventName.STORE_RECOVERED)
    reason = down.data["reason"]
    assert isinstance(reason, str)
    assert reason.startswith("ConnectionError: ")
    assert down.data["primitive"] == up.data["primitive"] == "budget 'b'"
    assert down.detail == f"t (budget 'b'): {reason}"
    assert up.data["after"] == reason
    assert up.detail == f"t (budget 'b'): {reason}"


# --- refused streams: what is closed, and how -------------------------------------------


class Stream:
    """Named like openai's sync stream; its ``close`` is a coroutine function."""

    closed = 0

    async def close(self) -> None:
        Stream.closed += 1


def test_a_refused_sync_stream_whose_close_is_async_is_not_closed() -> None:
    Stream.closed = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with (
            Orchestrator("coder", "build").session() as session,
            pytest.raises(StreamResultError),
        ):
            session.run_turn(Stream, model="m")
        gc.collect()
    never_awaited = [w for w in caught if "never awaited" in str(w.message)]
    assert never_awaited == []  # its close() was never called (there is no loop to await it)
    assert Stream.closed == 0


class AsyncStream:
    """Named like openai's async stream: a sync ``aclose`` (no awaitable) and an async ``close``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def aclose(self) -> None:
        self.calls.append("aclose")

    async def close(self) -> None:
        self.calls.append("close")


def test_a_refused_async_stream_is_closed_by_the_first_awaitable_closer() -> None:
    stream = AsyncStream()

    async def call() -> AsyncStream:
        return stream

    async def go() -> None:
        async with Orchestrator("coder", "build").asession() as session:
            with pytest.raises(StreamResultError):
                await session.arun_turn(call, model="m")

    asyncio.run(go())
    assert stream.calls == ["close"]  # the sync aclose is passed over


def test_an_async_generator_returned_by_a_turn_is_refused_as_a_stream() -> None:
    async def chunks() -> AsyncIterator[str]:
        yield "never read"

    with (
        Orchestrator("coder", "build").session() as session,
        pytest.raises(StreamResultError, match="async_generator"),
    ):
        session.run_turn(chunks, model="m")


# --- the session's cap (budget_usd) -----------------------------------------------------

FEMTO = Decimal("1e-15")  # the smallest cap there is


def test_a_cap_of_one_femto_dollar_admits_a_free_turn() -> None:
    with Orchestrator("coder", "build", budget_usd=FEMTO).session() as session:
        assert session.run_turn(lambda: "free", model="unpriced")[0] == "free"


def test_a_turn_with_nothing_to_expect_holds_nothing_on_the_cap() -> None:
    with Orchestrator("coder", "build", budget_usd=FEMTO).session() as session:

        def outer() -> str:
            # a second turn while the first is in flight: the first holds 0, so 0 + 0 + 1 <= 1
            return session.run_turn(lambda: "inner", model="unpriced")[0]

        assert session.run_turn(outer, model="unpriced")[0] == "inner"


@pytest.mark.usefixtures("priced_models")
def test_a_cap_refusal_names_the_expected_cost_the_model_and_the_cap() -> None:
    cost = Decimal("0.0045")  # 1000 * $3/M + 100 * $15/M
    usage = UsageSnapshot(input_tokens=1000, output_tokens=100)
    with Orchestrator("coder", "build", budget_usd=cost * 3 / 2).session() as session:
        session.run_turn(lambda: "a", model="m", usage=usage)
        with pytest.raises(BudgetExceededError) as caught:
            session.run_turn(lambda: "b", model="m", usage=usage)
    error = caught.value
    assert (error.limit_kind, error.requested, error.model) == ("usd", cost, "m")
    assert (error.limit_usd, error.spent_usd, error.reserved) == (cost * 3 / 2, cost, 0)
    assert str(error) == (
        "budget would be exceeded (usd): spent $0.0045 + reserved $0 + this call $0.0045 "
        "> limit $0.00675 (model 'm')"
    )


# --- tools --------------------------------------------------------------------------------


def test_an_async_tools_duration_is_the_clocks_time_across_the_call() -> None:
    clock = FakeClock()

    async def tool(x: int) -> int:
        clock.advance(2.5)
        return x * 2

    async def go() -> list[AgentEvent]:
        async with Orchestrator("coder", "build", clock=clock).asession() as session:
            assert await session.arun_tool("calc", tool, 21) == 42
            return [e for e in session.events() if e.name == EventName.TOOL_COMPLETED]

    (completed,) = asyncio.run(go())
    assert completed.data == {"tool": "calc", "duration_seconds": 2.5}


class Audit(BaseHook):
    def after_tool(self, call: ToolCall, result: object) -> object | None:
        raise ValueError(f"{call.name} returned {result!r}")


def test_an_after_tool_hook_that_raises_is_a_veto_naming_the_hook_and_the_point() -> None:
    with Orchestrator("coder", "build", hooks=[Audit()]).session() as session:
        with pytest.raises(GuardrailViolatedError) as caught:
            session.run_tool("calc", lambda: 3)
        (vetoed,) = [e for e in session.events() if e.name == EventName.HOOK_VETOED]
    assert (caught.value.hook, caught.value.point) == ("Audit", "after_tool")
    assert vetoed.data == {"hook": "Audit", "point": "after_tool"}
    assert vetoed.detail == "hook raised ValueError: calc returned 3"


def test_an_async_tools_positional_arguments_are_bound_to_its_parameters_for_the_rules(
    tmp_path: Path,
) -> None:
    (tmp_path / "src").mkdir()
    role = RolePermissionConfig(
        role="coder", mode=PermissionMode.FULL_ACCESS, allowed_tools=["fs.write(path:src/**)"]
    )
    rules = PermissionPolicy({"coder": role}, workspace=tmp_path)

    async def write(path: str) -> str:
        return f"wrote {path}"

    async def go() -> str:
        async with Orchestrator("coder", "build", permissions=rules).asession() as session:
            return await session.arun_tool("fs.write", write, str(tmp_path / "src" / "a.py"))

    assert asyncio.run(go()) == f"wrote {tmp_path / 'src' / 'a.py'}"


def test_an_async_sessions_metadata_is_kept_and_starts_it() -> None:
    async def go() -> tuple[object, AgentEvent]:
        orch = Orchestrator("coder", "build")
        async with orch.asession(metadata={"ticket": 7}) as session:
            started = next(e for e in session.events() if e.name == EventName.SESSION_STARTED)
            return session.metadata, started

    metadata, started = asyncio.run(go())
    assert metadata == {"ticket": 7}
    assert started.data == {"ticket": 7}


# --- a late async call ----------------------------------------------------------------------


def test_a_late_call_that_stops_when_cancelled_reports_nothing_to_the_loop() -> None:
    reported: list[dict[str, object]] = []

    async def polite(model: str) -> str:
        await asyncio.sleep(30)
        return model

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        async with Orchestrator("coder", "build").asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(polite, model="m", timeout=0.01)
            for _ in range(5):  # let the cancelled task end and its callbacks run
                await asyncio.sleep(0)

    asyncio.run(go())
    assert reported == []


def test_a_cancelled_caller_of_a_timed_turn_reports_nothing_to_the_loop() -> None:
    reported: list[dict[str, object]] = []
    started = asyncio.Event()

    async def polite(model: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return model

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        async with Orchestrator("coder", "build").asession() as session:
            task = asyncio.ensure_future(session.arun_turn(polite, model="m", timeout=30))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(5):
                await asyncio.sleep(0)

    asyncio.run(go())
    assert reported == []


# --- an async turn's record -------------------------------------------------------------


def test_an_async_turn_without_a_model_is_recorded_under_the_unnamed_model() -> None:
    async def call() -> str:
        return "a"

    async def go() -> list[AgentEvent]:
        async with Orchestrator("coder", "build").asession() as session:
            await session.arun_turn(call)
            return [e for e in session.events() if e.name == EventName.TURN_COMPLETED]

    (completed,) = asyncio.run(go())
    assert completed.data["model"] == UNNAMED_MODEL == "unnamed-model"


def test_an_async_turns_durations_are_the_clocks_time_across_each_attempt() -> None:
    clock = FakeClock()
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        clock.advance(1.5 * len(calls))  # 1.5 s, then 3 s
        if len(calls) == 1:
            raise ConnectionError("reset")
        return "a"

    policy = RetryPolicy(max_attempts=2, base_delay=1, jitter="none")
    orch = Orchestrator("coder", "build", clock=clock, retry=policy, async_sleep=clock.asleep)

    async def go() -> list[AgentEvent]:
        async with orch.asession() as session:
            await session.arun_turn(call, model="m")
            return list(session.events())

    events = asyncio.run(go())
    (failed,) = [e for e in events if e.name == EventName.TURN_FAILED]
    (completed,) = [e for e in events if e.name == EventName.TURN_COMPLETED]
    assert failed.data["duration_seconds"] == 1.5
    assert completed.data["duration_seconds"] == 3.0


# --- the summary ------------------------------------------------------------------------


def test_a_summary_without_a_cap_or_lost_events_says_so() -> None:
    with Orchestrator("coder", "build").session() as session:
        session.run_turn(lambda: "a", model="m")
        summary = session.summary()
    assert summary["budget_usd"] is None
    assert summary["events_dropped"] == 0


def test_a_summary_gives_the_cap_as_text() -> None:
    with Orchestrator("coder", "build", budget_usd="0.50").session() as session:
        summary = session.summary()
    assert summary["budget_usd"] == "0.50"
