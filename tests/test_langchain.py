"""The LangChain / LangGraph integration driving a real ChatOpenAI over loopback HTTP.

Every model call is a real ``langchain_openai.ChatOpenAI`` request (its own
retries off) to the scripted server of tests/scripted_server.py, so each
charge, refusal and breaker decision below is taken on what LangChain really
sent, returned or raised. The server's request log says which calls were
never sent. Nothing leaves 127.0.0.1: LangSmith tracing is switched off.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import openai
import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import SecretStr

from techrevati.runtime import (
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    ModelPricing,
    Orchestrator,
    PermissionDeniedError,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
    UsageSnapshot,
    clear_pricing,
    register_pricing,
)
from techrevati.runtime.langchain import (
    DENIED_PREFIX,
    AsyncSessionCallbackHandler,
    SessionCallbackHandler,
    guard_tool,
    guard_tools,
    usage_from_llm_result,
)
from techrevati.runtime.orchestrator import Session
from tests.conftest import CollectingSink
from tests.scripted_server import ScriptedServer, openai_chat_completion, openai_error, reply

MODEL = "gpt-4o-mini"
PRICES = (Decimal(1), Decimal(4), Decimal("0.5"))  # $ per million: input, output, cache read
MILLION = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def _offline_and_priced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")
    clear_pricing()
    register_pricing(
        MODEL,
        ModelPricing(
            input_per_million=PRICES[0],
            output_per_million=PRICES[1],
            cache_read_per_million=PRICES[2],
        ),
    )
    yield
    clear_pricing()


def _cost(inp: int, out: int, cached: int = 0) -> Decimal:
    return ((inp - cached) * PRICES[0] + out * PRICES[1] + cached * PRICES[2]) / MILLION


def _chat(server: ScriptedServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.url + "/v1", api_key=SecretStr("test"), max_retries=0, model=MODEL, **kwargs
    )


def _completion(inp: int, out: int, *, cached: int = 0, content: str = "ok") -> dict[str, Any]:
    body = openai_chat_completion(content, prompt_tokens=inp, completion_tokens=out)
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = cached
    return body


def _tool_call(name: str, arguments: dict[str, Any], inp: int, out: int) -> dict[str, Any]:
    body = _completion(inp, out, content="")
    choice = body["choices"][0]
    choice["finish_reason"] = "tool_calls"
    choice["message"]["content"] = None
    choice["message"]["tool_calls"] = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
    ]
    return body


def _events(session: Session, name: EventName) -> list[Any]:
    return [event for event in session.events() if event.name == name]


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator("writer", "draft", **kwargs)


# -- usage and exact cost --------------------------------------------------------------------


def test_each_call_is_a_turn_charged_at_its_exact_cost(scripted_server: ScriptedServer) -> None:
    scripted_server.reply(200, _completion(1200, 300))
    scripted_server.reply(200, _completion(2000, 50, cached=1500))
    sink = CollectingSink()
    with _orch(sinks=[sink]).session() as session:
        handler = SessionCallbackHandler(session)
        model = _chat(scripted_server, callbacks=[handler])
        assert model.invoke("one").content == "ok"
        assert model.invoke("two").content == "ok"
        assert handler.pending == 0
    first, second = _cost(1200, 300), _cost(2000, 50, cached=1500)
    assert session.tracker.total_cost() == first + second
    assert [(r.input_tokens, r.output_tokens, r.cache_read_tokens) for r in sink.usage] == [
        (1200, 300, 0),
        (2000, 50, 1500),
    ]
    assert [r.cost_usd for r in sink.usage] == [first, second]
    assert [r.model for r in sink.usage] == [MODEL, MODEL]
    completed = _events(session, EventName.TURN_COMPLETED)
    assert [e.data["cost_usd"] for e in completed] == [str(first), str(second)]
    assert session.summary()["turns"] == 2
    assert len(scripted_server.requests) == 2


def test_async_calls_are_turns_too(scripted_server: ScriptedServer) -> None:
    scripted_server.reply(200, _completion(700, 70, cached=100))

    async def main() -> Session:
        async with _orch().asession() as session:
            handler = AsyncSessionCallbackHandler(session)
            model = _chat(scripted_server, callbacks=[handler])
            answer = await model.ainvoke("hi")
            assert answer.content == "ok"
            assert handler.pending == 0
        return session

    session = asyncio.run(main())
    assert session.tracker.total_cost() == _cost(700, 70, cached=100)
    assert session.summary()["turns"] == 1


def test_handler_is_a_langchain_handler_that_raises() -> None:
    with _orch().session() as session:
        sync, asynchronous = SessionCallbackHandler(session), AsyncSessionCallbackHandler(session)
    assert isinstance(sync, BaseCallbackHandler)
    assert isinstance(asynchronous, AsyncCallbackHandler)
    assert sync.raise_error
    assert asynchronous.raise_error
    assert sync.session is session


def test_usage_metadata_of_anthropic_cache_writes_is_read() -> None:
    message = AIMessage(
        content="x",
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 40,
            "total_tokens": 1040,
            "input_token_details": {
                "cache_read": 300,
                "cache_creation": 0,
                "ephemeral_5m_input_tokens": 100,
                "ephemeral_1h_input_tokens": 200,
            },
            "output_token_details": {"reasoning": 10},
        },
    )
    usage = usage_from_llm_result(LLMResult(generations=[[ChatGeneration(message=message)]]))
    assert usage == UsageSnapshot(
        input_tokens=1000,
        output_tokens=40,
        cache_read_tokens=300,
        cache_write_tokens=300,
        reasoning_tokens=10,
        cache_write_1h_tokens=200,
    )


def test_usage_falls_back_to_llm_output_then_none() -> None:
    token_usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    with_output = LLMResult(generations=[[]], llm_output={"token_usage": token_usage})
    assert usage_from_llm_result(with_output) == UsageSnapshot(input_tokens=11, output_tokens=5)
    assert usage_from_llm_result(LLMResult(generations=[[]])) is None


# -- the budget: refused before the request ----------------------------------------------------


def test_shared_budget_refuses_the_call_that_would_exceed_it(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.reply(200, _completion(1000, 250))  # $0.002 each
    estimate = UsageSnapshot(input_tokens=1000, output_tokens=250)
    budget = Budget(max_usd="0.005")
    with _orch(budget=budget).session() as session:
        handler = SessionCallbackHandler(session, estimate=estimate)
        model = _chat(scripted_server, callbacks=[handler])
        model.invoke("one")
        model.invoke("two")
        with pytest.raises(BudgetExceededError):
            model.invoke("three")  # $0.004 spent + $0.002 > $0.005
        assert len(scripted_server.requests) == 2  # the third was never sent
        assert budget.spent_usd == 2 * _cost(1000, 250)
        assert budget.reserved_usd == 0
        refused = _events(session, EventName.BUDGET_EXCEEDED)
        assert len(refused) == 1
        assert refused[0].data["enforced"] is True


def test_async_budget_refuses_before_the_request(scripted_server: ScriptedServer) -> None:
    scripted_server.reply(200, _completion(1000, 250))
    estimate = UsageSnapshot(input_tokens=1000, output_tokens=250)
    budget = Budget(max_usd="0.003")

    async def main() -> None:
        async with _orch(budget=budget).asession() as session:
            handler = AsyncSessionCallbackHandler(session, estimate=estimate)
            model = _chat(scripted_server, callbacks=[handler])
            await model.ainvoke("one")
            with pytest.raises(BudgetExceededError):
                await model.ainvoke("two")
            assert handler.pending == 0

    asyncio.run(main())
    assert len(scripted_server.requests) == 1
    assert budget.spent_usd == _cost(1000, 250)
    assert budget.reserved_usd == 0


def test_session_cap_expects_the_last_cost_without_an_estimate(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.reply(200, _completion(1000, 250))  # $0.002
    with _orch(budget_usd="0.003").session() as session:
        model = _chat(scripted_server, callbacks=[SessionCallbackHandler(session)])
        model.invoke("one")
        with pytest.raises(BudgetExceededError):
            model.invoke("two")  # expected to cost what the last call did
    assert len(scripted_server.requests) == 1
    assert session.tracker.total_cost() == _cost(1000, 250)
    assert session.summary()["failures"] == {"budget_exceeded": 1}


def test_a_failed_call_gives_its_hold_back(scripted_server: ScriptedServer) -> None:
    scripted_server.reply(400, openai_error("bad request"))
    budget = Budget(max_usd="1")
    with _orch(budget=budget).session() as session:
        handler = SessionCallbackHandler(
            session, estimate=UsageSnapshot(input_tokens=1000, output_tokens=1000)
        )
        with pytest.raises(openai.BadRequestError):
            _chat(scripted_server, callbacks=[handler]).invoke("x")
        assert budget.reserved_usd == 0
        assert budget.spent_usd == 0
        assert handler.pending == 0
        failed = _events(session, EventName.TURN_FAILED)
        # langchain-openai raises its own subclass of openai.BadRequestError
        assert [e.data["error_type"] for e in failed] == ["OpenAIInvalidRequestError"]


# -- the breaker -----------------------------------------------------------------------------


def test_breaker_opens_on_a_dead_provider_and_stops_sending(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.reply(503, openai_error("overloaded", type="server_error"))
    breaker = CircuitBreaker("openai", failure_threshold=2, recovery_timeout_seconds=60)
    with _orch(circuit_breaker=breaker).session() as session:
        model = _chat(scripted_server, callbacks=[SessionCallbackHandler(session)])
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                model.invoke("x")
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            model.invoke("x")
        assert len(scripted_server.requests) == 2  # the open breaker sent nothing
        assert len(_events(session, EventName.BREAKER_REJECTED)) == 1


def test_async_breaker_opens_on_a_refused_connection(refused_url: str) -> None:
    breaker = CircuitBreaker("openai", failure_threshold=1, recovery_timeout_seconds=60)

    async def main() -> Session:
        async with _orch(circuit_breaker=breaker).asession() as session:
            model = ChatOpenAI(
                base_url=refused_url + "/v1",
                api_key=SecretStr("test"),
                max_retries=0,
                model=MODEL,
                callbacks=[AsyncSessionCallbackHandler(session)],
            )
            with pytest.raises(openai.APIConnectionError):
                await model.ainvoke("x")
            with pytest.raises(CircuitOpenError):
                await model.ainvoke("x")
        return session

    session = asyncio.run(main())
    assert breaker.state is CircuitState.OPEN
    assert len(_events(session, EventName.BREAKER_REJECTED)) == 1
    assert session.tracker.total_cost() == 0


def test_a_success_closes_nothing_it_should_not(scripted_server: ScriptedServer) -> None:
    scripted_server.script(
        reply(503, openai_error("overloaded", type="server_error")), reply(200, _completion(5, 5))
    )
    breaker = CircuitBreaker("openai", failure_threshold=2)
    with _orch(circuit_breaker=breaker).session() as session:
        model = _chat(scripted_server, callbacks=[SessionCallbackHandler(session)])
        with pytest.raises(openai.InternalServerError):
            model.invoke("x")
        model.invoke("x")  # a success resets the consecutive count
        scripted_server.reply(503, openai_error("overloaded", type="server_error"))
        with pytest.raises(openai.InternalServerError):
            model.invoke("x")
    assert len(scripted_server.requests) == 3
    assert breaker.state is CircuitState.CLOSED


# -- tools -----------------------------------------------------------------------------------


def _policy() -> PermissionPolicy:
    return PermissionPolicy(
        {
            "writer": RolePermissionConfig(
                role="writer", mode=PermissionMode.FULL_ACCESS, denied_tools=["delete_file"]
            )
        }
    )


class _Calls:
    def __init__(self) -> None:
        self.searched: list[str] = []
        self.deleted: list[str] = []

    def tools(self) -> list[BaseTool]:
        @tool
        def search(query: str) -> str:
            """Search the web."""
            self.searched.append(query)
            return f"results for {query}"

        @tool
        def delete_file(path: str) -> str:
            """Delete a file."""
            self.deleted.append(path)
            return "deleted"

        return [search, delete_file]


def test_a_denied_tool_never_runs_and_says_why() -> None:
    calls = _Calls()
    with _orch(permissions=_policy()).session() as session:
        search, delete = guard_tools(calls.tools(), session)
        assert search.invoke({"query": "cats"}) == "results for cats"
        answer = delete.invoke({"path": "/etc/passwd"})
        assert isinstance(answer, str)
        assert answer.startswith(DENIED_PREFIX)
        assert "delete_file" in answer
        denied = _events(session, EventName.TOOL_DENIED)
        assert [e.data["tool"] for e in denied] == ["delete_file"]
        assert len(_events(session, EventName.TOOL_COMPLETED)) == 1
    assert calls.searched == ["cats"]
    assert calls.deleted == []
    assert (search.name, delete.name) == ("search", "delete_file")
    assert "path" in delete.args


def test_a_denied_tool_can_raise_sync_and_async() -> None:
    calls = _Calls()

    async def main() -> None:
        async with _orch(permissions=_policy()).asession() as session:
            delete = guard_tool(calls.tools()[1], session, on_denied="raise")
            with pytest.raises(PermissionDeniedError) as raised:
                await delete.ainvoke({"path": "a"})
            assert "delete_file" in raised.value.outcome.reason
            with pytest.raises(PermissionDeniedError):
                delete.invoke({"path": "b"})
            search = guard_tool(calls.tools()[0], session)
            assert await search.ainvoke({"query": "q"}) == "results for q"

    asyncio.run(main())
    assert calls.deleted == []
    assert calls.searched == ["q"]


def test_guard_tool_checks_its_arguments() -> None:
    with _orch().session() as session:
        search = _Calls().tools()[0]
        with pytest.raises(ValueError, match="on_denied"):
            guard_tool(search, session, on_denied="ignore")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="BaseTool"):
            guard_tool(lambda: None, session)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Session"):
            SessionCallbackHandler(object())  # type: ignore[arg-type]


# -- a LangGraph graph -----------------------------------------------------------------------


class _State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _graph(model: ChatOpenAI, tools: list[BaseTool]) -> Any:
    bound = model.bind_tools(tools)

    def agent(state: _State) -> dict[str, list[BaseMessage]]:
        return {"messages": [bound.invoke(state["messages"])]}

    async def aagent(state: _State) -> dict[str, list[BaseMessage]]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    graph = StateGraph(_State)
    graph.add_node("agent", agent, afunc=aagent)  # type: ignore[call-overload]
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def test_a_graph_run_stops_before_the_call_over_budget(scripted_server: ScriptedServer) -> None:
    scripted_server.script(
        reply(200, _tool_call("search", {"query": "cats"}, 1000, 250)),  # $0.002
        reply(200, _completion(1500, 100)),
    )
    calls = _Calls()
    with _orch(budget_usd="0.003").session() as session:
        graph = _graph(_chat(scripted_server), guard_tools(calls.tools(), session))
        config: Any = {"callbacks": [SessionCallbackHandler(session)]}
        with pytest.raises(BudgetExceededError):
            graph.invoke({"messages": [("user", "find cats")]}, config=config)
    assert len(scripted_server.requests) == 1  # the second model call was never sent
    assert calls.searched == ["cats"]  # the tool ran between the two
    assert session.tracker.total_cost() == _cost(1000, 250)
    assert session.summary()["turns"] == 2  # the refused one counted, as run_turn counts it


def test_a_graph_sees_a_denied_tool_and_goes_on(scripted_server: ScriptedServer) -> None:
    scripted_server.script(
        reply(200, _tool_call("delete_file", {"path": "/"}, 100, 20)),
        reply(200, _completion(200, 10, content="I may not delete it.")),
    )
    calls = _Calls()

    async def main() -> dict[str, Any]:
        async with _orch(permissions=_policy()).asession() as session:
            graph = _graph(_chat(scripted_server), guard_tools(calls.tools(), session))
            result: dict[str, Any] = await graph.ainvoke(
                {"messages": [("user", "delete everything")]},
                config={"callbacks": [AsyncSessionCallbackHandler(session)]},
            )
            assert session.tracker.total_cost() == _cost(100, 20) + _cost(200, 10)
            assert len(_events(session, EventName.TOOL_DENIED)) == 1
        return result

    result = asyncio.run(main())
    assert calls.deleted == []
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_messages) == 1
    assert str(tool_messages[0].content).startswith(DENIED_PREFIX)
    sent = scripted_server.requests[1].json["messages"]
    assert sent[-1]["role"] == "tool"
    assert sent[-1]["content"].startswith(DENIED_PREFIX)
    assert result["messages"][-1].content == "I may not delete it."


# -- the import rule -------------------------------------------------------------------------


def test_the_module_imports_no_langchain_until_used() -> None:
    code = (
        "import sys, techrevati.runtime.langchain as m;"
        "print(any(n.split('.')[0].startswith(('langchain', 'langgraph')) for n in sys.modules));"
        "m.SessionCallbackHandler;"
        "print('langchain_core' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True"]
