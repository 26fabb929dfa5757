"""Streamed and timed async turns: the branches the rest of the suite left untaken.

Found by ``coverage run --branch`` (docs/testing.md): an async stream that
ends on an in-band error, is empty, or is retried at once; a streamed turn's
budget hold, retry statistics, usage record of a failure and governance
meter; and a late async call that ends in the same loop pass as its watch
timer fires. The fakes are those of tests/test_stream_turns.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable
from decimal import Decimal

import pytest

from techrevati.runtime import (
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitState,
    EmptyResponseError,
    EventName,
    Orchestrator,
    RetryPolicy,
    RetryStats,
    StreamFailedError,
    TurnTimeoutError,
    UsageRecord,
    UsageSnapshot,
)
from techrevati.runtime.governance import Governance
from techrevati.runtime.orchestrator import Session
from tests.conftest import FakeClock
from tests.test_stream_turns import (
    Event,
    FakeAsyncStream,
    FakeStream,
    StatusError,
    Usage,
    chat_chunks,
    message_delta,
    message_start,
    text_delta,
)

pytestmark = pytest.mark.usefixtures("priced_models")


def _cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * Decimal(3) + output_tokens * Decimal(15)) / 1_000_000


class NoJitter(random.Random):
    """Full jitter that always draws 0: every retry waits 0 s."""

    def random(self) -> float:
        return 0.0


async def _drain(stream: AsyncIterable[object], into: list[object] | None = None) -> None:
    async for chunk in stream:
        if into is not None:
            into.append(chunk)


def _orch(**kwargs: object) -> Orchestrator:
    return Orchestrator("writer", "draft", **kwargs)  # type: ignore[arg-type]


def test_an_async_stream_that_ends_on_an_error_event_raises_it_where_it_ends() -> None:
    failed = Event(
        "response.failed",
        response=Event(
            "response",
            usage={"input_tokens": 40, "output_tokens": 2},
            error=Event("error", message="the server had an error"),
        ),
    )
    chunks = [Event("response.created", response=None), failed]

    async def main() -> tuple[Session, list[object]]:
        seen: list[object] = []
        async with _orch().asession() as session:
            with pytest.raises(StreamFailedError, match="server had an error"):
                await _drain(session.astream_turn(lambda: FakeAsyncStream(chunks), model="m"), seen)
        return session, seen

    session, seen = asyncio.run(main())
    assert seen == chunks
    assert session.tracker.total_cost() == _cost(40, 2)


def test_an_empty_async_stream_is_an_empty_response_and_is_closed() -> None:
    stream = FakeAsyncStream([])

    async def main() -> None:
        async with _orch().asession() as session:
            with pytest.raises(EmptyResponseError):
                await _drain(session.astream_turn(lambda: stream, model="m"))

    asyncio.run(main())
    assert stream.closed == 1


def test_an_async_stream_failing_before_its_first_chunk_is_a_failure_on_the_breaker() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=1)

    async def refused() -> FakeAsyncStream:
        raise StatusError(503)

    async def main() -> None:
        async with _orch(circuit_breaker=breaker).asession() as session:
            with pytest.raises(StatusError):
                await _drain(session.astream_turn(refused, model="m"))

    asyncio.run(main())
    assert breaker.state is CircuitState.OPEN


def test_a_sync_stream_retried_with_no_wait_does_not_sleep() -> None:
    slept: list[float] = []
    attempts: list[int] = []

    def open_stream() -> FakeStream:
        attempts.append(1)
        if len(attempts) == 1:
            raise StatusError(503)
        return FakeStream(chat_chunks("ok", usage=Usage(10, 2)))

    policy = RetryPolicy(max_attempts=2, rng=NoJitter())
    with _orch(retry=policy, sleep=slept.append).session() as session:
        assert [c.text for c in session.stream_turn(open_stream, model="m")] == ["ok", ""]  # type: ignore[attr-defined]
    assert (attempts, slept) == ([1, 1], [])


def test_an_async_stream_retried_with_no_wait_does_not_sleep() -> None:
    slept: list[float] = []
    attempts: list[int] = []

    async def open_stream() -> FakeAsyncStream:
        attempts.append(1)
        if len(attempts) == 1:
            raise StatusError(503)
        return FakeAsyncStream(chat_chunks("ok", usage=Usage(10, 2)))

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> int:
        orch = _orch(retry=RetryPolicy(max_attempts=2, rng=NoJitter()), async_sleep=record)
        async with orch.asession() as session:
            return len([chunk async for chunk in session.astream_turn(open_stream, model="m")])

    assert asyncio.run(main()) == 2
    assert (attempts, slept) == ([1, 1], [])


def test_an_async_streamed_turn_holds_its_estimate_on_the_budget() -> None:
    budget = Budget(max_total_tokens=100)
    opened: list[int] = []

    def open_stream() -> FakeAsyncStream:
        opened.append(1)
        return FakeAsyncStream(chat_chunks("a", usage=Usage(8, 4)))

    async def main() -> None:
        async with _orch(budget=budget).asession() as session:
            refused = session.astream_turn(
                open_stream, model="m", estimate=UsageSnapshot(input_tokens=200)
            )
            with pytest.raises(BudgetExceededError, match="budget would be exceeded"):
                await _drain(refused)
            await _drain(session.astream_turn(open_stream, model="m"))

    asyncio.run(main())
    assert opened == [1]  # the first was refused on its estimate, before fn
    assert (budget.spent_tokens, budget.reserved_tokens) == (12, 0)


def test_a_completed_stream_counts_as_a_success_in_the_retry_stats() -> None:
    stats = RetryStats()
    with _orch(retry=RetryPolicy(max_attempts=2, stats=stats)).session() as session:
        list(
            session.stream_turn(lambda: FakeStream(chat_chunks("a", usage=Usage(8, 4))), model="m")
        )
    assert (stats.calls, stats.successes) == (1, 1)


def test_a_failed_stream_writes_the_usage_it_reported_and_counts_on_the_governance_meter() -> None:
    records: list[UsageRecord] = []

    class Usages:
        def write_usage(self, record: UsageRecord) -> None:
            records.append(record)

    stream = FakeStream(
        [message_start(100), text_delta("a"), message_delta(5)], fail=(3, StatusError(529))
    )
    orch = _orch(sinks=[Usages()], governance=Governance(max_turns=10))
    with orch.session() as session:
        with pytest.raises(StatusError):
            list(session.stream_turn(lambda: stream, model="m"))
        meter = session.governance
        failed = [e for e in session.events() if e.name == EventName.TURN_FAILED]
    (record,) = records
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (100, 5, _cost(100, 5))
    assert meter is not None
    assert (meter.consecutive_failures, meter.cost_usd) == (1, _cost(100, 5))
    assert failed[0].data["cost_usd"] == str(_cost(100, 5))


def test_a_late_call_ending_as_its_watch_timer_fires_is_reported_once_as_finished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(0.0)  # the event loop's own time: its timers fire when told

    async def deaf(model: str) -> str:
        clock.now = 100.0  # past the 1 s deadline
        while True:
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                break  # ignored: the call goes on
        clock.now = 1000.0  # past the watch timer (deadline + 1 s): due at the next pass,
        await asyncio.sleep(0)  # where this step runs first and ends the call
        return model

    async def main() -> None:
        async with _orch().asession() as session:
            with pytest.raises(TurnTimeoutError):
                await session.arun_turn(deaf, model="m", timeout=1)
            for _ in range(10):
                await asyncio.sleep(0)

    caplog.set_level(logging.WARNING, logger="techrevati.runtime.orchestrator")
    loop = asyncio.new_event_loop()
    loop.time = clock  # type: ignore[method-assign]
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    late = [r.getMessage() for r in caplog.records if "deadline" in r.getMessage()]
    assert late == [
        "turn on model 'm' passed its 1.0s deadline and ignored the cancellation; "
        "it finished later and its result was dropped"
    ]
