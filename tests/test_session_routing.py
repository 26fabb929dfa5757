"""``Orchestrator(router=...)``: each turn goes where the router says, around open breakers.

The routers are tested in tests/test_routing.py; here a session asks one for
each turn's route, runs each attempt under the routed candidate's own breaker
and limiter, switches to the next candidate on a recipe's SWITCH_PROVIDER or a
breaker found open, and tells the router how every attempt went.
"""

from __future__ import annotations

import asyncio
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
)
from techrevati.runtime.errors import InvalidValueError, TransientRuntimeError
from techrevati.runtime.events import EventName
from techrevati.runtime.routing import (
    Candidate,
    HealthAwareRouter,
    NoHealthyProviderError,
    StaticRouter,
)
from tests.conftest import FakeClock

pytestmark = pytest.mark.usefixtures("priced_models")

USAGE = UsageSnapshot(1000, 100)


class ProviderDownError(TransientRuntimeError):
    scenario = "provider_failure"  # the recipe: backoff, then switch provider


def candidates(clock: FakeClock) -> tuple[Candidate, Candidate]:
    return (
        Candidate(
            "m", "primary", breaker=CircuitBreaker("primary", failure_threshold=1, clock=clock)
        ),
        Candidate(
            "backup", "spare", breaker=CircuitBreaker("spare", failure_threshold=1, clock=clock)
        ),
    )


def routed(session: Any) -> list[dict[str, Any]]:
    return [dict(e.data) for e in session.events() if e.name == EventName.TURN_ROUTED]


def test_a_turn_is_routed_around_an_open_breaker(fake_clock: FakeClock) -> None:
    primary, spare = candidates(fake_clock)
    assert primary.breaker is not None
    primary.breaker.force_open()
    router = HealthAwareRouter([primary, spare], explore=0, clock=fake_clock)
    seen: list[str] = []

    def call(model: str) -> str:
        seen.append(model)
        return "ok"

    with Orchestrator("writer", "draft", router=router).session() as session:
        session.run_turn(call, model="m", usage=USAGE)
    assert seen == ["backup"]
    (event,) = routed(session)
    assert event["model"] == "backup"
    assert [s["candidate"] for s in event["route"]["skipped"]] == ["primary/m"]
    assert session.tracker.per_model_summary()["backup"]["turns"] == 1
    stats = {s.candidate.label: s for s in router.stats()}
    assert stats["spare/backup"].successes == 1
    assert stats["primary/m"].successes == 0


def test_a_failing_candidate_switches_to_the_next_under_its_own_breaker(
    fake_clock: FakeClock,
) -> None:
    primary, spare = candidates(fake_clock)
    router = StaticRouter([primary, spare])
    seen: list[str] = []

    def call(model: str) -> str:
        seen.append(model)
        if model == "m":
            raise ProviderDownError("primary is down")
        return "ok"

    policy = RetryPolicy(sleep=lambda _s: None)
    with Orchestrator("writer", "draft", router=router, retry=policy).session() as session:
        answer, _ = session.run_turn(call, model="m", usage=USAGE)
    assert answer == "ok"
    assert seen == ["m", "backup"]
    assert primary.breaker is not None
    assert spare.breaker is not None
    assert primary.breaker.state is CircuitState.OPEN  # the primary's failure, on its breaker
    assert spare.breaker.state is CircuitState.CLOSED
    switched = [e.data for e in session.events() if e.name == EventName.MODEL_SWITCHED]
    assert switched == [{"from_model": "m", "model": "backup"}]
    stats = {s.candidate.label: s for s in router.stats()}
    assert (stats["primary/m"].failures, stats["spare/backup"].successes) == (1, 1)


def test_a_breaker_found_open_moves_on_without_a_retry_policy(fake_clock: FakeClock) -> None:
    primary, spare = candidates(fake_clock)
    assert primary.breaker is not None
    primary.breaker.force_open()  # a static router does not look: the call finds it open
    seen: list[str] = []

    def call(model: str) -> str:
        seen.append(model)
        return "ok"

    with Orchestrator("writer", "draft", router=StaticRouter([primary, spare])).session() as s:
        s.run_turn(call, model="m", usage=USAGE)
    assert seen == ["backup"]
    rejected = [e for e in s.events() if e.name == EventName.BREAKER_REJECTED]
    assert len(rejected) == 1


def test_no_healthy_provider_refuses_the_turn_before_any_call(fake_clock: FakeClock) -> None:
    primary, spare = candidates(fake_clock)
    for candidate in (primary, spare):
        assert candidate.breaker is not None
        candidate.breaker.force_open()
    router = HealthAwareRouter([primary, spare], explore=0, clock=fake_clock)
    calls: list[str] = []

    def call(model: str) -> str:
        calls.append(model)
        return "ok"

    with (
        Orchestrator("writer", "draft", router=router).session() as session,
        pytest.raises(NoHealthyProviderError) as caught,
    ):
        session.run_turn(call, model="m", usage=USAGE)
    assert calls == []
    assert "primary/m" in str(caught.value)
    (event,) = routed(session)
    assert event["route"] is None
    assert session.summary()["failures"] == {"dependency_failed": 1}


def test_streamed_and_async_turns_are_routed(fake_clock: FakeClock) -> None:
    primary, spare = candidates(fake_clock)
    assert primary.breaker is not None
    primary.breaker.force_open()
    router = HealthAwareRouter([primary, spare], explore=0, clock=fake_clock)

    def chunks(model: str) -> Iterator[dict[str, object]]:
        yield {
            "choices": [],
            "model": model,
            "usage": {"prompt_tokens": 10, "completion_tokens": 1},
        }

    async def answer(model: str) -> str:
        return model

    async def main() -> tuple[list[Any], str, Any]:
        with Orchestrator("writer", "draft", router=router).session() as session:
            streamed = list(session.stream_turn(chunks, model="m"))
            result, _ = await session.arun_turn(answer, model="m", usage=USAGE)
        return streamed, result, session

    streamed, result, session = asyncio.run(main())
    assert streamed[0]["model"] == "backup"
    assert result == "backup"
    assert [e["model"] for e in routed(session)] == ["backup", "backup"]
    stats = {s.candidate.label: s for s in router.stats()}
    assert stats["spare/backup"].successes == 2
    assert stats["spare/backup"].cost_usd_total == session.tracker.total_cost() > Decimal(0)


def test_a_router_needs_fn_to_take_the_model() -> None:
    router = StaticRouter([Candidate("m")])
    with (
        Orchestrator("writer", "draft", router=router).session() as session,
        pytest.raises(InvalidValueError, match="model keyword"),
    ):
        session.run_turn(lambda: "x", model="m", usage=USAGE)
    with pytest.raises(InvalidValueError, match="router must be a ProviderRouter"):
        Orchestrator("writer", "draft", router=["m", "backup"])  # type: ignore[arg-type]
