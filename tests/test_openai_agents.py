"""openai-agents through the session: a real ``Runner`` against the scripted server.

Each test runs an ``Agent`` of the real openai-agents SDK with a real
``AsyncOpenAI`` client talking HTTP to the scripted server on 127.0.0.1 (the
client's own retries off, tracing off). What is checked is what the server
received and what the session recorded: the exact cost of each model call,
a budget that refuses the call that would exceed it before it is sent, a
breaker that opens on a dead provider and then sends nothing, the rate
limiter's wait, and a denied tool that never runs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import agents
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIProvider,
    OpenAIResponsesModel,
    Runner,
    WebSearchTool,
    function_tool,
)

from techrevati.runtime import (
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    Orchestrator,
    PermissionDeniedError,
    UsageSnapshot,
)
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.openai_agents import DENIED_PREFIX, guard, guard_model, guard_tool
from techrevati.runtime.orchestrator import Session
from techrevati.runtime.permissions import PermissionMode, PermissionPolicy, RolePermissionConfig
from techrevati.runtime.rate_limit import RateLimiter
from tests import scripted_server as scripted
from tests.conftest import CollectingSink, FakeClock
from tests.scripted_server import (
    Reply,
    ScriptedServer,
    openai_chat_completion,
    openai_error,
    openai_response,
    reply,
)

pytestmark = pytest.mark.usefixtures("priced_models", "_no_tracing")

CALL_COST = Decimal("0.000207")  # 9 input and 12 output tokens of "m" at $3/$15 per million
UNAVAILABLE = reply(503, openai_error("The engine is overloaded", type="server_error"))


@pytest.fixture
def _no_tracing() -> Iterator[None]:
    """Nothing may leave 127.0.0.1: the SDK's tracing exporter stays off."""
    agents.set_tracing_disabled(True)
    yield
    agents.set_tracing_disabled(True)


def _tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> Reply:
    """A chat completion that asks for one tool call."""
    body = openai_chat_completion("", finish_reason="tool_calls")
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }
    return reply(200, body)


def _answer(text: str = "done") -> Reply:
    return reply(200, openai_chat_completion(text))


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


def _events(session: Session, name: EventName) -> list[Any]:
    return [event for event in session.events() if event.name == name]


def _tool_messages(server: ScriptedServer) -> list[str]:
    """The tool results the model was sent, in order."""
    return [
        str(message["content"])
        for request in server.requests
        for message in request.json["messages"]
        if message["role"] == "tool"
    ]


class Calls:
    """Tools that note every time their body runs."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> list[Any]:
        @function_tool
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            self.ran.append(("add", {"a": a, "b": b}))
            return a + b

        @function_tool
        def delete_file(path: str) -> str:
            """Delete a file."""
            self.ran.append(("delete_file", {"path": path}))
            return f"deleted {path}"

        return [add, delete_file]


def _agent(client: openai.AsyncOpenAI, calls: Calls, **kwargs: Any) -> Agent[Any]:
    model = OpenAIChatCompletionsModel(model="m", openai_client=client)
    return Agent(
        name="helper", instructions="Be brief.", model=model, tools=calls.tools(), **kwargs
    )


_NO_DELETE = PermissionPolicy(
    role_configs={
        "writer": RolePermissionConfig(
            role="writer", mode=PermissionMode.FULL_ACCESS, denied_tools=["delete_file"]
        )
    }
)


# -- charging ------------------------------------------------------------------------------


def test_run_sync_charges_each_model_call_its_exact_cost(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(_tool_call("add", {"a": 2, "b": 3}), _answer("5"))
    sink = CollectingSink()
    calls = Calls()
    with _orch(sinks=[sink]).session() as session:
        result = Runner.run_sync(guard(_agent(async_openai_client, calls), session), "2+3?")
        assert result.final_output == "5"
        assert session.tracker.turns == 2
        assert session.tracker.total_cost() == 2 * CALL_COST
        assert session.tracker.total_usage() == UsageSnapshot(18, 24)
        assert len(_events(session, EventName.TURN_COMPLETED)) == 2
        assert [e.data["tool"] for e in _events(session, EventName.TOOL_COMPLETED)] == ["add"]
    assert calls.ran == [("add", {"a": 2, "b": 3})]
    assert len(scripted_server.requests) == 2
    assert _tool_messages(scripted_server) == ["5"]
    assert [(u.model, u.input_tokens, u.output_tokens, u.cost_usd) for u in sink.usage] == [
        ("m", 9, 12, CALL_COST),
        ("m", 9, 12, CALL_COST),
    ]
    assert [e.name for e in sink.events].count(EventName.TURN_COMPLETED) == 2


def test_async_run_charges_cached_and_reasoning_tokens_as_reported(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    body = openai_chat_completion("ok", prompt_tokens=100, completion_tokens=40)
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 60}
    body["usage"]["completion_tokens_details"] = {"reasoning_tokens": 25}
    scripted_server.reply(200, body)
    sink = CollectingSink()

    async def main() -> Session:
        async with _orch(sinks=[sink]).asession() as session:
            agent = guard(_agent(async_openai_client, Calls()), session)
            result = await Runner.run(agent, "hi")
            assert result.final_output == "ok"
            return session

    session = asyncio.run(main())
    expected = UsageSnapshot(100, 40, cache_read_tokens=60, reasoning_tokens=25)
    assert session.tracker.total_usage() == expected
    assert session.tracker.total_cost() == session.tracker.cost_for_turn("m", expected)
    (record,) = sink.usage
    assert (record.cache_read_tokens, record.reasoning_tokens) == (60, 25)


def test_a_responses_model_is_charged_from_its_usage(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.reply(200, openai_response("hi there", input_tokens=30, output_tokens=7))
    model = OpenAIResponsesModel(model="m", openai_client=async_openai_client)
    with _orch().session() as session:
        agent = guard(Agent(name="r", model=model), session)
        assert Runner.run_sync(agent, "hi").final_output == "hi there"
        assert session.tracker.total_usage() == UsageSnapshot(30, 7)
        assert session.tracker.total_cost() == Decimal("0.000195")  # 30*3 + 7*15, per million
    assert [request.path for request in scripted_server.requests] == ["/v1/responses"]


def test_a_model_name_is_resolved_through_the_provider_and_priced_under_it(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.reply(200, openai_chat_completion("ok"))
    provider = OpenAIProvider(openai_client=async_openai_client, use_responses=False)
    with _orch().session() as session:
        agent = guard(Agent(name="n", model="backup"), session, provider=provider)
        assert Runner.run_sync(agent, "hi").final_output == "ok"
        assert session.tracker.total_cost() == Decimal("0.000069")  # 9*1 + 12*5, per million
    assert scripted_server.requests[0].json["model"] == "backup"


def test_a_streamed_run_is_charged_from_the_stream(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    def chunk(**fields: Any) -> str:
        event = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "m",
            **fields,
        }
        return f"data: {json.dumps(event)}\n\n"

    events = (
        chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}])
        + chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        + chunk(choices=[], usage={"prompt_tokens": 20, "completion_tokens": 4})
        + "data: [DONE]\n\n"
    )
    scripted_server.reply(200, events, {"content-type": "text/event-stream"})

    async def main() -> Session:
        async with _orch().asession() as session:
            agent = _agent(async_openai_client, Calls())
            agent.model_settings = ModelSettings(include_usage=True)
            result = Runner.run_streamed(guard(agent, session), "hi")
            async for _ in result.stream_events():
                pass
            assert result.final_output == "Hi"
            return session

    session = asyncio.run(main())
    assert session.tracker.total_usage() == UsageSnapshot(20, 4)
    assert session.tracker.total_cost() == Decimal("0.00012")  # 20*3 + 4*15, per million
    assert scripted_server.requests[0].json["stream"] is True


def test_a_stream_without_usage_is_flagged_not_counted_as_free(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(scripted.openai_chat_stream("Hi"))  # no include_usage: no usage chunk

    async def main() -> Session:
        async with _orch().asession() as session:
            result = Runner.run_streamed(guard(_agent(async_openai_client, Calls()), session), "hi")
            async for _ in result.stream_events():
                pass
            assert result.final_output == "Hi"
            return session

    session = asyncio.run(main())
    (done,) = _events(session, EventName.TURN_COMPLETED)
    assert done.data["usage_unknown"] is True
    assert session.tracker.total_usage() == UsageSnapshot.ZERO


# -- budgets -------------------------------------------------------------------------------


def test_the_budget_stops_the_run_before_the_call_that_would_exceed_it(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    # Each call costs $0.000207 and holds what the last one cost: the third would
    # make $0.000621, past the $0.0005 cap, so it is never sent.
    scripted_server.script(
        _tool_call("add", {"a": 1, "b": 1}),
        _tool_call("add", {"a": 2, "b": 2}, "call_2"),
        _tool_call("add", {"a": 3, "b": 3}, "call_3"),
        _answer(),
    )
    calls = Calls()
    orch = _orch(budget_usd="0.0005")
    with pytest.raises(BudgetExceededError), orch.session() as session:
        Runner.run_sync(guard(_agent(async_openai_client, calls), session), "go")
    assert len(scripted_server.requests) == 2
    assert calls.ran == [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]
    assert session.tracker.total_cost() == 2 * CALL_COST
    (refused,) = _events(session, EventName.BUDGET_EXCEEDED)
    assert refused.data == {"model": "m", "enforced": True}


def test_an_estimate_refuses_the_first_call_past_a_shared_budget_async(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(_tool_call("add", {"a": 1, "b": 1}), _answer())
    budget = Budget(max_usd="0.0003")

    async def main() -> None:
        async with _orch(budget=budget).asession() as session:
            agent = guard(
                _agent(async_openai_client, Calls()), session, estimate=UsageSnapshot(9, 12)
            )
            await Runner.run(agent, "go")

    with pytest.raises(BudgetExceededError):
        asyncio.run(main())
    assert len(scripted_server.requests) == 1
    assert budget.spent_usd == CALL_COST
    assert budget.reserved_usd == 0


# -- the breaker and the rate limiter ------------------------------------------------------


def test_the_breaker_opens_on_a_dead_provider(refused_url: str) -> None:
    breaker = CircuitBreaker("openai", failure_threshold=2, recovery_timeout_seconds=60)
    client = scripted.async_openai_client(refused_url)

    async def main() -> list[type[BaseException]]:
        raised: list[type[BaseException]] = []
        async with _orch(circuit_breaker=breaker).asession() as session:
            agent = guard(_agent(client, Calls()), session)
            for _ in range(3):
                try:
                    await Runner.run(agent, "hi")
                except (openai.APIConnectionError, CircuitOpenError) as exc:
                    raised.append(type(exc))
            assert len(_events(session, EventName.BREAKER_REJECTED)) == 1
            assert session.tracker.turns == 0
        await client.close()
        return raised

    raised = asyncio.run(main())
    assert raised == [openai.APIConnectionError, openai.APIConnectionError, CircuitOpenError]
    assert breaker.state is CircuitState.OPEN


def test_an_open_breaker_sends_nothing_more_to_the_server(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(UNAVAILABLE, UNAVAILABLE, _answer("back"))
    breaker = CircuitBreaker("openai", failure_threshold=2, recovery_timeout_seconds=60)
    with _orch(circuit_breaker=breaker).session() as session:
        agent = guard(_agent(async_openai_client, Calls()), session)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                Runner.run_sync(agent, "hi")
        with pytest.raises(CircuitOpenError):
            Runner.run_sync(agent, "hi")
    assert len(scripted_server.requests) == 2
    assert breaker.state is CircuitState.OPEN


def test_the_rate_limiter_spaces_the_calls_of_one_run(
    scripted_server: ScriptedServer,
    async_openai_client: openai.AsyncOpenAI,
    fake_clock: FakeClock,
) -> None:
    scripted_server.script(_tool_call("add", {"a": 1, "b": 1}), _answer())
    limiter = RateLimiter(
        requests_per_minute=1,
        clock=fake_clock,
        sleep=fake_clock.sleep,
        async_sleep=fake_clock.asleep,
    )
    with _orch(rate_limiter=limiter).session() as session:
        Runner.run_sync(guard(_agent(async_openai_client, Calls()), session), "go")
        (throttled,) = _events(session, EventName.TURN_THROTTLED)
    assert throttled.data["wait_seconds"] > 0
    assert sum(fake_clock.slept) == pytest.approx(throttled.data["wait_seconds"])
    assert len(scripted_server.requests) == 2


# -- tools ---------------------------------------------------------------------------------


def test_a_denied_tool_never_runs_and_the_model_is_told_why(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(_tool_call("delete_file", {"path": "/etc/passwd"}), _answer("sorry"))
    calls = Calls()
    with _orch(permissions=_NO_DELETE).session() as session:
        result = Runner.run_sync(guard(_agent(async_openai_client, calls), session), "rm it")
        assert result.final_output == "sorry"
        (denied,) = _events(session, EventName.TOOL_DENIED)
        assert denied.data["tool"] == "delete_file"
        assert _events(session, EventName.TOOL_COMPLETED) == []
    assert calls.ran == []
    (told,) = _tool_messages(scripted_server)
    assert told == DENIED_PREFIX + denied.detail
    assert "denied_tools" in told


def test_a_denied_tool_raises_when_asked_to_async(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(_tool_call("delete_file", {"path": "x"}), _answer("sorry"))
    calls = Calls()

    async def main() -> None:
        async with _orch(permissions=_NO_DELETE).asession() as session:
            agent = guard(_agent(async_openai_client, calls), session, on_denied="raise")
            await Runner.run(agent, "rm it")

    with pytest.raises(PermissionDeniedError) as caught:
        asyncio.run(main())
    assert caught.value.outcome.rule == "denied_tools:delete_file"
    assert calls.ran == []
    assert len(scripted_server.requests) == 1


def test_an_allowed_tool_runs_with_the_arguments_the_model_gave(
    scripted_server: ScriptedServer, async_openai_client: openai.AsyncOpenAI
) -> None:
    scripted_server.script(_tool_call("add", {"a": 40, "b": 2}), _answer("42"))
    calls = Calls()
    with _orch(permissions=_NO_DELETE).session() as session:
        Runner.run_sync(guard(_agent(async_openai_client, calls), session), "add")
        assert _events(session, EventName.TOOL_DENIED) == []
    assert calls.ran == [("add", {"a": 40, "b": 2})]
    assert _tool_messages(scripted_server) == ["42"]


# -- what guard returns --------------------------------------------------------------------


def test_guard_copies_the_agent_and_its_handoffs_once_each(
    async_openai_client: openai.AsyncOpenAI,
) -> None:
    first = _agent(async_openai_client, Calls())
    second = Agent(name="second", model=OpenAIChatCompletionsModel("m", async_openai_client))
    first.handoffs = [second]
    second.handoffs = [first]  # a cycle
    with _orch().session() as session:
        guarded = guard(first, session)
    assert guarded is not first
    assert first.model is not guarded.model
    assert isinstance(first.model, OpenAIChatCompletionsModel)  # the original is unchanged
    (target,) = guarded.handoffs
    assert isinstance(target, Agent)
    assert target.name == "second"
    assert target is not second
    assert len(target.handoffs) == 1
    assert target.handoffs[0] is guarded
    assert all(
        tool is not original for tool, original in zip(guarded.tools, first.tools, strict=True)
    )


def test_tools_the_session_cannot_gate_are_refused_unless_let_through(
    async_openai_client: openai.AsyncOpenAI,
) -> None:
    agent = _agent(async_openai_client, Calls())
    agent.tools = [*agent.tools, WebSearchTool()]
    with _orch().session() as session:
        with pytest.raises(InvalidValueError, match="WebSearchTool"):
            guard(agent, session)
        guarded = guard(agent, session, ungated_tools=True)
        assert isinstance(guarded.tools[-1], WebSearchTool)
        with pytest.raises(InvalidValueError, match="on_denied"):
            guard(agent, session, on_denied="ignore")  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="Model"):
            guard_model("m", session)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="FunctionTool"):
            guard_tool(WebSearchTool(), session)  # type: ignore[arg-type]


def test_guard_model_takes_the_name_of_the_model(async_openai_client: openai.AsyncOpenAI) -> None:
    inner = OpenAIChatCompletionsModel(model="m", openai_client=async_openai_client)
    with _orch().session() as session:
        assert getattr(guard_model(inner, session), "model", None) == "m"
        assert getattr(guard_model(inner, session, name="backup"), "model", None) == "backup"


def test_the_module_imports_nothing_from_the_sdk_until_used() -> None:
    code = (
        "import sys, techrevati.runtime.openai_agents;"
        "print(sorted(m for m in ('agents', 'openai') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def script_the_docs(server: ScriptedServer) -> None:
    """Queue the replies docs/openai_agents.md's examples get, in the order they ask."""
    server.script(
        # the first example: one tool denied, one allowed, then the answer
        _tool_call("delete_file", {"path": "notes.txt"}),
        _tool_call("add", {"a": 2, "b": 3}, "call_2"),
        _answer("2 + 3 = 5. I may not delete notes.txt."),
        # the budget: two calls fit, the third is never sent
        _tool_call("add", {"a": 1, "b": 1}),
        _tool_call("add", {"a": 2, "b": 2}, "call_2"),
        # on_denied="raise"
        _tool_call("delete_file", {"path": "notes.txt"}),
        # the breaker: two failures open it, the third run sends nothing
        UNAVAILABLE,
        UNAVAILABLE,
    )
