"""``session.run_turn(..., output=spec)``: the typed value, and the model told what was wrong.

The specs themselves are tested in tests/test_outputs.py. Here a real openai
client talks to the scripted server on 127.0.0.1: each invalid answer is a
turn of its own (charged), the next call gets the feedback, and the attempts
are bounded by the ``output_invalid`` recipe, then ``OutputEscalationError``.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import openai
import pytest

from techrevati.runtime import Orchestrator, RetryPolicy, UsageSnapshot
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass, EventName
from techrevati.runtime.outputs import OutputEscalationError, OutputSpec
from techrevati.runtime.retry_policy import FailureScenario, RecoveryRecipe
from techrevati.runtime.retry_policy import RecoveryStep as Step
from tests import scripted_server as scripted
from tests.scripted_server import ScriptedServer, reply

pytestmark = pytest.mark.usefixtures("priced_models")

SPEC = OutputSpec.json(required_keys=("city", "days"))


def completion(text: str) -> Any:
    return reply(
        200, scripted.openai_chat_completion(text, prompt_tokens=100, completion_tokens=10)
    )


def cost(turns: int) -> Decimal:
    return turns * (100 * Decimal(3) + 10 * Decimal(15)) / 10**6


def invalid(session: Any) -> list[dict[str, object]]:
    return [dict(e.data) for e in session.events() if e.name == EventName.OUTPUT_INVALID]


def test_the_typed_value_comes_back_after_the_feedback_fixed_it(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(completion("Paris, 3 days"), completion('{"city": "Paris", "days": 3}'))

    def ask(feedback: str | None = None) -> Any:
        messages: Any = [{"role": "user", "content": "Plan a trip as JSON."}]
        if feedback is not None:
            messages.append({"role": "user", "content": feedback})
        return openai_client.chat.completions.create(model="m", messages=messages)

    with Orchestrator("writer", "draft").session() as session:
        plan, usage = session.run_turn(ask, model="m", output=SPEC)
    assert plan == {"city": "Paris", "days": 3}
    assert usage.input_tokens == 100
    second = scripted_server.requests[1].json["messages"]
    assert len(second) == 2
    assert "not valid JSON" in second[1]["content"]  # the feedback reached the model
    assert session.tracker.turns == 2
    assert session.tracker.total_cost() == cost(2)  # each attempt is a charged turn
    (event,) = invalid(session)
    assert event["attempt"] == 1
    assert event["escalated"] is False
    assert event["spec"] == SPEC.name
    assert session.summary()["failures"] == {"validation_error": 1}


def test_attempts_are_bounded_then_it_escalates(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(*(completion("no JSON here") for _ in range(3)))
    with Orchestrator("writer", "draft").session() as session:
        with pytest.raises(OutputEscalationError) as caught:
            session.run_turn(
                lambda: openai_client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "JSON please"}]
                ),
                model="m",
                output=SPEC,
            )
        assert session.status is not None
    assert len(scripted_server.requests) == 3  # the default recipe: 2 retries
    assert len(caught.value.errors) == 3
    assert [e["escalated"] for e in invalid(session)] == [False, False, True]
    assert session.tracker.total_cost() == cost(3)


def test_output_attempts_and_the_policys_recipe_set_the_bound() -> None:
    answers = iter(["bad", "bad", '{"city": "Rome", "days": 2}'])
    with (
        Orchestrator("writer", "draft").session() as session,
        pytest.raises(OutputEscalationError),
    ):
        session.run_turn(
            lambda: next(answers),
            model="m",
            usage=UsageSnapshot(1, 1),
            output=SPEC,
            output_attempts=2,
        )
    recipes = {
        FailureScenario.OUTPUT_INVALID: RecoveryRecipe(
            FailureScenario.OUTPUT_INVALID, (Step.RETRY_WITH_FEEDBACK,), 5
        )
    }
    answers = iter(["bad"] * 5 + ['{"city": "Rome", "days": 2}'])
    policy = RetryPolicy(recipes=recipes, sleep=lambda _s: None)
    with Orchestrator("writer", "draft", retry=policy).session() as session:
        plan, _ = session.run_turn(
            lambda: next(answers), model="m", usage=UsageSnapshot(1, 1), output=SPEC
        )
    assert plan == {"city": "Rome", "days": 2}
    assert len(invalid(session)) == 5


def test_a_regex_spec_and_a_callable_without_feedback() -> None:
    spec = OutputSpec.regex(r"(?P<answer>\d+)")
    with Orchestrator("writer", "draft").session() as session:
        value, _ = session.run_turn(
            lambda: "the answer is 42", model="m", usage=UsageSnapshot(1, 1), output=spec
        )
    assert value == {"answer": "42"}


def test_the_model_keyword_and_the_feedback_keyword_both_reach_fn() -> None:
    seen: list[tuple[str, str | None]] = []

    def ask(model: str, feedback: str | None = None) -> str:
        seen.append((model, feedback))
        return '{"city": "Oslo", "days": 1}' if feedback else "nope"

    with Orchestrator("writer", "draft").session() as session:
        plan, _ = session.run_turn(ask, model="m", usage=UsageSnapshot(1, 1), output=SPEC)
    assert plan == {"city": "Oslo", "days": 1}
    assert seen[0] == ("m", None)
    assert seen[1][0] == "m"
    assert seen[1][1] is not None


def test_async_turns_validate_too(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(completion("{}"), completion('{"city": "Lima", "days": 9}'))

    async def main() -> Any:
        async with Orchestrator("writer", "draft").asession() as session:
            plan, _ = await session.arun_turn(
                lambda feedback=None: async_openai_client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": feedback or "JSON"}]
                ),
                model="m",
                output=SPEC,
            )
        return plan, session

    plan, session = asyncio.run(main())
    assert plan == {"city": "Lima", "days": 9}
    assert "city" in scripted_server.requests[1].json["messages"][0]["content"]
    assert [e.failure_class for e in session.events() if e.name == EventName.OUTPUT_INVALID] == [
        AgentFailureClass.VALIDATION_ERROR
    ]


def test_output_must_be_a_spec() -> None:
    with Orchestrator("writer", "draft").session() as session:
        with pytest.raises(InvalidValueError, match="output must be an OutputSpec"):
            session.run_turn(lambda: "x", model="m", output="json")  # type: ignore[call-overload]
        with pytest.raises(InvalidValueError, match="attempts"):
            session.run_turn(lambda: "x", model="m", output=SPEC, output_attempts=0)
