"""The session's guarantees for an openai-agents ``Agent`` run through ``Runner``.

An optional integration: ``pip install 'techrevati-runtime[openai-agents]'``.
Nothing from ``agents`` is imported until one of these functions is called,
so the package stays free of dependencies.

:func:`guard` returns a copy of an agent (and of the agents it hands off to)
whose model calls and tool calls go through a
:class:`~techrevati.runtime.orchestrator.Session`:

- every model call is one ``session.arun_turn``: the budgets hold its
  expected cost first and refuse it with ``BudgetExceededError`` *before* the
  request when it would exceed them; the circuit breaker and the rate
  limiter guard it; the retry policy retries it; the exact usage of the
  agents ``ModelResponse`` is charged (a streamed call, ``Runner.run_streamed``,
  is one ``session.astream_turn`` charged from its ``response.completed``
  event); usage records and turn events go to the orchestrator's sinks;
- every ``FunctionTool`` call is one ``session.arun_tool``, decided by the
  permission policy with the call's JSON arguments by name. A denied call is
  never executed: the model is told why (``on_denied="return"``, the
  default) or the run stops with ``PermissionDeniedError``
  (``on_denied="raise"``).

:func:`guard_model` and :func:`guard_tool` are the two halves on their own
(``RunConfig(model=guard_model(...))`` guards every agent of a run).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError
from techrevati.runtime.usage import UsageSnapshot

if TYPE_CHECKING:
    from agents import Agent, FunctionTool, Model, ModelProvider

    from techrevati.runtime.orchestrator import Session

__all__ = ["DENIED_PREFIX", "OnDenied", "guard", "guard_model", "guard_tool"]

OnDenied = Literal["return", "raise"]
"""What a denied tool call does: tell the model why (``"return"``) or stop the run (``"raise"``)."""

DENIED_PREFIX: Final = "permission denied: "
"""How the text a denied tool call returns to the model starts (the policy's reason follows)."""


def guard(
    agent: Agent[Any],
    session: Session,
    *,
    provider: ModelProvider | None = None,
    model_name: str | None = None,
    estimate: UsageSnapshot | None = None,
    on_denied: OnDenied = "return",
    ungated_tools: bool = False,
) -> Agent[Any]:
    """Return a copy of ``agent`` whose model and tool calls go through ``session``.

    The agent's model is resolved now: a ``Model`` instance is wrapped as it
    is; a model name (or ``None``, the SDK's default model) is looked up in
    ``provider`` (the SDK's ``MultiProvider()`` when not given), as ``Runner``
    would. ``model_name`` is the name the turns are priced and recorded under
    (default: the model's ``model`` attribute, or the name looked up);
    ``estimate`` is held on the budgets before each call (see
    :func:`guard_model`). Every ``FunctionTool`` is gated (see
    :func:`guard_tool`). Agents in ``handoffs`` are guarded the same way
    (cycles included); ``Handoff`` objects are kept as they are.

    A tool the session cannot gate (a hosted tool such as ``WebSearchTool``,
    a computer, shell or patch tool) and ``mcp_servers`` (whose tools appear
    only during the run) raise ``InvalidValueError``, unless
    ``ungated_tools=True`` lets them through unchecked. The original agent is
    not changed.
    """
    _require_on_denied(on_denied)
    if estimate is not None and type(estimate) is not UsageSnapshot:
        raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")
    options = _Options(session, provider, model_name, estimate, on_denied, ungated_tools)
    return _guard_agent(agent, options, {})


def guard_model(
    model: Model,
    session: Session,
    *,
    name: str | None = None,
    estimate: UsageSnapshot | None = None,
) -> Model:
    """Return ``model`` (an agents ``Model``) with each call made as one turn of ``session``.

    ``get_response`` runs inside ``await session.arun_turn(...)`` and
    ``stream_response`` inside ``session.astream_turn(...)``, under the turn's
    model ``name`` (default: the model's ``model`` attribute, as
    ``OpenAIChatCompletionsModel`` and ``OpenAIResponsesModel`` have it).
    ``estimate`` is what each call holds on the budgets before it is made;
    without it a call holds what the model's last call cost (see
    docs/orchestrator.md, budgets without an estimate). Calls are charged from
    the usage the response reports.
    """
    if estimate is not None and type(estimate) is not UsageSnapshot:
        raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")
    _require_agents()
    from agents import Model  # noqa: PLC0415

    if not isinstance(model, Model):
        raise InvalidValueError(f"model must be an agents Model, got {model!r}")
    if name is None:
        found = getattr(model, "model", None)
        name = found if isinstance(found, str) else ""
    elif type(name) is not str:
        raise InvalidValueError(f"name must be a str or None, got {name!r}")
    guarded: Model = _guarded_model_class()(model, session, name, estimate)
    return guarded


def guard_tool(
    tool: FunctionTool, session: Session, *, on_denied: OnDenied = "return"
) -> FunctionTool:
    """Return a copy of ``tool`` (an agents ``FunctionTool``) gated by ``session``'s permissions.

    Each call is ``session.arun_tool(tool.name, ...)`` with the model's JSON
    arguments as keyword arguments, so rules on arguments see them by name;
    the tool's ``before_tool`` hooks may replace them (the tool then gets the
    replaced ones). A denied call never runs the tool: it returns
    ``DENIED_PREFIX + reason`` to the model (``on_denied="return"``) or raises
    ``PermissionDeniedError`` out of ``Runner.run`` (``on_denied="raise"``;
    the error is an agents ``AgentsException`` too, which ``Runner`` raises
    unchanged instead of wrapping it in a ``UserError``).
    """
    _require_on_denied(on_denied)
    _require_agents()
    from agents import FunctionTool  # noqa: PLC0415

    if not isinstance(tool, FunctionTool):
        raise InvalidValueError(f"tool must be an agents FunctionTool, got {tool!r}")
    gated = copy.copy(tool)
    gated.on_invoke_tool = _gated_invoker(tool, session, on_denied)
    return gated


# -- the parts ---------------------------------------------------------------------------


class _Options:
    __slots__ = ("estimate", "model_name", "on_denied", "provider", "session", "ungated_tools")

    def __init__(  # noqa: PLR0917 (the options of guard, kept together)
        self,
        session: Session,
        provider: ModelProvider | None,
        model_name: str | None,
        estimate: UsageSnapshot | None,
        on_denied: OnDenied,
        ungated_tools: bool,
    ) -> None:
        self.session = session
        self.provider = provider
        self.model_name = model_name
        self.estimate = estimate
        self.on_denied: OnDenied = on_denied
        self.ungated_tools = ungated_tools


def _require_agents() -> None:
    """Import ``agents`` on first use; without it, say how to install it."""
    try:
        import agents  # noqa: F401, PLC0415
    except ImportError as exc:  # pragma: no cover - the dev set installs it
        raise ImportError(
            "techrevati.runtime.openai_agents needs the openai-agents package: "
            "pip install 'techrevati-runtime[openai-agents]'"
        ) from exc


def _require_on_denied(on_denied: object) -> None:
    if on_denied not in ("return", "raise"):
        raise InvalidValueError(f"on_denied must be 'return' or 'raise', got {on_denied!r}")


def _guard_agent(agent: Agent[Any], options: _Options, done: dict[int, Agent[Any]]) -> Agent[Any]:
    """Guard ``agent`` and, through ``done`` (by identity), each agent it hands off to once."""
    _require_agents()
    from agents import Agent, FunctionTool  # noqa: PLC0415

    if not isinstance(agent, Agent):
        raise InvalidValueError(f"agent must be an agents Agent, got {agent!r}")
    seen = done.get(id(agent))
    if seen is not None:
        return seen
    if agent.mcp_servers and not options.ungated_tools:
        raise InvalidValueError(
            f"agent {agent.name!r} has mcp_servers, whose tools cannot be gated; "
            "pass ungated_tools=True to let them through unchecked"
        )
    tools: list[Any] = []
    for tool in agent.tools:
        if isinstance(tool, FunctionTool):
            tools.append(guard_tool(tool, options.session, on_denied=options.on_denied))
        elif options.ungated_tools:
            tools.append(tool)
        else:
            raise InvalidValueError(
                f"tool {getattr(tool, 'name', tool)!r} of agent {agent.name!r} is a "
                f"{type(tool).__name__}, which the session cannot gate (only FunctionTool); "
                "pass ungated_tools=True to let it through unchecked"
            )
    model = _resolved_model(agent, options)
    guarded: Agent[Any] = agent.clone(model=model, tools=tools, handoffs=[])
    done[id(agent)] = guarded
    guarded.handoffs = [
        _guard_agent(target, options, done) if isinstance(target, Agent) else target
        for target in agent.handoffs
    ]
    return guarded


def _resolved_model(agent: Agent[Any], options: _Options) -> Model:
    from agents import Model, MultiProvider  # noqa: PLC0415

    current = agent.model
    if isinstance(current, Model):
        return guard_model(
            current, options.session, name=options.model_name, estimate=options.estimate
        )
    name = current if isinstance(current, str) and current else None
    provider = options.provider
    if provider is None:
        provider = MultiProvider()
    resolved = provider.get_model(name)
    if name is None:
        from agents.models import get_default_model  # noqa: PLC0415

        name = get_default_model()
    return guard_model(
        resolved,
        options.session,
        name=options.model_name if options.model_name is not None else name,
        estimate=options.estimate,
    )


def _gated_invoker(
    tool: FunctionTool, session: Session, on_denied: OnDenied
) -> Callable[[Any, str], Awaitable[Any]]:
    """``tool.on_invoke_tool`` behind ``session.arun_tool``."""
    invoke = tool.on_invoke_tool
    name = tool.name

    async def gated(context: Any, raw: str) -> Any:
        arguments = _json_object(raw)

        async def call(**given: Any) -> Any:
            # The hooks may have replaced the arguments: the tool gets what they left.
            text = raw if given == arguments else json.dumps(given)
            return await invoke(context, text)

        try:
            return await session.arun_tool(name, call, **arguments)
        except PermissionDeniedError as exc:
            if on_denied == "raise":  # as an AgentsException too: Runner lets it through
                raise _denied_error_class()(exc.outcome) from None
            return DENIED_PREFIX + exc.outcome.reason

    return gated


def _json_object(raw: str) -> dict[str, Any]:
    """Return the call's arguments by name; ``{}`` when not a JSON object (the tool says so)."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    return {}


@functools.cache
def _denied_error_class() -> type[PermissionDeniedError]:
    """Make the ``PermissionDeniedError`` that agents' ``Runner`` raises as is (no UserError)."""
    from agents.exceptions import AgentsException  # noqa: PLC0415

    from techrevati.runtime.permissions import PermissionOutcome  # noqa: PLC0415

    class ToolPermissionDeniedError(PermissionDeniedError, AgentsException):
        """A denied tool call of an agents run (``on_denied="raise"``)."""

        def __init__(self, outcome: PermissionOutcome) -> None:
            super().__init__(outcome)
            self.run_data = None  # AgentsException's; OSError's __init__ does not chain to it

    return ToolPermissionDeniedError


@functools.cache
def _guarded_model_class() -> type[Any]:
    """Make the ``Model`` subclass on first use (its base lives in ``agents``)."""
    from agents import Model  # noqa: PLC0415

    if TYPE_CHECKING:
        from agents import (  # noqa: PLC0415
            AgentOutputSchemaBase,
            Handoff,
            ModelResponse,
            ModelSettings,
            ModelTracing,
            Tool,
            TResponseInputItem,
        )
        from agents.items import TResponseStreamEvent  # noqa: PLC0415
        from agents.retry import ModelRetryAdvice, ModelRetryAdviceRequest  # noqa: PLC0415
        from openai.types.responses.response_prompt_param import (  # noqa: PLC0415
            ResponsePromptParam,
        )

    class GuardedModel(Model):
        """An agents ``Model`` whose every call is one turn of a session."""

        def __init__(
            self, inner: Model, session: Session, name: str, estimate: UsageSnapshot | None
        ) -> None:
            self.inner = inner
            self.session = session
            self.model = name
            self.estimate = estimate

        def __repr__(self) -> str:
            return f"GuardedModel({self.inner!r}, model={self.model!r})"

        async def get_response(  # noqa: PLR0917 (agents' Model interface)
            self,
            system_instructions: str | None,
            input: str | list[TResponseInputItem],
            model_settings: ModelSettings,
            tools: list[Tool],
            output_schema: AgentOutputSchemaBase | None,
            handoffs: list[Handoff],
            tracing: ModelTracing,
            *,
            previous_response_id: str | None = None,
            conversation_id: str | None = None,
            prompt: ResponsePromptParam | None = None,
        ) -> ModelResponse:
            async def call() -> ModelResponse:
                return await self.inner.get_response(
                    system_instructions,
                    input,
                    model_settings,
                    tools,
                    output_schema,
                    handoffs,
                    tracing,
                    previous_response_id=previous_response_id,
                    conversation_id=conversation_id,
                    prompt=prompt,
                )

            response, _ = await self.session.arun_turn(
                call, model=self.model, estimate=self.estimate
            )
            return response

        async def stream_response(  # noqa: PLR0917 (agents' Model interface)
            self,
            system_instructions: str | None,
            input: str | list[TResponseInputItem],
            model_settings: ModelSettings,
            tools: list[Tool],
            output_schema: AgentOutputSchemaBase | None,
            handoffs: list[Handoff],
            tracing: ModelTracing,
            *,
            previous_response_id: str | None = None,
            conversation_id: str | None = None,
            prompt: ResponsePromptParam | None = None,
        ) -> AsyncIterator[TResponseStreamEvent]:
            def open_stream() -> AsyncIterator[TResponseStreamEvent]:
                return self.inner.stream_response(
                    system_instructions,
                    input,
                    model_settings,
                    tools,
                    output_schema,
                    handoffs,
                    tracing,
                    previous_response_id=previous_response_id,
                    conversation_id=conversation_id,
                    prompt=prompt,
                )

            stream = self.session.astream_turn(
                open_stream, model=self.model, estimate=self.estimate
            )
            async with stream:
                async for event in stream:
                    yield event

        def get_retry_advice(self, request: ModelRetryAdviceRequest) -> ModelRetryAdvice | None:
            return self.inner.get_retry_advice(request)

        async def _cleanup_on_run_end(self, owner: object) -> None:
            await self.inner._cleanup_on_run_end(owner)

        async def close(self) -> None:
            await self.inner.close()

    return GuardedModel
