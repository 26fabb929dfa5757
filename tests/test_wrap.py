"""``session.wrap(client)``: a real SDK client whose model calls are the session's turns.

The four client families (openai sync and async, anthropic sync and async,
google-genai and its ``aio``, bedrock-runtime) talk to the scripted server on
127.0.0.1. Each test checks what a wrapped call must give: the SDK's own
result, the exact cost charged, a budget that refuses before any request
reaches the server, a breaker that opens on a dead provider, and streams.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from techrevati.runtime import (
    Budget,
    CircuitBreaker,
    CircuitState,
    Orchestrator,
    RetryPolicy,
    UsageSnapshot,
)
from techrevati.runtime.errors import BudgetExceededError, InvalidValueError, SessionStateError
from tests import scripted_server as scripted
from tests.scripted_server import ScriptedServer, reply
from tests.test_stream_turns_real_http import (
    SSE,
    _sse,
    anthropic_stream,
    openai_chat,
    responses_events,
)

pytestmark = pytest.mark.usefixtures("priced_models")

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def cost(inp: int, out: int, rates: tuple[str, str] = ("3", "15")) -> Decimal:
    """What ``m`` costs: $3 and $15 per million input and output tokens."""
    return (inp * Decimal(rates[0]) + out * Decimal(rates[1])) / 10**6


def orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator("writer", "draft", **kwargs)


# -- openai ------------------------------------------------------------------------------------


def test_a_wrapped_openai_client_charges_each_call_exactly(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(reply(200, scripted.openai_chat_completion("Hi", prompt_tokens=1200)))
    with orch().session() as session:
        client = session.wrap(openai_client)
        answer = client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content == "Hi"  # the SDK's own object
        assert session.tracker.total_cost() == cost(1200, answer.usage.completion_tokens)  # type: ignore[union-attr]
        assert client.api_key == openai_client.api_key  # everything else passes through
        assert session.tracker.turns == 1
    assert scripted_server.requests[0].json["model"] == "m"


def test_a_wrapped_client_is_refused_by_the_budget_before_the_request(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(reply(200, scripted.openai_chat_completion("Hi")))
    budget = Budget(max_requests=1)
    with orch(budget=budget).session() as session:
        client = session.wrap(openai_client)
        client.chat.completions.create(model="m", messages=MESSAGES)
        with pytest.raises(BudgetExceededError):
            client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(scripted_server.requests) == 1  # the refused call never reached the server


def test_a_wrapped_client_opens_the_breaker_on_a_dead_provider(
    refused_url: str,
) -> None:
    breaker = CircuitBreaker("openai", failure_threshold=2)
    dead = scripted.openai_client(refused_url)
    with orch(circuit_breaker=breaker).session() as session:
        client = session.wrap(dead)
        for _ in range(2):
            with pytest.raises(openai.APIConnectionError):
                client.chat.completions.create(model="m", messages=MESSAGES)
        with pytest.raises(Exception, match="openai") as caught:
            client.chat.completions.create(model="m", messages=MESSAGES)
    assert type(caught.value).__name__ == "CircuitOpenError"
    assert breaker.state is CircuitState.OPEN


def test_a_wrapped_client_retries_and_falls_back_through_the_session(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(
        reply(503, scripted.openai_error("The engine is overloaded", type="server_error")),
        reply(200, scripted.openai_chat_completion("Hi")),
    )
    policy = RetryPolicy(sleep=lambda _seconds: None)
    with orch(retry=policy).session() as session:
        client = session.wrap(openai_client.with_options(max_retries=2))
        assert client.max_retries == 0  # the session retries: the SDK's own are off
        answer = client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content == "Hi"
    assert len(scripted_server.requests) == 2


def test_a_wrapped_openai_stream_is_charged_at_its_end(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(openai_chat("Hel", "lo", usage=(1200, 300)))
    with orch().session() as session:
        client = session.wrap(openai_client)
        chunks = list(
            client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
        assert session.tracker.total_cost() == cost(1200, 300)


def test_a_wrapped_openai_responses_call_is_a_turn(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(reply(200, scripted.openai_response("Hi")))
    with orch().session() as session:
        response = session.wrap(openai_client).responses.create(model="m", input="hi")
        assert response.output_text == "Hi"
        assert session.tracker.turns == 1
        assert session.tracker.total_cost() > 0


def test_a_wrapped_async_openai_client(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(
        reply(200, scripted.openai_chat_completion("Hi", prompt_tokens=10)),
        openai_chat("a", "b", usage=(7, 3)),
    )

    async def main() -> Decimal:
        with orch().session() as session:
            client = session.wrap(async_openai_client)
            answer = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hi"
            stream = await client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            texts = [c.choices[0].delta.content async for c in stream if c.choices]
            assert "".join(t or "" for t in texts) == "ab"
            return session.tracker.total_cost()

    total = asyncio.run(main())
    first = scripted_server.requests[0].json
    assert first["model"] == "m"
    assert total == cost(10, 12) + cost(7, 3)


# -- anthropic ----------------------------------------------------------------------------------


def test_a_wrapped_anthropic_client_charges_and_streams(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    scripted_server.script(
        reply(200, scripted.anthropic_message("Hi", input_tokens=1200, output_tokens=300)),
        anthropic_stream(input_tokens=100, outputs=(20,)),
    )
    with orch().session() as session:
        client = session.wrap(anthropic_client)
        message = client.messages.create(model="m", max_tokens=64, messages=MESSAGES)
        assert message.content[0].text == "Hi"  # type: ignore[union-attr]
        assert session.tracker.total_cost() == cost(1200, 300)
        events = list(
            client.messages.create(model="m", max_tokens=64, messages=MESSAGES, stream=True)
        )
        assert events[0].type == "message_start"
        assert session.tracker.total_cost() == cost(1200, 300) + cost(100, 20)


def test_a_wrapped_async_anthropic_client(
    scripted_server: ScriptedServer, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    scripted_server.script(
        reply(200, scripted.anthropic_message("Hi", input_tokens=5, output_tokens=7))
    )

    async def main() -> Decimal:
        with orch().session() as session:
            client = session.wrap(async_anthropic_client)
            message = await client.messages.create(model="m", max_tokens=64, messages=MESSAGES)
            assert message.content[0].text == "Hi"  # type: ignore[union-attr]
            return session.tracker.total_cost()

    assert asyncio.run(main()) == cost(5, 7)


def test_a_wrapped_anthropic_stream_helper_is_one_charged_turn(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    scripted_server.script(anthropic_stream(input_tokens=100, outputs=(20,)))
    with orch().session() as session:
        client = session.wrap(anthropic_client)
        with client.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as stream:
            assert list(stream.text_stream) == ["Hi"]
            final = stream.get_final_message()
        assert final.usage.output_tokens == 20  # the SDK's own accumulated message
        assert session.tracker.total_cost() == cost(100, 20)
        assert session.tracker.turns == 1


def test_a_wrapped_stream_helper_retries_before_its_first_event(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    scripted_server.script(
        reply(529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        anthropic_stream(input_tokens=100, outputs=(20,)),
    )
    policy = RetryPolicy(sleep=lambda _seconds: None)
    with orch(retry=policy).session() as session:
        client = session.wrap(anthropic_client)
        with client.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as stream:
            assert stream.get_final_text() == "Hi"  # reads the turn to its end first
        assert session.tracker.total_cost() == cost(100, 20)  # charged once
    assert len(scripted_server.requests) == 2


def test_a_wrapped_stream_helper_refused_by_the_budget_sends_nothing(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    with orch(budget=Budget(max_requests=0)).session() as session:
        client = session.wrap(anthropic_client)
        with (
            pytest.raises(BudgetExceededError),
            client.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as stream,
        ):
            stream.until_done()
    assert scripted_server.requests == []


def test_a_wrapped_stream_helper_names_what_needs_an_open_stream(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    with orch().session() as session:
        client = session.wrap(anthropic_client)
        with (
            client.messages.stream(model="m", max_tokens=64, messages=MESSAGES) as stream,
            pytest.raises(SessionStateError, match="current_message_snapshot"),
        ):
            stream.current_message_snapshot  # noqa: B018
    assert scripted_server.requests == []  # never iterated: never sent


def test_a_wrapped_async_anthropic_stream_helper(
    scripted_server: ScriptedServer, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    scripted_server.script(
        anthropic_stream(input_tokens=100, outputs=(20,)),
        anthropic_stream(input_tokens=10, outputs=(2,)),
    )

    async def main() -> tuple[list[str], int, Decimal]:
        with orch().session() as session:
            client = session.wrap(async_anthropic_client)
            async with client.messages.stream(
                model="m", max_tokens=64, messages=MESSAGES
            ) as stream:
                texts = [text async for text in stream.text_stream]
            async with client.messages.stream(
                model="m", max_tokens=64, messages=MESSAGES
            ) as stream:
                final = await stream.get_final_message()
            return texts, final.usage.output_tokens, session.tracker.total_cost()

    texts, output_tokens, total = asyncio.run(main())
    assert texts == ["Hi"]
    assert output_tokens == 2
    assert total == cost(100, 20) + cost(10, 2)


def responses_stream() -> Any:
    """A Responses stream the SDK's helper accepts: created, then completed (no deltas:
    its accumulator wants an output item announced before any text in it)."""
    created, _delta, completed = responses_events("completed")
    return reply(200, _sse([created, completed]), SSE)


def test_wrapped_openai_stream_helpers_are_charged_turns(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(
        responses_stream(),
        openai_chat("Hel", "lo", usage=(1200, 300)),
    )
    with orch().session() as session:
        client = session.wrap(openai_client)
        with client.responses.stream(model="m", input="hi") as stream:
            kinds = [event.type for event in stream]
            response = stream.get_final_response()
        assert kinds[-1] == "response.completed"
        assert response.usage is not None
        assert response.usage.output_tokens == 300
        with client.chat.completions.stream(
            model="m", messages=MESSAGES, stream_options={"include_usage": True}
        ) as chat:
            completion = chat.get_final_completion()
        assert completion.choices[0].message.content == "Hello"
        assert session.tracker.turns == 2
        assert session.tracker.total_cost() == cost(1200, 300) * 2
    assert [r.json["model"] for r in scripted_server.requests] == ["m", "m"]


def test_a_wrapped_async_openai_responses_stream_helper(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(responses_stream())

    async def main() -> tuple[int, Decimal]:
        with orch().session() as session:
            client = session.wrap(async_openai_client)
            async with client.responses.stream(model="m", input="hi") as stream:
                response = await stream.get_final_response()
            assert response.usage is not None
            return response.usage.output_tokens, session.tracker.total_cost()

    assert asyncio.run(main()) == (300, cost(1200, 300))


# -- google-genai and bedrock -------------------------------------------------------------------


def test_a_wrapped_genai_client_and_its_aio_twin(
    scripted_server: ScriptedServer, genai_client: Any
) -> None:
    scripted_server.script(
        reply(200, scripted.gemini_response("Hi", prompt_tokens=9, candidates_tokens=12)),
        reply(200, scripted.gemini_response("Ho", prompt_tokens=4, candidates_tokens=6)),
    )
    with orch().session() as session:
        client = session.wrap(genai_client)
        response = client.models.generate_content(model="m", contents="hi")
        assert response.text == "Hi"

        async def again() -> Any:
            return await client.aio.models.generate_content(model="m", contents="hi")

        assert asyncio.run(again()).text == "Ho"
        assert session.tracker.total_cost() == cost(9, 12) + cost(4, 6)
        assert session.tracker.turns == 2


def test_a_wrapped_bedrock_client(scripted_server: ScriptedServer, bedrock_client: Any) -> None:
    scripted_server.script(reply(200, scripted.converse_response("Hi")))
    with orch().session() as session:
        client = session.wrap(bedrock_client)
        answer = client.converse(
            modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
        assert answer["output"]["message"]["content"][0]["text"] == "Hi"
        usage = UsageSnapshot.from_response(answer)
        assert session.tracker.total_cost() == cost(usage.input_tokens, usage.output_tokens)


def test_wrap_refuses_what_it_does_not_know() -> None:
    with orch().session() as session, pytest.raises(InvalidValueError, match="client must be"):
        session.wrap(object())


def test_a_non_str_model_is_refused_before_any_request(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    with orch().session() as session:
        client = session.wrap(openai_client)
        with pytest.raises(InvalidValueError, match="model must be a str"):
            client.chat.completions.create(model=5, messages=MESSAGES)  # type: ignore[call-overload]
    assert scripted_server.requests == []
