"""A real pydantic-ai ``Agent`` run through a session, against the scripted server on 127.0.0.1.

The agent's model is pydantic-ai's own ``OpenAIChatModel`` on an
``openai.AsyncOpenAI`` client (its retries off) pointed at
tests/scripted_server.py, so every charge, refusal, breaker decision and
tool gate below is the session's, taken on the HTTP the model really sent
and the bodies it really received. Each test runs both the sync
(``agent.run_sync``) and the async (``await agent.run``) entry points where
it matters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelConnectionError, ModelHTTPError
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.usage import RequestUsage

from techrevati.runtime import (
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    InvalidValueError,
    ModelPricing,
    Orchestrator,
    PermissionDeniedError,
    PermissionMode,
    PermissionPolicy,
    RateLimitedError,
    RateLimiter,
    RetryPolicy,
    RolePermissionConfig,
    SessionStateError,
    UsageSnapshot,
    clear_pricing,
    register_pricing,
)
from techrevati.runtime.orchestrator import Session
from techrevati.runtime.pydantic_ai import (
    DENIED_PREFIX,
    guard_model,
    session_guard,
    usage_snapshot,
)
from tests.conftest import CollectingSink, FakeClock
from tests.scripted_server import ScriptedServer, openai_chat_completion, openai_error, reply

MODEL = "m"
INPUT_PRICE, OUTPUT_PRICE, CACHE_READ_PRICE = Decimal(3), Decimal(15), Decimal("0.3")
Mode = str  # "sync" or "async"
MODES = ("sync", "async")


@pytest.fixture(autouse=True)
def priced_model() -> Iterator[None]:
    """Price ``m`` at $3 / $15 per million, cache reads at $0.30, and nothing else."""
    clear_pricing()
    register_pricing(
        MODEL,
        ModelPricing(
            input_per_million=INPUT_PRICE,
            output_per_million=OUTPUT_PRICE,
            cache_read_per_million=CACHE_READ_PRICE,
        ),
    )
    yield
    clear_pricing()


@pytest.fixture(autouse=True)
def run_sync_loop() -> Iterator[None]:
    """The thread's event loop, closed after the test (``run_sync`` keeps it for later runs)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def _cost(inp: int, out: int, cached: int = 0) -> Decimal:
    fresh = inp - cached
    return (fresh * INPUT_PRICE + cached * CACHE_READ_PRICE + out * OUTPUT_PRICE) / 1_000_000


def _completion(
    content: str = "done", *, prompt: int = 9, completion: int = 12, cached: int = 0
) -> dict[str, Any]:
    body = openai_chat_completion(
        content, prompt_tokens=prompt, completion_tokens=completion, model=MODEL
    )
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = cached
    return body


def _tool_call(
    name: str, arguments: dict[str, Any], *, prompt: int = 9, completion: int = 12
) -> dict[str, Any]:
    """A chat completion that asks for one call of tool ``name``."""
    body = _completion("", prompt=prompt, completion=completion)
    choice = body["choices"][0]
    choice["finish_reason"] = "tool_calls"
    choice["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{name}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }
    return body


def _model(server: ScriptedServer) -> OpenAIChatModel:
    client = openai.AsyncOpenAI(
        api_key="test", base_url=server.url + "/v1", max_retries=0, timeout=5.0
    )
    return OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))


def _run(mode: Mode, agent: Agent[None, str], session: Session, **kwargs: Any) -> str:
    """Run ``agent`` once through ``session``: ``run_sync``, or ``await run`` in a fresh loop."""
    kwargs.setdefault("capabilities", [session_guard(session)])
    if mode == "sync":
        output: str = agent.run_sync("go", **kwargs).output
        return output

    async def run() -> str:
        answer: str = (await agent.run("go", **kwargs)).output
        return answer

    return asyncio.run(run())


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


def _names(session: Session, name: EventName) -> list[Any]:
    return [event for event in session.events() if event.name == name]


def _tool_messages(server: ScriptedServer, index: int) -> list[str]:
    """The tool results the model received in request ``index``."""
    messages = server.requests[index].json["messages"]
    return [str(message["content"]) for message in messages if message["role"] == "tool"]


# -- charging ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_model_call_is_one_turn_charged_exactly(
    scripted_server: ScriptedServer, mode: Mode
) -> None:
    scripted_server.script(
        reply(200, _tool_call("lookup", {"city": "Paris"}, prompt=100, completion=20)),
        reply(200, _completion("sunny", prompt=150, completion=30, cached=100)),
    )
    looked_up: list[str] = []
    agent = Agent(_model(scripted_server))

    @agent.tool_plain
    def lookup(city: str) -> str:
        looked_up.append(city)
        return f"sunny in {city}"

    sink = CollectingSink()
    orch = _orch(sinks=[sink])
    with orch.session() as session:
        output = _run(mode, agent, session)

    assert output == "sunny"
    assert looked_up == ["Paris"]
    assert len(scripted_server.requests) == 2
    assert _tool_messages(scripted_server, 1) == ["sunny in Paris"]
    first, second = _cost(100, 20), _cost(150, 30, cached=100)
    assert session.tracker.total_cost() == first + second
    assert [(r.model, r.input_tokens, r.output_tokens) for r in sink.usage] == [
        (MODEL, 100, 20),
        (MODEL, 150, 30),
    ]
    assert [r.cache_read_tokens for r in sink.usage] == [0, 100]
    assert [r.cost_usd for r in sink.usage] == [first, second]
    summary = session.summary()
    assert summary["turns"] == 2
    assert summary["tool_calls"] == 1
    assert summary["turns_without_usage"] == 0
    assert len(_names(session, EventName.TOOL_COMPLETED)) == 1
    assert [e.name for e in sink.events].count(EventName.TURN_COMPLETED) == 2


def test_a_streamed_run_is_charged_once_its_response_is_whole(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.reply(200, _completion("streamed answer", prompt=40, completion=7))
    agent = Agent(_model(scripted_server))

    async def run(session: Session) -> str:
        async with agent.run_stream("go", capabilities=[session_guard(session)]) as stream:
            return await stream.get_output()

    with _orch().session() as session:
        output = asyncio.run(run(session))

    assert output == "streamed answer"
    assert len(scripted_server.requests) == 1
    assert scripted_server.requests[0].json.get("stream") is not True
    assert session.tracker.total_cost() == _cost(40, 7)
    assert session.summary()["turns"] == 1


def test_guard_model_alone_charges_and_the_capability_does_not_charge_twice(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.script(
        reply(200, _completion("one", prompt=10, completion=2)),
        reply(200, _completion("two", prompt=20, completion=4)),
    )
    with _orch().session() as session:
        agent = Agent(guard_model(_model(scripted_server), session))
        assert agent.run_sync("go").output == "one"
        assert session.tracker.total_cost() == _cost(10, 2)
        assert agent.run_sync("go", capabilities=[session_guard(session)]).output == "two"

    assert session.summary()["turns"] == 2
    assert session.tracker.total_cost() == _cost(10, 2) + _cost(20, 4)


def test_a_response_without_usage_is_counted_as_zero_and_flagged(
    scripted_server: ScriptedServer,
) -> None:
    body = _completion("no usage")
    del body["usage"]
    scripted_server.reply(200, body)
    agent = Agent(_model(scripted_server))
    with _orch().session() as session:
        assert _run("sync", agent, session) == "no usage"

    assert session.summary()["turns_without_usage"] == 1
    assert session.tracker.total_cost() == 0


# -- the budget stops the run before the call that would exceed it -----------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cap", ["session", "shared"])
def test_the_budget_refuses_the_call_that_would_exceed_it(
    scripted_server: ScriptedServer, mode: Mode, cap: str
) -> None:
    # Each call costs $0.000207 (9 in, 12 out); the cap has room for two.
    scripted_server.script(
        reply(200, _tool_call("lookup", {"city": "Paris"})),
        reply(200, _tool_call("lookup", {"city": "Rome"})),
        reply(200, _completion("never sent")),
    )
    calls: list[str] = []
    agent = Agent(_model(scripted_server))

    @agent.tool_plain
    def lookup(city: str) -> str:
        calls.append(city)
        return "sunny"

    per_call = _cost(9, 12)
    estimate = UsageSnapshot(input_tokens=9, output_tokens=12)
    limit = per_call * 2 + per_call / 2
    budget = Budget(max_usd=limit) if cap == "shared" else None
    orch = _orch(budget_usd=limit if cap == "session" else None, budget=budget)

    with pytest.raises(BudgetExceededError), orch.session() as session:
        _run(mode, agent, session, capabilities=[session_guard(session, estimate=estimate)])

    assert len(scripted_server.requests) == 2  # the server never saw the third call
    assert calls == ["Paris", "Rome"]
    assert session.tracker.total_cost() == per_call * 2
    assert session.summary()["failure_class"] == "budget_exceeded"
    assert len(_names(session, EventName.BUDGET_EXCEEDED)) == 1
    if budget is not None:
        assert budget.spent_usd == per_call * 2


def test_without_an_estimate_the_session_expects_what_the_model_cost_last(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.script(
        reply(200, _tool_call("lookup", {"city": "Paris"})),
        reply(200, _completion("never sent")),
    )
    agent = Agent(_model(scripted_server))

    @agent.tool_plain
    def lookup(city: str) -> str:
        return "sunny"

    per_call = _cost(9, 12)
    with pytest.raises(BudgetExceededError), _orch(budget_usd=per_call * 3 / 2).session() as s:
        _run("sync", agent, s)

    assert len(scripted_server.requests) == 1
    assert s.tracker.total_cost() == per_call


# -- the breaker and the rate limiter -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_breaker_opens_on_a_dead_provider_and_stops_calling_it(
    scripted_server: ScriptedServer, mode: Mode
) -> None:
    scripted_server.reply(503, openai_error("The engine is overloaded", type="server_error"))
    breaker = CircuitBreaker("provider", failure_threshold=2, recovery_timeout_seconds=600)
    agent = Agent(_model(scripted_server))
    orch = _orch(circuit_breaker=breaker)

    for _ in range(2):
        with pytest.raises(ModelHTTPError) as failed, orch.session() as session:
            _run(mode, agent, session)
        assert failed.value.status_code == 503
    assert breaker.state is CircuitState.OPEN

    with pytest.raises(CircuitOpenError), orch.session() as session:
        _run(mode, agent, session)

    assert len(scripted_server.requests) == 2  # the open breaker sent nothing
    assert len(_names(session, EventName.BREAKER_REJECTED)) == 1
    assert session.tracker.total_cost() == 0


def test_the_breaker_opens_on_a_provider_that_refuses_connections(refused_url: str) -> None:
    client = openai.AsyncOpenAI(api_key="test", base_url=refused_url + "/v1", max_retries=0)
    agent = Agent(OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client)))
    breaker = CircuitBreaker("provider", failure_threshold=1, recovery_timeout_seconds=600)
    orch = _orch(circuit_breaker=breaker)

    with pytest.raises(ModelConnectionError) as failed, orch.session() as session:
        _run("sync", agent, session)
    assert isinstance(failed.value.__cause__, openai.APIConnectionError)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError), orch.session() as session:
        _run("sync", agent, session)


@pytest.mark.parametrize("mode", MODES)
def test_the_rate_limiter_refuses_a_call_past_its_limit(
    scripted_server: ScriptedServer, mode: Mode
) -> None:
    scripted_server.script(
        reply(200, _tool_call("lookup", {"city": "Paris"})),
        reply(200, _completion("never sent")),
    )
    agent = Agent(_model(scripted_server))

    @agent.tool_plain
    def lookup(city: str) -> str:
        return "sunny"

    limiter = RateLimiter(requests_per_minute=1, max_wait=0)
    with pytest.raises(RateLimitedError) as refused, _orch(rate_limiter=limiter).session() as s:
        _run(mode, agent, s)

    assert refused.value.limit_kind == "requests"
    assert len(scripted_server.requests) == 1
    assert s.tracker.total_cost() == _cost(9, 12)


@pytest.mark.parametrize("mode", MODES)
def test_the_retry_policy_retries_a_rate_limited_request_as_one_turn(
    scripted_server: ScriptedServer, mode: Mode, fake_clock: FakeClock
) -> None:
    scripted_server.script(
        reply(
            429,
            openai_error("Rate limit reached", type="requests", code="rate_limit_exceeded"),
            {"retry-after": "2"},
        ),
        reply(200, _completion("after the wait", prompt=30, completion=5)),
    )
    policy = RetryPolicy(
        base_delay=1.0, jitter="none", sleep=fake_clock.sleep, async_sleep=fake_clock.asleep
    )
    agent = Agent(_model(scripted_server))
    with _orch(retry=policy).session() as session:
        assert _run(mode, agent, session) == "after the wait"

    assert len(scripted_server.requests) == 2
    assert fake_clock.slept == [2.0]  # the provider's retry-after, read through pydantic-ai
    summary = session.summary()
    assert summary["turns"] == 1
    assert summary["failures"] == {"rate_limit": 1}
    assert session.tracker.total_cost() == _cost(30, 5)


# -- tools gated by the permission policy -------------------------------------------------

POLICY = PermissionPolicy(
    {
        "writer": RolePermissionConfig(
            role="writer", mode=PermissionMode.FULL_ACCESS, denied_tools=["delete_file"]
        )
    }
)


def _tools_agent(server: ScriptedServer) -> tuple[Agent[None, str], list[str]]:
    executed: list[str] = []
    agent = Agent(_model(server))

    @agent.tool_plain
    def delete_file(path: str) -> str:
        executed.append(path)
        return "deleted"

    @agent.tool_plain
    def read_file(path: str) -> str:
        executed.append(f"read {path}")
        return "contents"

    return agent, executed


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_tool_is_never_executed_and_the_model_reads_why(
    scripted_server: ScriptedServer, mode: Mode
) -> None:
    scripted_server.script(
        reply(200, _tool_call("delete_file", {"path": "/etc/passwd"})),
        reply(200, _tool_call("read_file", {"path": "notes.txt"})),
        reply(200, _completion("I may not delete it")),
    )
    agent, executed = _tools_agent(scripted_server)
    sink = CollectingSink()
    with _orch(permissions=POLICY, sinks=[sink]).session() as session:
        output = _run(mode, agent, session)

    assert output == "I may not delete it"
    assert executed == ["read notes.txt"]  # the allowed one ran, the denied one did not
    (denial,) = _tool_messages(scripted_server, 1)
    assert denial.startswith(DENIED_PREFIX)
    (denied,) = _names(session, EventName.TOOL_DENIED)
    assert denial == DENIED_PREFIX + str(denied.detail)
    assert denied.data["tool"] == "delete_file"
    assert "delete_file" in denial
    assert _tool_messages(scripted_server, 2)[1] == "contents"
    assert [e.name for e in sink.events].count(EventName.TOOL_DENIED) == 1
    assert session.summary()["tool_calls"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_tool_raises_when_told_to(scripted_server: ScriptedServer, mode: Mode) -> None:
    scripted_server.script(
        reply(200, _tool_call("delete_file", {"path": "/etc/passwd"})),
        reply(200, _completion("never sent")),
    )
    agent, executed = _tools_agent(scripted_server)
    with (
        pytest.raises(PermissionDeniedError) as denied,
        _orch(permissions=POLICY).session() as session,
    ):
        _run(mode, agent, session, capabilities=[session_guard(session, on_denied="raise")])

    assert executed == []
    assert "delete_file" in denied.value.outcome.reason
    assert len(scripted_server.requests) == 1
    assert session.summary()["failure_class"] == "permission_denied"


def test_rules_on_arguments_see_the_tool_call_arguments(scripted_server: ScriptedServer) -> None:
    scripted_server.script(
        reply(200, _tool_call("read_file", {"path": "src/app.py"})),
        reply(200, _tool_call("read_file", {"path": "secrets/key.pem"})),
        reply(200, _completion("done")),
    )
    policy = PermissionPolicy(
        {
            "writer": RolePermissionConfig(
                role="writer",
                mode=PermissionMode.READ_ONLY,
                allowed_tools=["read_file(path:src/**)"],
                denied_tools=["read_file(path:secrets/**)"],
            )
        }
    )
    agent, executed = _tools_agent(scripted_server)
    with _orch(permissions=policy).session() as session:
        assert _run("sync", agent, session) == "done"

    assert executed == ["read src/app.py"]
    assert _tool_messages(scripted_server, 1) == ["contents"]
    assert _tool_messages(scripted_server, 2)[1].startswith(DENIED_PREFIX)


# -- conversions and arguments ---------------------------------------------------------------


def test_usage_snapshot_keeps_every_count() -> None:
    usage = RequestUsage(
        input_tokens=1000,
        output_tokens=300,
        cache_read_tokens=600,
        cache_write_tokens=200,
        cache_write_1h_tokens=50,
        output_reasoning_tokens=120,
    )
    assert usage_snapshot(usage) == UsageSnapshot(
        input_tokens=1000,
        output_tokens=300,
        cache_read_tokens=600,
        cache_write_tokens=200,
        reasoning_tokens=120,
        cache_write_1h_tokens=50,
    )


def test_usage_snapshot_caps_each_part_at_its_whole() -> None:
    usage = RequestUsage(
        input_tokens=10, output_tokens=5, cache_read_tokens=8, cache_write_tokens=7
    )
    usage.output_reasoning_tokens = 9
    usage.cache_write_1h_tokens = 4
    assert usage_snapshot(usage) == UsageSnapshot(
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=8,
        cache_write_tokens=2,
        reasoning_tokens=5,
        cache_write_1h_tokens=2,
    )


def test_cache_writes_and_reasoning_reach_the_charge() -> None:
    # The usage passes to the session in full: cache writes and the one-hour part included.
    register_pricing(
        MODEL,
        ModelPricing(
            input_per_million=INPUT_PRICE,
            output_per_million=OUTPUT_PRICE,
            cache_read_per_million=CACHE_READ_PRICE,
            cache_write_per_million=Decimal("3.75"),
            cache_write_1h_per_million=Decimal(6),
        ),
    )
    snapshot = usage_snapshot(
        RequestUsage(
            input_tokens=1000,
            output_tokens=300,
            cache_read_tokens=600,
            cache_write_tokens=200,
            cache_write_1h_tokens=50,
            output_reasoning_tokens=120,
        )
    )

    def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[TextPart("cached")],
            usage=RequestUsage(
                input_tokens=1000,
                output_tokens=300,
                cache_read_tokens=600,
                cache_write_tokens=200,
                cache_write_1h_tokens=50,
                output_reasoning_tokens=120,
            ),
        )

    sink = CollectingSink()
    with _orch(sinks=[sink]).session() as session:
        agent = Agent(FunctionModel(answer, model_name=MODEL))
        assert _run("sync", agent, session) == "cached"

    (record,) = sink.usage
    charged = UsageSnapshot(
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        record.reasoning_tokens,
        record.cache_write_1h_tokens,
    )
    assert charged == snapshot
    fresh = Decimal(1000 - 600 - 200)
    expected = (
        fresh * INPUT_PRICE
        + 600 * CACHE_READ_PRICE
        + 150 * Decimal("3.75")
        + 50 * Decimal(6)
        + 300 * OUTPUT_PRICE
    ) / 1_000_000
    assert record.cost_usd == expected


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: session_guard(s, on_denied="ignore"), "on_denied"),  # type: ignore[arg-type]
        (lambda s: session_guard(object()), "session"),  # type: ignore[arg-type]
        (lambda s: session_guard(s, estimate=(1, 2)), "estimate"),  # type: ignore[arg-type]
        (lambda s: guard_model(object(), object()), "session"),  # type: ignore[arg-type]
    ],
)
def test_wrong_arguments_fail_at_once_naming_them(
    build: Callable[[Session], object], message: str
) -> None:
    with _orch().session() as session, pytest.raises(InvalidValueError, match=message):
        build(session)


def test_a_run_outside_the_session_block_is_refused(scripted_server: ScriptedServer) -> None:
    scripted_server.reply(200, _completion())
    agent = Agent(_model(scripted_server))
    session = _orch().session()
    with pytest.raises(SessionStateError):
        _run("sync", agent, session)
    assert scripted_server.requests == []
