"""A session with a memory heals a context overflow: it compacts and retries the turn once.

A real openai client talks to the scripted server on 127.0.0.1; the server
answers ``context_length_exceeded`` (a 400 the classifier reads as a context
overflow), then a completion. The memory itself is tested in
tests/test_memory.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from techrevati.runtime import Orchestrator, RetryPolicy
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import EventName
from techrevati.runtime.memory import ConversationMemory, KeepAll
from techrevati.runtime.orchestrator import Session
from tests import scripted_server as scripted
from tests.scripted_server import ScriptedServer, reply

pytestmark = pytest.mark.usefixtures("priced_models")

OVERFLOW = reply(
    400,
    scripted.openai_error(
        "This model's maximum context length is 8192 tokens.", code="context_length_exceeded"
    ),
)
ANSWER = reply(200, scripted.openai_chat_completion("Hi", prompt_tokens=100))


def long_memory(count: int = 20) -> ConversationMemory:
    memory = ConversationMemory(KeepAll())
    memory.append({"role": "system", "content": "You are terse."})
    for n in range(count):
        memory.append({"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n}"})
    return memory


def history(memory: ConversationMemory) -> Any:
    """What a turn sends: the memory's messages as they are when the call is made."""
    return list(memory.messages)


def compactions(session: Session) -> list[dict[str, object]]:
    return [dict(e.data) for e in session.events() if e.name == EventName.MEMORY_COMPACTED]


def test_an_overflow_is_compacted_and_retried_once(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(OVERFLOW, ANSWER)
    memory = long_memory()
    before = len(memory)
    with Orchestrator("writer", "draft").session(memory=memory) as session:
        answer, _usage = session.run_turn(
            lambda: openai_client.chat.completions.create(model="m", messages=history(memory)),
            model="m",
        )
    assert answer.choices[0].message.content == "Hi"
    sent = [len(r.json["messages"]) for r in scripted_server.requests]
    assert sent[0] == before
    assert sent[1] == len(memory) < before  # the retry sent the compacted history
    assert scripted_server.requests[1].json["messages"][0]["role"] == "system"  # kept
    (event,) = compactions(session)
    assert event["messages_dropped"] == before - len(memory)
    assert event["messages_kept"] == len(memory)
    assert isinstance(event["tokens_dropped"], int)
    assert event["tokens_dropped"] > 0
    retried = [e for e in session.events() if e.name == EventName.TURN_RETRIED]
    assert [e.data["scenario"] for e in retried] == ["context_overflow"]
    assert session.tracker.turns == 1


def test_a_second_overflow_in_the_same_turn_is_raised(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(OVERFLOW, OVERFLOW)
    memory = long_memory()
    with (
        pytest.raises(openai.BadRequestError),
        Orchestrator("writer", "draft").session(memory=memory) as session,
    ):
        session.run_turn(
            lambda: openai_client.chat.completions.create(model="m", messages=history(memory)),
            model="m",
        )
    assert len(scripted_server.requests) == 2
    assert len(compactions(session)) == 1


def test_each_turn_may_be_healed_once(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(OVERFLOW, ANSWER, OVERFLOW, ANSWER)
    memory = long_memory(40)
    policy = RetryPolicy(sleep=lambda _s: None)  # the policy's own recipe is not used twice
    with Orchestrator("writer", "draft", retry=policy).session(memory=memory) as session:
        for _ in range(2):
            session.run_turn(
                lambda: openai_client.chat.completions.create(model="m", messages=history(memory)),
                model="m",
            )
    sent = [len(r.json["messages"]) for r in scripted_server.requests]
    assert sent[0] > sent[1] == sent[2] > sent[3]
    assert len(compactions(session)) == 2


def test_a_memory_with_nothing_left_to_drop_is_not_retried(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(OVERFLOW)
    memory = ConversationMemory()
    memory.append({"role": "system", "content": "You are terse."})
    memory.append({"role": "user", "content": "a question far too long"})
    with (
        pytest.raises(openai.BadRequestError),
        Orchestrator("writer", "draft").session(memory=memory) as session,
    ):
        session.run_turn(
            lambda: openai_client.chat.completions.create(model="m", messages=history(memory)),
            model="m",
        )
    assert len(scripted_server.requests) == 1
    (event,) = compactions(session)
    assert event["messages_dropped"] == 0


def test_without_a_memory_an_overflow_is_not_healed(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(OVERFLOW)
    memory = long_memory()
    with (
        pytest.raises(openai.BadRequestError),
        Orchestrator("writer", "draft").session() as session,
    ):
        session.run_turn(
            lambda: openai_client.chat.completions.create(model="m", messages=history(memory)),
            model="m",
        )
    assert len(scripted_server.requests) == 1
    assert compactions(session) == []
    assert len(memory) == 21


def test_an_async_turn_is_healed_too(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(OVERFLOW, ANSWER)
    memory = long_memory()

    async def main() -> Any:
        async with Orchestrator("writer", "draft").asession(memory=memory) as session:
            answer, _ = await session.arun_turn(
                lambda: async_openai_client.chat.completions.create(
                    model="m", messages=history(memory)
                ),
                model="m",
            )
        return answer, session

    answer, session = asyncio.run(main())
    assert answer.choices[0].message.content == "Hi"
    assert len(compactions(session)) == 1
    sent = [len(r.json["messages"]) for r in scripted_server.requests]
    assert sent[0] > sent[1]


def test_memory_must_be_a_conversation_memory() -> None:
    with pytest.raises(InvalidValueError, match="memory must be a ConversationMemory"):
        Orchestrator("writer", "draft").session(memory=[{"role": "user"}])  # type: ignore[arg-type]
