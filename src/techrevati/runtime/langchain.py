"""LangChain and LangGraph: each model call a session turn, each tool call gated.

An optional integration (``pip install 'techrevati-runtime[langchain]'``);
nothing here imports ``langchain_core`` until a handler or a guarded tool is
made, so importing this module costs nothing and loads no third-party code.

:class:`SessionCallbackHandler` (and :class:`AsyncSessionCallbackHandler` for
``ainvoke``/``astream``) is a LangChain callback handler that makes every
chat-model or LLM call it sees one turn of a session, run through the same
steps as :meth:`Session.run_turn <techrevati.runtime.orchestrator.Session.run_turn>`:

* before the request (``on_chat_model_start``/``on_llm_start``): the
  iteration limit, the ``before_model`` hooks, the holds on the session's
  cap (``budget_usd``) and the shared :class:`~techrevati.runtime.budget.Budget`,
  the rate limiter, then the circuit breaker. A refusal raises out of the
  model's ``invoke`` (the handler sets ``raise_error``) before any request
  is sent: :class:`~techrevati.runtime.budget.BudgetExceededError`,
  :class:`~techrevati.runtime.circuit_breaker.CircuitOpenError`, ...;
* after it (``on_llm_end``): the usage read from the result (the message's
  ``usage_metadata``, else ``llm_output["token_usage"]``) is charged at its
  exact cost to the tracker, the cap and the budget; the breaker counts a
  success, ``turn.completed`` is emitted and the usage sinks get a record;
* on a failure (``on_llm_error``): the holds are released, the breaker judges
  the exception, ``turn.failed`` (or ``breaker.rejected``) is emitted.

LangChain's own retries (``max_retries`` of the model) stay LangChain's: the
handler sees each attempt as a turn and never retries itself.

:func:`guard_tool` and :func:`guard_tools` wrap LangChain tools so that each
call goes through :meth:`Session.run_tool
<techrevati.runtime.orchestrator.Session.run_tool>` (``arun_tool`` when
awaited): the permission policy decides with the call's arguments, an
approver is asked on ``ask``, hooks run, ``tool.completed``/``tool.denied``
are emitted. A denied call never runs the tool; by default the tool returns
the denial as its output (so an agent sees why and goes on), or raises
:class:`~techrevati.runtime.errors.PermissionDeniedError` with
``on_denied="raise"``. docs/langchain.md shows both in a LangGraph graph.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from techrevati.runtime._responses import usage_from_exception
from techrevati.runtime._session_core import failure_class_of
from techrevati.runtime.errors import (
    InvalidValueError,
    MissingDependencyError,
    PermissionDeniedError,
    TurnTimeoutError,
)
from techrevati.runtime.usage import UsageSnapshot

if TYPE_CHECKING:
    from uuid import UUID

    from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult
    from langchain_core.tools import BaseTool

    from techrevati.runtime._breaker_permit import Permit
    from techrevati.runtime._turns import _Turn
    from techrevati.runtime.orchestrator import Session

    class SessionCallbackHandler(BaseCallbackHandler):
        """Records each LLM call of a run as a turn of ``session`` (sync runs)."""

        def __init__(
            self, session: Session, *, estimate: UsageSnapshot | None = None, model: str = ""
        ) -> None: ...

        @property
        def session(self) -> Session:
            """The session the calls are turns of."""

        @property
        def pending(self) -> int:
            """How many calls have started and not yet ended."""

    class AsyncSessionCallbackHandler(AsyncCallbackHandler):
        """Async twin of :class:`SessionCallbackHandler`, for ``ainvoke`` and ``astream``."""

        def __init__(
            self, session: Session, *, estimate: UsageSnapshot | None = None, model: str = ""
        ) -> None: ...

        @property
        def session(self) -> Session:
            """The session the calls are turns of."""

        @property
        def pending(self) -> int:
            """How many calls have started and not yet ended."""


__all__ = [
    "DENIED_PREFIX",
    "AsyncSessionCallbackHandler",
    "SessionCallbackHandler",
    "guard_tool",
    "guard_tools",
    "usage_from_llm_result",
]

DENIED_PREFIX: Final = "Permission denied: "
"""What a guarded tool's output starts with when its call was denied (``on_denied="return"``)."""

_HANDLERS: Final = ("SessionCallbackHandler", "AsyncSessionCallbackHandler")
_built: dict[str, type] = {}
_build_lock = threading.Lock()


def __getattr__(name: str) -> object:
    """Build the handler classes on first use: only then is ``langchain_core`` imported."""
    if name in _HANDLERS:
        with _build_lock:
            if not _built:
                _built.update(_build_handlers())
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _langchain_core() -> None:
    try:
        import langchain_core  # noqa: F401, PLC0415
    except ImportError as exc:
        raise MissingDependencyError("langchain-core", "langchain") from exc


# -- usage -----------------------------------------------------------------------------------


def usage_from_llm_result(response: LLMResult) -> UsageSnapshot | None:
    """Return the usage of one LangChain call, or None when it reports none.

    Read from the first generation's ``message.usage_metadata`` (LangChain's
    standard: ``input_tokens`` includes cache reads and writes,
    ``input_token_details`` has ``cache_read``, ``cache_creation`` and
    Anthropic's ``ephemeral_5m_input_tokens``/``ephemeral_1h_input_tokens``,
    ``output_token_details.reasoning`` is part of ``output_tokens``), else
    from ``llm_output["token_usage"]`` or ``llm_output["usage"]`` (a provider's
    own shape, read by :meth:`UsageSnapshot.from_response`). Every generation
    of one call carries the same usage, so only the first is read.
    """
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            metadata = getattr(message, "usage_metadata", None)
            if metadata is not None:
                return _from_usage_metadata(metadata)
    output = response.llm_output or {}
    for key in ("token_usage", "usage"):
        raw = output.get(key)
        if raw:
            return UsageSnapshot.from_response(raw)
    return None


def _from_usage_metadata(metadata: Mapping[str, Any]) -> UsageSnapshot:
    inputs = metadata.get("input_tokens") or 0
    outputs = metadata.get("output_tokens") or 0
    details = metadata.get("input_token_details") or {}
    produced = metadata.get("output_token_details") or {}
    one_hour = details.get("ephemeral_1h_input_tokens") or 0
    five_minutes = details.get("ephemeral_5m_input_tokens") or 0
    # langchain-anthropic zeroes cache_creation when it gives the TTL split instead.
    writes = max(details.get("cache_creation") or 0, one_hour + five_minutes)
    return UsageSnapshot(
        input_tokens=inputs,
        output_tokens=outputs,
        cache_read_tokens=details.get("cache_read") or 0,
        cache_write_tokens=writes,
        reasoning_tokens=produced.get("reasoning") or 0,
        cache_write_1h_tokens=one_hour,
    )


# -- the turns -------------------------------------------------------------------------------


def _no_call() -> None:
    """Stands for the model call the framework makes itself (never called)."""


class _Pending:
    """A started call: its turn, its breaker permit and when it started."""

    __slots__ = ("permit", "started", "turn")

    def __init__(self, turn: _Turn, permit: Permit | None, started: float) -> None:
        self.turn = turn
        self.permit = permit
        self.started = started


class _Turns:
    """The session side of a handler: one session turn per LLM call, keyed by run id.

    Uses the steps of the session's turn engine (the same holds, charges and
    events as ``run_turn``); only the call in the middle is LangChain's.
    """

    def __init__(self, session: Session, estimate: UsageSnapshot | None, model: str) -> None:
        from techrevati.runtime.orchestrator import Session  # noqa: PLC0415

        if not isinstance(session, Session):
            raise InvalidValueError(f"session must be a Session, got {session!r}")
        if estimate is not None and type(estimate) is not UsageSnapshot:
            raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")
        if type(model) is not str:
            raise InvalidValueError(f"model must be a str, got {model!r}")
        self.session = session
        self.estimate = estimate
        self.model = model
        self._lock = threading.Lock()
        self._pending: dict[UUID, _Pending] = {}

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def model_of(self, metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str:
        """Return the model the call is priced as: the handler's, else LangChain's."""
        if self.model:
            return self.model
        params = kwargs.get("invocation_params") or {}
        for found in (
            params.get("model"),
            params.get("model_name"),
            (metadata or {}).get("ls_model_name"),
        ):
            if isinstance(found, str) and found:
                return found
        return ""

    def begin(self, model: str) -> _Turn:
        session = self.session
        return session._begin_turn(_no_call, model, None, self.estimate, None, fallback_models=())

    def admit(self, run_id: UUID, turn: _Turn) -> None:
        """Take a breaker permit (after the holds, as ``run_turn`` does) and remember the call."""
        session = self.session
        orch = session._orch
        breaker = orch.circuit_breaker
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except BaseException as exc:
                self._failed(turn, exc, 0.0)
                raise
        with self._lock:
            self._pending[run_id] = _Pending(turn, permit, orch.clock())

    def start(self, run_id: UUID, model: str) -> None:
        session = self.session
        turn = self.begin(model)
        session._before_attempt(turn)  # hooks, then the holds: a refusal raises here
        limiter = session._orch.rate_limiter
        if limiter is not None:
            session._throttle(limiter, turn)
        self.admit(run_id, turn)

    async def astart(self, run_id: UUID, model: str) -> None:
        session = self.session
        turn = self.begin(model)
        session._before_attempt(turn, reserve=False)
        if session._budgets:
            await session._areserve(turn)
        limiter = session._orch.rate_limiter
        if limiter is not None:
            await session._athrottle(limiter, turn)
        self.admit(run_id, turn)

    def end(self, run_id: UUID, response: LLMResult) -> None:
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is None:
            return  # a call this handler did not see start
        session = self.session
        duration = session._orch.clock() - pending.started
        turn = pending.turn
        try:
            usage = usage_from_llm_result(response)
        except Exception as exc:  # unreadable usage: a failed turn, never a free one
            self._settle(pending, exc, duration)
            raise
        if pending.permit is not None:
            pending.permit.record_success(duration)
        turn.read_usage = usage
        session._attempt_succeeded(turn, response, duration)

    def error(self, run_id: UUID, exc: BaseException) -> None:
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is None:
            return
        self._settle(pending, exc, self.session._orch.clock() - pending.started)

    def _settle(self, pending: _Pending, exc: BaseException, duration: float) -> None:
        if pending.permit is not None:
            pending.permit.record_failure(exc, duration)
        self._failed(pending.turn, exc, duration)

    def _failed(self, turn: _Turn, exc: BaseException, duration: float) -> None:
        """Record a failed attempt as ``run_turn`` does, without its retries (LangChain's own)."""
        session = self.session
        billed = usage_from_exception(exc) if isinstance(exc, Exception) else None
        limiter = session._orch.rate_limiter
        if limiter is not None:
            limiter.observe(exc)
        cost = None
        if billed is None:
            session._release(turn)
        else:
            cost = session._charge(turn, billed)
            if session._usage_sinks:
                session._write_usage(turn, billed, cost, duration)
        meter = session.governance
        if meter is not None:  # LangChain's attempt is the session's turn: it failed
            meter._record_turn(0 if cost is None else cost.cost_femto_usd, True)
        failure = failure_class_of(exc)
        session._record_failure(failure)
        if isinstance(exc, TurnTimeoutError):
            with session._lock:
                session._timed_out = True
        session._emit_failure(
            turn=turn, exc=exc, failure=failure, duration=duration, billed=billed, cost=cost
        )


def _build_handlers() -> dict[str, type]:
    _langchain_core()
    from langchain_core.callbacks import (  # noqa: PLC0415
        AsyncCallbackHandler,
        BaseCallbackHandler,
    )

    class SessionCallbackHandler(BaseCallbackHandler):
        """Records each LLM call of a run as a turn of ``session``; refuses before the request.

        ``estimate`` is held on the budgets before each call (default: the
        orchestrator's ``default_estimate``, else what the model's last call
        cost); ``model`` overrides the name calls are priced under (default:
        the model LangChain reports). Pass it as ``callbacks=[handler]`` to
        the model, or in ``config={"callbacks": [handler]}`` to a chain or a
        graph run: every model call inside it is then a turn.
        """

        raise_error = True  # a refusal must stop the call, not be logged and ignored

        def __init__(
            self, session: Session, *, estimate: UsageSnapshot | None = None, model: str = ""
        ) -> None:
            self._turns = _Turns(session, estimate, model)

        @property
        def session(self) -> Session:
            """The session the calls are turns of."""
            return self._turns.session

        @property
        def pending(self) -> int:
            """How many calls have started and not yet ended."""
            return self._turns.pending

        def on_chat_model_start(
            self,
            serialized: dict[str, Any],
            messages: list[list[BaseMessage]],
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            metadata: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.start(run_id, self._turns.model_of(metadata, kwargs))

        def on_llm_start(
            self,
            serialized: dict[str, Any],
            prompts: list[str],
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            metadata: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.start(run_id, self._turns.model_of(metadata, kwargs))

        def on_llm_end(
            self,
            response: LLMResult,
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.end(run_id, response)

        def on_llm_error(
            self,
            error: BaseException,
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.error(run_id, error)

    class AsyncSessionCallbackHandler(AsyncCallbackHandler):
        """Async twin of :class:`SessionCallbackHandler`, for ``ainvoke`` and ``astream``.

        A shared budget decides (and the rate limiter waits) while the event
        loop runs.
        """

        raise_error = True

        def __init__(
            self, session: Session, *, estimate: UsageSnapshot | None = None, model: str = ""
        ) -> None:
            self._turns = _Turns(session, estimate, model)

        @property
        def session(self) -> Session:
            """The session the calls are turns of."""
            return self._turns.session

        @property
        def pending(self) -> int:
            """How many calls have started and not yet ended."""
            return self._turns.pending

        async def on_chat_model_start(
            self,
            serialized: dict[str, Any],
            messages: list[list[BaseMessage]],
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            metadata: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            await self._turns.astart(run_id, self._turns.model_of(metadata, kwargs))

        async def on_llm_start(
            self,
            serialized: dict[str, Any],
            prompts: list[str],
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            metadata: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            await self._turns.astart(run_id, self._turns.model_of(metadata, kwargs))

        async def on_llm_end(
            self,
            response: LLMResult,
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.end(run_id, response)

        async def on_llm_error(
            self,
            error: BaseException,
            *,
            run_id: UUID,
            parent_run_id: UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            self._turns.error(run_id, error)

    return {
        "SessionCallbackHandler": SessionCallbackHandler,
        "AsyncSessionCallbackHandler": AsyncSessionCallbackHandler,
    }


# -- tools -----------------------------------------------------------------------------------


def guard_tool(
    tool: BaseTool,
    session: Session,
    *,
    on_denied: Literal["return", "raise"] = "return",
    name: str | None = None,
) -> BaseTool:
    """Return ``tool`` with every call gated by ``session``'s permission policy.

    The returned tool has the same name, description, argument schema and
    ``return_direct``; calling it (``invoke``, or ``ainvoke`` for
    ``arun_tool``) runs ``session.run_tool(name, ...)`` with the parsed
    arguments by name, so argument rules (``"path:src/**"``) see them. ``name``
    is the tool name the policy decides on (default: ``tool.name``). When the
    call is denied the wrapped tool never runs: with ``on_denied="return"``
    the tool's output is :data:`DENIED_PREFIX` followed by the decision's
    reason; with ``"raise"`` the :class:`PermissionDeniedError` propagates.
    """
    _langchain_core()
    from langchain_core.tools import BaseTool, StructuredTool  # noqa: PLC0415

    from techrevati.runtime.orchestrator import Session  # noqa: PLC0415

    if not isinstance(tool, BaseTool):
        raise InvalidValueError(f"tool must be a LangChain BaseTool, got {tool!r}")
    if not isinstance(session, Session):
        raise InvalidValueError(f"session must be a Session, got {session!r}")
    if on_denied not in ("return", "raise"):
        raise InvalidValueError(f"on_denied must be 'return' or 'raise', got {on_denied!r}")
    if name is not None and (type(name) is not str or not name.strip()):
        raise InvalidValueError(f"name must be a non-empty str or None, got {name!r}")
    gate = tool.name if name is None else name
    inner = tool

    def call(**arguments: Any) -> Any:
        return inner.invoke(arguments)

    async def acall(**arguments: Any) -> Any:
        return await inner.ainvoke(arguments)

    def run(**arguments: Any) -> Any:
        try:
            return session.run_tool(gate, call, **arguments)
        except PermissionDeniedError as exc:
            if on_denied == "raise":
                raise
            return DENIED_PREFIX + exc.outcome.reason

    async def arun(**arguments: Any) -> Any:
        try:
            return await session.arun_tool(gate, acall, **arguments)
        except PermissionDeniedError as exc:
            if on_denied == "raise":
                raise
            return DENIED_PREFIX + exc.outcome.reason

    return StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema or tool.get_input_schema(),
        func=cast("Callable[..., Any]", run),
        coroutine=cast("Callable[..., Awaitable[Any]]", arun),
        return_direct=tool.return_direct,
        tags=tool.tags,
        metadata=tool.metadata,
    )


def guard_tools(
    tools: Iterable[BaseTool],
    session: Session,
    *,
    on_denied: Literal["return", "raise"] = "return",
) -> list[BaseTool]:
    """Return :func:`guard_tool` of each tool, in order."""
    return [guard_tool(tool, session, on_denied=on_denied) for tool in tools]
