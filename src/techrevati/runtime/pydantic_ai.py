"""pydantic-ai agents run through a session: every model call charged, gated and guarded.

Reach for this module when a pydantic-ai ``Agent`` does the agent loop and a
:class:`~techrevati.runtime.orchestrator.Session` should account for it. Pass
:func:`session_guard` as a capability of the run
(``agent.run_sync(prompt, capabilities=[session_guard(session)])``, or
``await agent.run(...)``): each model request of the run becomes one
``session.arun_turn`` (its budget holds, refused *before* the call with
:class:`~techrevati.runtime.budget.BudgetExceededError`; the rate limiter; the
circuit breaker; the retry policy; the exact cost from the response's usage;
the turn and usage events in the orchestrator's sinks), and each function
tool call becomes one ``session.arun_tool``, gated by the permission policy.
A denied tool is never executed: by default the model gets the denial's
reason as the tool's result (``on_denied="return"``), or the run stops with
:class:`~techrevati.runtime.errors.PermissionDeniedError`
(``on_denied="raise"``). :func:`guard_model` wraps one model alone, for an
agent that is built per session. pydantic-ai is an optional extra
(``pip install 'techrevati-runtime[pydantic-ai]'``), imported when a guard is
made, never by importing this module. docs/pydantic_ai.md has the guide.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

from techrevati.runtime.errors import (
    InvalidValueError,
    MissingDependencyError,
    PermissionDeniedError,
)
from techrevati.runtime.usage import UsageSnapshot

if TYPE_CHECKING:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models import Model
    from pydantic_ai.usage import RequestUsage

    from techrevati.runtime.orchestrator import Session

__all__ = [
    "DENIED_PREFIX",
    "PYDANTIC_AI_EXTRA",
    "OnDenied",
    "guard_model",
    "session_guard",
    "usage_snapshot",
]

PYDANTIC_AI_EXTRA: Final = "pydantic-ai"
"""The package extra that installs pydantic-ai."""

DENIED_PREFIX: Final = "Permission denied: "
"""What a denied tool's result starts with (``on_denied="return"``); the reason follows."""

OnDenied = Literal["return", "raise"]
"""What a denied tool call does: give the model the reason, or raise ``PermissionDeniedError``."""

_ON_DENIED: Final = ("return", "raise")


def session_guard(
    session: Session,
    *,
    on_denied: OnDenied = "return",
    estimate: UsageSnapshot | None = None,
) -> AbstractCapability[Any]:
    """Return a pydantic-ai capability: an agent's model and tool calls run through ``session``.

    Pass it per run (``agent.run_sync(prompt, capabilities=[guard])``) or to
    ``Agent(capabilities=[...])`` for an agent built per session. Every model
    request is one turn of ``session`` (see :func:`guard_model`); every call of
    a function tool (output tools aside) is one ``session.arun_tool`` under the
    tool's name with its validated arguments, so the permission policy decides
    on them and hooks see them. A denied call is not executed: with
    ``on_denied="return"`` its result is :data:`DENIED_PREFIX` plus the reason,
    which the model reads like any tool result; with ``"raise"`` the
    :class:`~techrevati.runtime.errors.PermissionDeniedError` ends the run.
    ``estimate`` is each turn's expected usage, held on the budgets before the
    call (``None``: the session's own expectation, as for ``run_turn``).
    """
    _checked(session, estimate)
    if on_denied not in _ON_DENIED:
        raise InvalidValueError(f"on_denied must be 'return' or 'raise', got {on_denied!r}")
    guard: AbstractCapability[Any] = _classes().guard(session, on_denied, estimate)
    return guard


def guard_model(model: Model, session: Session, *, estimate: UsageSnapshot | None = None) -> Model:
    """Return ``model`` wrapped so that each of its requests is one turn of ``session``.

    A request runs inside ``session.arun_turn`` under the model's name
    (``model.model_name``, the name its pricing is registered under): the
    budgets hold ``estimate`` first and refuse the call that would exceed
    them, the rate limiter and the circuit breaker admit it, the retry policy
    retries it, and the response's usage (:func:`usage_snapshot`) is charged
    exactly. A streamed request (``run_stream``) is made whole and replayed
    as events, since its cost is known only from the finished response. A
    request that failed goes to the session as the exception pydantic-ai
    raised (its cause, the SDK's error, is what the classifier reads).
    """
    _checked(session, estimate)
    guarded: Model = _classes().model(model, session, estimate)
    return guarded


def usage_snapshot(usage: RequestUsage) -> UsageSnapshot:
    """Convert a pydantic-ai ``RequestUsage`` into a :class:`~techrevati.runtime.UsageSnapshot`.

    Both count input with cache reads and writes included, and output with
    reasoning included; each part is capped at its whole (a provider that
    reports more cached than input tokens is read as all cached).
    """
    inp = max(usage.input_tokens, 0)
    out = max(usage.output_tokens, 0)
    cache_read = min(max(usage.cache_read_tokens, 0), inp)
    cache_write = min(max(usage.cache_write_tokens, 0), inp - cache_read)
    return UsageSnapshot(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=min(max(usage.output_reasoning_tokens, 0), out),
        cache_write_1h_tokens=min(max(usage.cache_write_1h_tokens, 0), cache_write),
    )


def _checked(session: object, estimate: object) -> None:
    from techrevati.runtime.orchestrator import Session  # noqa: PLC0415

    if not isinstance(session, Session):
        raise InvalidValueError(f"session must be a Session, got {session!r}")
    if estimate is not None and type(estimate) is not UsageSnapshot:
        raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")


class _Billed:
    """What a guarded request returns to the turn engine: the response and its usage.

    ``usage`` is the response's usage as an Anthropic-shaped dict (input
    without the cache), the one shape the session reads that carries every
    field of a ``UsageSnapshot`` exactly; ``None`` when the response carried
    no usage, so the turn is counted as zero and flagged, as for any SDK.
    """

    __slots__ = ("response", "usage")

    def __init__(self, response: Any, usage: UsageSnapshot | None) -> None:
        self.response = response
        self.usage: dict[str, object] | None = None if usage is None else _anthropic_shape(usage)


def _anthropic_shape(usage: UsageSnapshot) -> dict[str, object]:
    one_hour = usage.cache_write_1h_tokens
    return {
        "input_tokens": usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_creation": {
            "ephemeral_1h_input_tokens": one_hour,
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - one_hour,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"thinking_tokens": usage.reasoning_tokens},
    }


class _Classes:
    """The pydantic-ai subclasses, made once pydantic-ai is imported."""

    __slots__ = ("guard", "model")

    def __init__(
        self,
        guard: Callable[[Session, OnDenied, UsageSnapshot | None], AbstractCapability[Any]],
        model: Callable[[Model, Session, UsageSnapshot | None], Model],
    ) -> None:
        self.guard = guard
        self.model = model


@functools.cache
def _classes() -> _Classes:
    """Import pydantic-ai now (or say which extra installs it) and define the guards on it."""
    try:  # imported here, not at the top: the extra is optional
        from pydantic_ai.capabilities import AbstractCapability  # noqa: PLC0415
        from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart  # noqa: PLC0415
        from pydantic_ai.models import (  # noqa: PLC0415
            CompletedStreamedResponse,
            ModelRequestParameters,
            StreamedResponse,
        )
        from pydantic_ai.models.wrapper import WrapperModel  # noqa: PLC0415
        from pydantic_ai.settings import ModelSettings  # noqa: PLC0415
        from pydantic_ai.tools import RunContext, ToolDefinition  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError("pydantic-ai-slim", PYDANTIC_AI_EXTRA) from exc

    class GuardedModel(WrapperModel):
        """A model whose every request is one turn of a session."""

        def __init__(
            self, wrapped: Model, session: Session, estimate: UsageSnapshot | None
        ) -> None:
            super().__init__(wrapped)
            self.session = session
            self.estimate = estimate

        async def request(
            self,
            messages: list[ModelMessage],
            model_settings: ModelSettings | None,
            model_request_parameters: ModelRequestParameters,
        ) -> ModelResponse:
            wrapped = self.wrapped

            async def call() -> _Billed:
                response = await wrapped.request(messages, model_settings, model_request_parameters)
                measured = not response.usage.unmeasured_requests
                return _Billed(response, usage_snapshot(response.usage) if measured else None)

            billed, _ = await self.session.arun_turn(
                call, model=self.model_name, estimate=self.estimate
            )
            response: ModelResponse = billed.response
            return response

        @asynccontextmanager
        async def request_stream(
            self,
            messages: list[ModelMessage],
            model_settings: ModelSettings | None,
            model_request_parameters: ModelRequestParameters,
            run_context: RunContext[Any] | None = None,
        ) -> AsyncIterator[StreamedResponse]:
            # The cost is known only from the finished response: it is made whole, then replayed.
            response = await self.request(messages, model_settings, model_request_parameters)
            yield CompletedStreamedResponse(
                response, model_request_parameters=model_request_parameters, replay_events=True
            )

    class SessionGuard(AbstractCapability[Any]):
        """Model requests as session turns, function tool calls gated by its permissions."""

        def __init__(
            self, session: Session, on_denied: OnDenied, estimate: UsageSnapshot | None
        ) -> None:
            self.session = session
            self.on_denied = on_denied
            self.estimate = estimate

        def get_wrapper_model(self, model: Model) -> Model | None:
            if isinstance(model, GuardedModel) and model.session is self.session:
                return None  # guard_model already did it: one turn per request
            return GuardedModel(model, self.session, self.estimate)

        async def wrap_tool_execute(
            self,
            ctx: RunContext[Any],
            *,
            call: ToolCallPart,
            tool_def: ToolDefinition,
            args: dict[str, Any],
            handler: Callable[[dict[str, Any]], Awaitable[Any]],
        ) -> Any:
            async def execute(**arguments: Any) -> Any:
                return await handler(arguments)  # what the session's hooks left

            try:
                return await self.session.arun_tool(call.tool_name, execute, **args)
            except PermissionDeniedError as exc:
                if self.on_denied == "raise":
                    raise
                return DENIED_PREFIX + exc.outcome.reason

    return _Classes(SessionGuard, GuardedModel)
