"""The easy path: one session object wiring every primitive around each model and tool call.

An :class:`Orchestrator` holds the long-lived parts (registry, circuit breaker,
permissions, policy engine, quality gate, a shared budget, hooks, sinks).
Each ``with orch.session() as session:`` (or ``async with orch.asession()``)
gets a fresh worker, usage tracker and recovery context, moves the worker
through its lifecycle, and records every turn. ``session.run_turn(fn, ...)``
checks the budget and iteration limit, runs hooks, calls ``fn`` through the
breaker (with a deadline and retries when asked), reads the usage, charges
the cost and emits an event; all of it in O(1) per turn.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._log import get_logger
from techrevati.runtime._money import _USD_POWER, MoneyInput, _scaled, _to_decimal
from techrevati.runtime._responses import (
    EmptyResponseError,
    StreamResultError,
)
from techrevati.runtime._runner import DeadlineRunner, default_runner
from techrevati.runtime._session_core import (
    _TURN_COMPLETED,
    _cancelled,
    _short,
    failure_class_of,
)
from techrevati.runtime._stream_turns import AsyncTurnStream, TurnStream, _StreamTurnEngine
from techrevati.runtime._threads import restore, runtime_state, turn_key
from techrevati.runtime._tool_gate import _ToolGate
from techrevati.runtime._turns import UNNAMED_MODEL
from techrevati.runtime._validate import (
    callable_or_none,
    instance_or_none,
    int_at_least,
    non_empty_str,
    optional_int_at_least,
    required_callable,
    strict_bool,
)
from techrevati.runtime.budget import Budget
from techrevati.runtime.circuit_breaker import CircuitBreaker
from techrevati.runtime.errors import (
    InvalidValueError,
    MaxIterationsExceededError,
    SessionStateError,
    TurnTimeoutError,
)
from techrevati.runtime.events import (
    DEFAULT_RING_CAPACITY,
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    UsageSink,
)
from techrevati.runtime.governance import GOVERNANCE_KEY, Governance, GovernanceBreachedError
from techrevati.runtime.hooks import (
    BaseHook,
    Hook,
    ToolCall,
    _checked_hooks,
    _hook_table,
)
from techrevati.runtime.lifecycle import AgentRegistry, AgentStatus
from techrevati.runtime.permissions import (
    Approver,
    PermissionEnforcer,
    PermissionPolicy,
)
from techrevati.runtime.policy_engine import PhaseContext, PolicyActionData, PolicyEngine
from techrevati.runtime.quality_gate import QualityGate, QualityGateOutcome, QualityLevel
from techrevati.runtime.rate_limit import RateLimiter
from techrevati.runtime.retry_policy import RetryPolicy, _asyncio_sleep
from techrevati.runtime.routing import ProviderRouter
from techrevati.runtime.sinks import SinkFanout
from techrevati.runtime.usage import UsageSnapshot

if TYPE_CHECKING:
    import os

    from techrevati.runtime.approvals import ApprovalLedger
    from techrevati.runtime.checkpoints import CheckpointSaver, CheckpointWrite
    from techrevati.runtime.jsonl import JsonlSink
    from techrevati.runtime.memory import ConversationMemory
    from techrevati.runtime.redis_store import RedisStore
    from techrevati.runtime.sqlite import SqliteReader, SqliteSink

__all__ = [
    "DEFAULT_LAST_EVENTS",
    "UNNAMED_MODEL",
    "AsyncTurnStream",
    "EmptyResponseError",
    "Handoff",
    "MaxIterationsExceededError",
    "Orchestrator",
    "Session",
    "SessionStateError",
    "StreamResultError",
    "TurnStream",
    "TurnTimeoutError",
]

DEFAULT_LAST_EVENTS: Final = 20
"""How many of the newest events :meth:`Session.summary` includes."""

_T = TypeVar("_T")
_P = ParamSpec("_P")
_Client = TypeVar("_Client")
_log = get_logger("techrevati.runtime.orchestrator")


@dataclass(frozen=True, slots=True)
class Handoff:
    """Work passed from one worker to another by :meth:`Session.handoff_to`."""

    from_worker_id: str
    to_worker_id: str
    from_role: str
    to_role: str
    reason: str
    context: Mapping[str, object] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "from_worker_id": self.from_worker_id,
            "to_worker_id": self.to_worker_id,
            "from_role": self.from_role,
            "to_role": self.to_role,
            "reason": self.reason,
            "context": dict(self.context),
            "timestamp": self.timestamp.isoformat(),
        }


class Orchestrator:
    """Long-lived wiring of the primitives; opens one :class:`Session` per task.

    Safe to share between threads: each session has its own worker, tracker
    and recovery context; the shared parts (breaker, budget, registry, sinks)
    are themselves thread-safe. ``budget_usd`` caps each session; ``budget``
    is a :class:`~techrevati.runtime.usage.Budget` shared by every session
    that uses it (a project-wide cap). With a ``rate_limiter``, every attempt of
    a turn waits for its capacity before the call (a ``turn.throttled`` event
    says how long), settles with the attempt's usage or releases on failure,
    and the limiter observes the rate-limit headers of what the call returned
    or raised. ``governance`` sets hard-stop limits per session (turns,
    dollars, failed turns in a row, tool calls, wall time): a breach raises
    :class:`~techrevati.runtime.governance.GovernanceBreachedError`, which no
    retry catches, fails the worker at once and emits ``governance.breached``.
    ``router`` picks each turn's model and provider (:mod:`~techrevati.runtime.routing`):
    the attempt runs under that candidate's own breaker and limiter, a switch
    (a retry recipe's SWITCH_PROVIDER, or its breaker found open) goes to the
    next candidate of the route, and the router hears every attempt's outcome.
    Every argument is checked here, so a
    wrong one fails at construction with an :class:`InvalidValueError`
    naming it, never later inside a turn.
    """

    def __init__(
        self,
        role: str,
        phase: str,
        project_id: str | int | None = None,
        *,
        registry: AgentRegistry | None = None,
        permissions: PermissionEnforcer | PermissionPolicy | None = None,
        approver: Approver | None = None,
        approvals: ApprovalLedger | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limiter: RateLimiter | None = None,
        policy_engine: PolicyEngine | None = None,
        quality_gate: QualityGate | None = None,
        governance: Governance | None = None,
        checkpoints: CheckpointSaver | None = None,
        router: ProviderRouter | None = None,
        budget_usd: MoneyInput | None = None,
        budget: Budget | None = None,
        enforce_budget: bool = True,
        default_estimate: UsageSnapshot | None = None,
        max_iterations: int | None = None,
        retry: RetryPolicy | None = None,
        max_total_retries: int | None = None,
        hooks: Iterable[Hook | BaseHook] = (),
        sinks: Iterable[EventSink | UsageSink] = (),
        clock: Clock | None = None,
        wall_clock: WallClock | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        event_capacity: int = DEFAULT_RING_CAPACITY,
        runner: DeadlineRunner | None = None,
    ) -> None:
        self.role = non_empty_str("role", role)
        self.phase = non_empty_str("phase", phase)
        if project_id is not None and (
            not isinstance(project_id, str | int) or isinstance(project_id, bool)
        ):
            raise InvalidValueError(f"project_id must be a str, an int or None, got {project_id!r}")
        self.project_id = project_id
        self._own_registry = registry is None
        registry = instance_or_none("registry", registry, AgentRegistry)
        self.registry = AgentRegistry() if registry is None else registry
        if isinstance(permissions, PermissionPolicy):
            permissions = PermissionEnforcer(permissions)
        self.permissions = instance_or_none("permissions", permissions, PermissionEnforcer)
        self.approver: Approver | None = callable_or_none("approver", approver)
        """Asked when a tool call's decision is ``ask`` (None: ``ask`` is a deny)."""
        if approvals is not None and not callable(getattr(approvals, "consume", None)):
            raise InvalidValueError(f"approvals must be an ApprovalLedger, got {approvals!r}")
        self.approvals: ApprovalLedger | None = approvals
        """Where approval tokens are checked and their uses counted (None: no tokens)."""
        self.circuit_breaker = instance_or_none("circuit_breaker", circuit_breaker, CircuitBreaker)
        self.rate_limiter = instance_or_none("rate_limiter", rate_limiter, RateLimiter)
        self.policy_engine = instance_or_none("policy_engine", policy_engine, PolicyEngine)
        self.quality_gate = instance_or_none("quality_gate", quality_gate, QualityGate)
        self.governance = instance_or_none("governance", governance, Governance)
        """Hard-stop limits each session counts against with its own meter (None: none)."""
        self.checkpoints = _saver_or_none(checkpoints)
        if router is not None and not isinstance(router, ProviderRouter):
            raise InvalidValueError(
                f"router must be a ProviderRouter (candidates() and record()), got {router!r}"
            )
        self.router = router
        """Where each turn goes (a model at a provider behind its own breaker); None: ``model``."""
        """Where ``session(thread_id=...)`` saves its steps and resumes from (None: nowhere)."""
        if budget_usd is None:
            self.budget_usd: Decimal | None = None
            self._budget_femto: int | None = None
        else:  # checked here, so that an error names budget_usd (not UsageLimits' max_usd)
            self.budget_usd = _to_decimal(budget_usd, "budget_usd")
            self._budget_femto = _scaled(self.budget_usd, _USD_POWER, "budget_usd", "1e-15 USD")
        self.budget = instance_or_none("budget", budget, Budget)
        self.enforce_budget = strict_bool("enforce_budget", enforce_budget)
        if default_estimate is not None and type(default_estimate) is not UsageSnapshot:
            raise InvalidValueError(
                f"default_estimate must be a UsageSnapshot or None, got {default_estimate!r}"
            )
        self.default_estimate = default_estimate
        self.max_iterations = optional_int_at_least("max_iterations", max_iterations, 1)
        self.retry = instance_or_none("retry", retry, RetryPolicy)
        self.max_total_retries = optional_int_at_least("max_total_retries", max_total_retries, 0)
        self.clock: Clock = time.monotonic if clock is None else callable_or_none("clock", clock)
        self.wall_clock: WallClock = (
            utc_now if wall_clock is None else callable_or_none("wall_clock", wall_clock)
        )
        # The policy's sleeps unless the orchestrator is given its own.
        self._sleep: Callable[[float], object] = callable_or_none("sleep", sleep) or (
            self.retry.sleep if self.retry is not None else time.sleep
        )
        self._async_sleep: Callable[[float], Awaitable[object]] = callable_or_none(
            "async_sleep", async_sleep
        ) or (self.retry.async_sleep if self.retry is not None else _asyncio_sleep)
        self.event_capacity = int_at_least("event_capacity", event_capacity, 1)
        self._runner = instance_or_none("runner", runner, DeadlineRunner)
        self.hooks: tuple[Hook | BaseHook, ...] = _checked_hooks(hooks)
        self._points = _hook_table(self.hooks)
        self._model_hooks = bool(self._points["before_model"] or self._points["after_model"])
        self.sinks = SinkFanout(list(sinks))

    def session(
        self,
        *,
        metadata: Mapping[str, object] | None = None,
        memory: ConversationMemory | None = None,
        thread_id: str | None = None,
    ) -> Session:
        """Return a new session; use it as ``with orch.session() as session:``.

        ``memory``: the conversation the turns send; on a context overflow the
        session compacts it (``memory.compact()``) and retries the turn once,
        emitting ``memory.compacted``. ``fn`` must read ``memory.messages``
        when it is called, so the retry sends the compacted history.
        ``thread_id`` (with ``checkpoints=`` on the orchestrator): the session
        goes on from the thread's last checkpoint (its ``state``, its usage,
        cost, counts, governance meter and memory) and saves a step with
        :meth:`Session.checkpoint`; see docs/checkpoints.md.
        """
        return Session(self, metadata=metadata, memory=_memory_or_none(memory), thread_id=thread_id)

    def asession(
        self,
        *,
        metadata: Mapping[str, object] | None = None,
        memory: ConversationMemory | None = None,
        thread_id: str | None = None,
    ) -> Session:
        """Return a new session; use it as ``async with orch.asession() as session:``."""
        return Session(self, metadata=metadata, memory=_memory_or_none(memory), thread_id=thread_id)

    def resume(
        self,
        session_id: str,
        *,
        from_: str | os.PathLike[str] | SqliteSink | SqliteReader | JsonlSink,
        metadata: Mapping[str, object] | None = None,
    ) -> Session:
        """Return the session ``session_id`` rebuilt from its log, to continue after a crash.

        ``from_`` is a SQLite or JSONL log (a path, opened read-only, or a
        live ``SqliteSink``, ``SqliteReader`` or ``JsonlSink``). The session
        keeps its id and starts with the log's turns, usage and cost per
        model, budget spent (on ``budget_usd`` and once on the shared
        ``budget``), failures, retries, tool calls and event counts; enter it
        like :meth:`session` (``with`` or ``async with``). ``metadata``
        defaults to what the session last started with. Raises
        ``InvalidValueError`` for a bad source or an id the log does not
        hold, ``SessionStateError`` for a session that ended or is still open
        here. See docs/orchestrator.md.
        """
        from techrevati.runtime._resume import resume_session  # noqa: PLC0415 (sqlite, json)

        return resume_session(self, session_id, from_, metadata)

    def _runner_for_timeouts(self) -> DeadlineRunner:
        if self._runner is None:
            self._runner = default_runner()
        return self._runner


class Session(_StreamTurnEngine, _ToolGate):
    """One agent task: a worker, a usage tracker, a recovery context and an event log.

    Use as ``with orch.session() as session:`` or ``async with orch.asession()``.
    A session is meant for one task at a time; its counters are still guarded
    by a lock, so a tool called from another thread cannot corrupt them.
    :meth:`summary` keeps working after the block ends.
    """

    def __enter__(self) -> Session:
        self._start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._finish(exc)

    async def __aenter__(self) -> Session:
        self._start()
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._finish(exc)

    def run_tool(
        self, name: str, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Check the role may use tool ``name``, run hooks, then ``fn(*args, **kwargs)``.

        Raises :class:`~techrevati.runtime.permissions.PermissionDeniedError`
        (carrying the outcome) when denied; the tool's own exceptions pass
        through unchanged and are recorded as ``tool_error``.
        """
        required_callable("fn", fn)
        self._require_running()
        self._gate(name, fn, args, kwargs)
        call = self._begin_tool(name, args, kwargs)
        started = self._orch.clock()
        try:
            # The hooks may have replaced the arguments: fn gets what they left.
            result = cast("Callable[..., _T]", fn)(*call.args, **call.kwargs)
        except BaseException as exc:
            self._tool_failed(call, exc, self._orch.clock() - started)
            raise
        return self._tool_succeeded(call, result, self._orch.clock() - started)

    async def arun_tool(
        self, name: str, fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Async twin of :meth:`run_tool`: ``fn`` returns an awaitable; an approver is awaited."""
        required_callable("fn", fn)
        self._require_running()
        await self._agate(name, fn, args, kwargs)
        call = self._begin_tool(name, args, kwargs)
        started = self._orch.clock()
        try:
            result = await cast("Callable[..., Awaitable[_T]]", fn)(*call.args, **call.kwargs)
        except BaseException as exc:
            self._tool_failed(call, exc, self._orch.clock() - started)
            raise
        return self._tool_succeeded(call, result, self._orch.clock() - started)

    @property
    def state(self) -> Any:
        """The caller's state of the thread's last checkpoint (None: a new thread, or none)."""
        return self._thread_state

    @property
    def step(self) -> int:
        """Steps the thread has committed (0 for a new thread or a session without one)."""
        return self._step

    @property
    def turn_key(self) -> str:
        """The idempotency key of the step in progress: the same when it re-runs after a crash.

        Raises :class:`SessionStateError` for a session without a ``thread_id``.
        """
        return turn_key(self._require_thread(), self._step + 1)

    def checkpoint(self, state: object) -> CheckpointWrite:
        """Commit the step in progress with the caller's ``state`` (a JSON value).

        Saved together with the runtime's own state (usage and cost, the session
        cap's spend, counts, the governance meter, the memory) in one write;
        after a crash, ``orch.session(thread_id=...)`` goes on from here and
        the steps after it run again. ``InvalidValueError`` (nothing written)
        for a ``state`` that is not JSON.
        """
        thread = self._require_thread()
        self._require_running()
        saver = self._orch.checkpoints
        assert saver is not None
        step = self._step + 1
        key = turn_key(thread, step)
        write = saver.put(thread, step, state, runtime_state(self), key)
        self._checkpointed(state, step, key)
        return write

    async def acheckpoint(self, state: object) -> CheckpointWrite:
        """Async twin of :meth:`checkpoint` (the saver's write does not block the loop)."""
        thread = self._require_thread()
        self._require_running()
        saver = self._orch.checkpoints
        assert saver is not None
        step = self._step + 1
        key = turn_key(thread, step)
        write = await saver.aput(thread, step, state, runtime_state(self), key)
        self._checkpointed(state, step, key)
        return write

    def _checkpointed(self, state: object, step: int, key: str) -> None:
        with self._lock:
            self._thread_state = state
            self._step = step
            self._step_begun = False
        self._emit(
            EventName.CHECKPOINT_SAVED,
            data={"thread_id": self.thread_id, "step": step, "turn_key": key},
        )

    def _require_thread(self) -> str:
        thread = self.thread_id
        if thread is None:
            raise SessionStateError(
                "this session has no thread: open it with orch.session(thread_id=...) "
                "and Orchestrator(checkpoints=...)"
            )
        return thread

    def wrap(self, client: _Client) -> _Client:
        """Return ``client`` with every model call it makes run as a turn of this session.

        For openai (``OpenAI``, ``AsyncOpenAI``: Chat Completions and
        Responses), anthropic (``Anthropic``, ``AsyncAnthropic``: Messages),
        google-genai (``Client``, ``client.aio``) and bedrock-runtime
        (``converse``, ``converse_stream``) clients: the same methods and
        types, where each call goes through :meth:`run_turn` (streamed ones
        through :meth:`stream_turn`) with the model taken from the call's own
        arguments, so budgets, the breaker, the rate limiter, retries and
        usage apply. With a retry policy on the orchestrator, the SDK's own
        retries are turned off (``with_options(max_retries=0)``) so they are
        not doubled. Everything else on the client passes through unchanged.
        """
        from techrevati.runtime._wrap import wrap_client  # noqa: PLC0415

        return cast("_Client", wrap_client(self, client))

    def pause_for_input(self, prompt: str = "") -> None:
        """Move the worker to WAITING_FOR_INPUT; turns are refused until :meth:`provide_input`."""
        self._require_running()
        self._transition(AgentStatus.WAITING_FOR_INPUT, prompt or None)
        self._emit(EventName.INPUT_REQUESTED, detail=prompt or None)

    def provide_input(self, detail: str = "") -> None:
        """Move the worker from WAITING_FOR_INPUT back to RUNNING."""
        worker = self._require_worker()
        if worker.status is not AgentStatus.WAITING_FOR_INPUT:
            raise SessionStateError(
                f"session {self.id} is {worker.status.value}, not waiting for input"
            )
        self._transition(AgentStatus.RUNNING, detail or None)
        self._emit(EventName.INPUT_PROVIDED, detail=detail or None)

    def handoff_to(
        self, role: str, reason: str, context: Mapping[str, object] | None = None
    ) -> Handoff:
        """Complete this worker and register one for ``role``; return the :class:`Handoff`.

        The session accepts no more turns afterwards; the new worker (IDLE) is
        in the orchestrator's registry for whoever picks the work up.
        """
        worker = self._require_running()
        target = self._orch.registry.create(
            role=role, phase=self._orch.phase, project_id=self._orch.project_id
        )
        handoff = Handoff(
            from_worker_id=worker.id,
            to_worker_id=target.id,
            from_role=worker.role,
            to_role=role,
            reason=reason,
            context=dict(context or {}),
            timestamp=self._orch.wall_clock(),
        )
        self._transition(AgentStatus.COMPLETED, f"handoff to {role}: {reason}")
        self._handoff = handoff
        self._emit(
            EventName.HANDOFF,
            detail=reason,
            data={"to_role": role, "to_worker_id": target.id},
        )
        return handoff

    def policy_context(self, **facts: Any) -> PhaseContext:
        """Build a :class:`PhaseContext` from this session's facts, overridden by ``facts``.

        The session supplies ``phase``, ``cost_usd``, ``failed_roles``,
        ``failures``, ``retries_exhausted``, ``timed_out``, when the
        worker completed, ``completed_roles``, and with ``governance`` its
        meter as ``extra["governance"]`` (what the governance conditions read).
        """
        with self._lock:
            failures = {AgentFailureClass(k): v for k, v in self._failures.items()}
            retries_exhausted = self._retries_exhausted
            timed_out = self._timed_out
        role = self._orch.role
        status = None if self.worker is None else self.worker.status
        base: dict[str, Any] = {
            "phase": self._orch.phase,
            "cost_usd": self.tracker.total_cost(),
            "failed_roles": frozenset({role}) if status is AgentStatus.FAILED or failures else (),
            "completed_roles": frozenset({role}) if status is AgentStatus.COMPLETED else (),
            "all_roles": frozenset({role}),
            "failures": failures,
            "retries_exhausted": retries_exhausted,
            "timed_out": timed_out,
        }
        if self._orch.quality_gate is not None:
            base["gate_required"] = self._orch.quality_gate.required
        if self.governance is not None:
            base["extra"] = {GOVERNANCE_KEY: self.governance, **facts.pop("extra", {})}
        base.update(facts)
        return PhaseContext(**base)

    def evaluate_policy(
        self, engine: PolicyEngine | None = None, **facts: Any
    ) -> list[PolicyActionData]:
        """Evaluate the policy engine against :meth:`policy_context` and return the actions."""
        engine = engine or self._orch.policy_engine
        if engine is None:
            raise SessionStateError("no policy engine: pass policy_engine= to the Orchestrator")
        actions = engine.evaluate(self.policy_context(**facts))
        self._emit(
            EventName.POLICY_EVALUATED,
            data={"actions": [str(a.action.value) for a in actions]},
        )
        return actions

    def evaluate_gate(self, observed: QualityLevel | str | int) -> QualityGateOutcome:
        """Judge ``observed`` against the orchestrator's quality gate and record it."""
        gate = self._orch.quality_gate
        if gate is None:
            raise SessionStateError("no quality gate: pass quality_gate= to the Orchestrator")
        outcome = gate.evaluate(observed)
        self._emit(EventName.GATE_EVALUATED, data=outcome.to_dict())
        return outcome

    @property
    def status(self) -> AgentStatus | None:
        """The worker's status, or ``None`` before the session starts."""
        return None if self.worker is None else self.worker.status

    def events(self, last: int | None = None) -> list[AgentEvent]:
        """Return the kept events, oldest first (a ring buffer of ``event_capacity``)."""
        if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 0):
            raise InvalidValueError(f"last must be an int >= 0 or None, got {last!r}")
        entries = list(self._log)
        if last is not None:
            entries = entries[max(0, len(entries) - last) :] if last else []
        return [self._built(entry) for entry in entries]

    def summary(self, *, last_events: int = DEFAULT_LAST_EVENTS) -> dict[str, object]:
        """Return a JSON-serialisable summary computed from running aggregates."""
        with self._lock:
            failures = dict(self._failures)
            counts = dict(self._event_counts)
            if self._turns_completed:
                counts[_TURN_COMPLETED] = self._turns_completed
            turns = self._turns
            tool_calls = self._tool_calls
            no_usage = self._turns_without_usage
            retries = self._retries
            exhausted = self._retries_exhausted
            budget_warnings = self._budget_warnings
            outcome = self._outcome
            failure_class = self._failure_class
            written = self._written
        end = self._ended_at if self._ended_at is not None else self._orch.clock()
        duration = None if self._started_at is None else end - self._started_at
        usage = self.tracker.summary()
        return {
            "session_id": self.id,
            "role": self._orch.role,
            "phase": self._orch.phase,
            "project_id": self._orch.project_id,
            "outcome": outcome,
            "failure_class": None if failure_class is None else failure_class.value,
            "worker": None if self.worker is None else self.worker.to_dict(),
            "duration_seconds": duration,
            "turns": turns,
            "turns_without_usage": no_usage,
            "tool_calls": tool_calls,
            "cost_usd": str(self.tracker.total_cost()),
            "cost": self.tracker.format_cost(),
            "budget_usd": None if self._orch.budget_usd is None else str(self._orch.budget_usd),
            "budget_warnings": budget_warnings,
            "usage": usage,
            "failures": failures,
            "recovery": {
                "retries": retries,
                "retries_exhausted": exhausted,
                "max_total_retries": self._orch.max_total_retries,
            },
            "event_counts": counts,
            "events_dropped": max(0, written - self._orch.event_capacity),
            "sink_failures": self._orch.sinks.failure_count,
            "handoff": None if self._handoff is None else self._handoff.to_dict(),
            "last_events": [e.to_dict() for e in self.events(last_events)],
        }

    def _start(self) -> None:
        with self._lock:
            claimed, self._claimed = self._claimed, True
        if claimed:
            raise SessionStateError(
                f"session {self.id} was already started: a session is entered once"
            )
        orch = self._orch
        self.worker = orch.registry.create(
            role=orch.role, phase=orch.phase, project_id=orch.project_id
        )
        self._started_at = orch.clock()
        self._outcome = "running"
        self._emit(EventName.SESSION_STARTED, data=dict(self.metadata))
        if orch.circuit_breaker is not None:
            orch.circuit_breaker.add_listener(self._on_breaker_change)
        for store in _stores(orch):
            store.add_listener(self._on_store_event)
        try:
            self._transition(AgentStatus.INITIALIZING, None)
            self._transition(AgentStatus.RUNNING, None)
        except BaseException:
            self._outcome = "failed"
            raise
        if self.thread_id is not None:
            self._resume_thread(self.thread_id)

    def _resume_thread(self, thread: str) -> None:
        """Go on from the thread's last checkpoint, if it has one (entered sessions only)."""
        saver = self._orch.checkpoints
        assert saver is not None
        latest = saver.latest(thread)
        pending = saver.pending_turn(thread)
        if latest is not None:
            restore(self, latest.runtime_state)
            with self._lock:
                self._thread_state = latest.caller_state
                self._step = latest.step
        step = self._step
        rerun = None
        if pending is not None and pending.turn_key == turn_key(thread, step + 1):
            rerun = pending.turn_key  # started before the crash, never committed: runs again
        if latest is not None or rerun is not None:
            self._emit(
                EventName.SESSION_RESUMED,
                detail=f"thread {thread} at step {step}"
                + ("" if rerun is None else f"; step {step + 1} runs again"),
                data={"thread_id": thread, "step": step, "rerun": rerun},
            )

    def _finish(self, exc: BaseException | None) -> None:
        worker = self.worker
        if worker is None:
            return
        if exc is None and self._breach is not None:  # caught by the caller: still a failure
            exc = self._breach
        if self._orch.circuit_breaker is not None:
            self._orch.circuit_breaker.remove_listener(self._on_breaker_change)
        for store in _stores(self._orch):
            store.remove_listener(self._on_store_event)
        self._ended_at = self._orch.clock()
        data: dict[str, object] = {
            "duration_seconds": self._ended_at - (self._started_at or self._ended_at),
            "cost_usd": str(self.tracker.total_cost()),
            "turns": self._turns,
        }
        if exc is None:
            self._outcome = "completed"
            if worker.status is AgentStatus.WAITING_FOR_INPUT:
                self._transition(AgentStatus.RUNNING, "session ended while waiting for input")
            if not worker.is_terminal:
                self._transition(AgentStatus.COMPLETED, None)
            self._emit(EventName.SESSION_COMPLETED, data=data)
        elif _cancelled(exc):
            self._outcome = "cancelled"
            self._failure_class = AgentFailureClass.CANCELLED
            if not worker.is_terminal:
                self._transition(AgentStatus.CANCELLED, type(exc).__name__)
            self._emit(
                EventName.SESSION_CANCELLED, failure_class=AgentFailureClass.CANCELLED, data=data
            )
        else:
            failure = failure_class_of(exc)
            self._outcome = "failed"
            self._failure_class = failure
            if not worker.is_terminal:
                self._transition(AgentStatus.FAILED, f"{failure.value}: {type(exc).__name__}")
            data["error_type"] = type(exc).__name__
            self._emit(EventName.SESSION_FAILED, failure_class=failure, detail=str(exc), data=data)
        if self._orch._own_registry:
            self._orch.registry.remove(worker.id)

    def _begin_tool(
        self, name: str, args: tuple[object, ...], kwargs: Mapping[str, object]
    ) -> ToolCall:
        """Make the call the hooks see (permission already given by :meth:`_gate`)."""
        if self.thread_id is not None and not self._step_begun:
            self._begin_step()
        meter = self.governance
        if meter is not None:
            try:
                meter.before_tool(name)
            except GovernanceBreachedError as breach:
                raise self._governance_breached(breach) from None
        call = ToolCall(
            name=name,
            args=args,
            kwargs=dict(kwargs),
            role=self._orch.role,
            phase=self._orch.phase,
            session_id=self.id,
            emit=self._hook_emit,
        )
        call = self._replaced_by_hooks("before_tool", call, ToolCall)
        with self._lock:
            self._tool_calls += 1
        return call

    def _tool_succeeded(self, call: ToolCall, result: _T, duration: float) -> _T:
        self._emit(
            EventName.TOOL_COMPLETED,
            data={"tool": call.name, "duration_seconds": duration},
        )
        for hook in self._orch._points["after_tool"]:
            replaced = self._run_hook(hook, "after_tool", hook.after_tool, call, result)
            if replaced is not None:
                result = replaced
        return result

    def _tool_failed(self, call: ToolCall, exc: BaseException, duration: float) -> None:
        failure = AgentFailureClass.CANCELLED if _cancelled(exc) else AgentFailureClass.TOOL_ERROR
        self._record_failure(failure)
        self._emit(
            EventName.TOOL_FAILED,
            failure_class=failure,
            detail=_short(exc),
            data={
                "tool": call.name,
                "duration_seconds": duration,
                "error_type": type(exc).__name__,
            },
        )


def _stores(orch: Orchestrator) -> list[RedisStore]:
    """Return the shared stores the orchestrator's primitives keep their state in, once each."""
    found: list[RedisStore] = []
    for primitive in (orch.budget, orch.circuit_breaker, orch.rate_limiter):
        store = None if primitive is None else primitive.store
        if store is not None and all(store is not seen for seen in found):
            found.append(store)
    return found


def _memory_or_none(memory: object) -> ConversationMemory | None:
    """Check ``memory=`` is a ConversationMemory (imported only when one is given)."""
    if memory is None:
        return None
    from techrevati.runtime.memory import ConversationMemory  # noqa: PLC0415

    if not isinstance(memory, ConversationMemory):
        raise InvalidValueError(f"memory must be a ConversationMemory or None, got {memory!r}")
    return memory


def _saver_or_none(saver: object) -> CheckpointSaver | None:
    """Check ``checkpoints=`` is a CheckpointSaver (its module imported only when one is given)."""
    if saver is None:
        return None
    from techrevati.runtime.checkpoints import CheckpointSaver  # noqa: PLC0415

    if not isinstance(saver, CheckpointSaver):
        raise InvalidValueError(
            f"checkpoints must be a CheckpointSaver (InMemorySaver, SqliteSaver), got {saver!r}"
        )
    return saver
