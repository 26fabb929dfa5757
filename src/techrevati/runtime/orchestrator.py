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

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, TypeVar

from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._runner import DeadlineExceededError, DeadlineRunner, default_runner
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import (
    DEFAULT_RING_CAPACITY,
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    RingBufferSink,
    UsageRecord,
    UsageSink,
)
from techrevati.runtime.hooks import (
    BaseHook,
    GuardrailViolatedError,
    Hook,
    ModelCall,
    ToolCall,
)
from techrevati.runtime.lifecycle import AgentRegistry, AgentStatus, AgentWorker
from techrevati.runtime.permissions import (
    PermissionDeniedError,
    PermissionEnforcer,
    PermissionPolicy,
)
from techrevati.runtime.policy_engine import PhaseContext, PolicyActionData, PolicyEngine
from techrevati.runtime.quality_gate import QualityGate, QualityGateOutcome, QualityLevel
from techrevati.runtime.retry_policy import (
    RecoveryContext,
    RecoveryStep,
    RetryPolicy,
    attempt_recovery,
    failure_class_for,
    inspect_exception,
    is_testing,
)
from techrevati.runtime.sinks import SinkFanout
from techrevati.runtime.usage import (
    Budget,
    BudgetExceededError,
    BudgetReservation,
    UsageLimits,
    UsageSnapshot,
    UsageTracker,
)

__all__ = [
    "DEFAULT_LAST_EVENTS",
    "UNNAMED_MODEL",
    "Handoff",
    "MaxIterationsExceededError",
    "Orchestrator",
    "Session",
    "SessionStateError",
    "TurnTimeoutError",
]

DEFAULT_LAST_EVENTS: Final = 20
"""How many of the newest events :meth:`Session.summary` includes."""

UNNAMED_MODEL: Final = "unnamed-model"
"""The model name a turn is recorded under when ``run_turn`` is given none."""

_T = TypeVar("_T")
_log = logging.getLogger("techrevati.runtime.orchestrator")


class TurnTimeoutError(TechrevatiError, TimeoutError):
    """A turn did not finish within its ``timeout``.

    For sync turns the callable keeps running on its worker thread (a thread
    cannot be killed); its result is discarded.
    """

    def __init__(self, timeout: float, model: str) -> None:
        self.timeout = timeout
        self.model = model
        super().__init__(f"turn on model {model!r} did not finish within {timeout} seconds")


class MaxIterationsExceededError(TechrevatiError):
    """The session already ran ``max_iterations`` turns; no further turn is started."""

    def __init__(self, max_iterations: int) -> None:
        self.max_iterations = max_iterations
        super().__init__(f"max_iterations={max_iterations} reached; turn refused")


class SessionStateError(TechrevatiError, RuntimeError):
    """The session cannot do that in its current state (closed, waiting for input, ...)."""


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
    that uses it (a project-wide cap).
    """

    def __init__(
        self,
        role: str,
        phase: str,
        project_id: str | int | None = None,
        *,
        registry: AgentRegistry | None = None,
        permissions: PermissionEnforcer | PermissionPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        policy_engine: PolicyEngine | None = None,
        quality_gate: QualityGate | None = None,
        budget_usd: Decimal | float | int | str | None = None,
        budget: Budget | None = None,
        enforce_budget: bool = True,
        max_iterations: int | None = None,
        retry: RetryPolicy | None = None,
        hooks: Iterable[Hook | BaseHook] = (),
        sinks: Iterable[EventSink | UsageSink] = (),
        clock: Clock | None = None,
        wall_clock: WallClock | None = None,
        sleep: Callable[[float], None] | None = None,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
        event_capacity: int = DEFAULT_RING_CAPACITY,
        runner: DeadlineRunner | None = None,
    ) -> None:
        if not isinstance(role, str) or not role.strip():
            raise InvalidValueError(f"role must be a non-empty str, got {role!r}")
        if not isinstance(phase, str) or not phase.strip():
            raise InvalidValueError(f"phase must be a non-empty str, got {phase!r}")
        if max_iterations is not None and (
            not isinstance(max_iterations, int)
            or isinstance(max_iterations, bool)
            or max_iterations < 1
        ):
            raise InvalidValueError(f"max_iterations must be an int >= 1, got {max_iterations!r}")
        self.role = role
        self.phase = phase
        self.project_id = project_id
        self._own_registry = registry is None
        self.registry = AgentRegistry() if registry is None else registry
        if isinstance(permissions, PermissionPolicy):
            permissions = PermissionEnforcer(permissions)
        self.permissions = permissions
        self.circuit_breaker = circuit_breaker
        self.policy_engine = policy_engine
        self.quality_gate = quality_gate
        self.budget_usd = None if budget_usd is None else UsageLimits(max_usd=budget_usd).max_usd
        self.budget = budget
        self.enforce_budget = enforce_budget
        self.max_iterations = max_iterations
        self.retry = retry
        self.clock: Clock = time.monotonic if clock is None else clock
        self.wall_clock: WallClock = utc_now if wall_clock is None else wall_clock
        self._sleep = time.sleep if sleep is None else sleep
        self._async_sleep = asyncio.sleep if async_sleep is None else async_sleep
        self.event_capacity = event_capacity
        self._runner = runner
        self.hooks: tuple[Hook | BaseHook, ...] = tuple(hooks)
        self._points = _hook_table(self.hooks)
        self._model_hooks = bool(self._points["before_model"] or self._points["after_model"])
        self.sinks = SinkFanout(list(sinks))

    def session(self, *, metadata: Mapping[str, object] | None = None) -> Session:
        """Return a new session; use it as ``with orch.session() as session:``."""
        return Session(self, metadata=metadata)

    def asession(self, *, metadata: Mapping[str, object] | None = None) -> Session:
        """Return a new session; use it as ``async with orch.asession() as session:``."""
        return Session(self, metadata=metadata)

    def _runner_for_timeouts(self) -> DeadlineRunner:
        if self._runner is None:
            self._runner = default_runner()
        return self._runner


class _Turn:
    """The mutable state of one run_turn across its attempts."""

    __slots__ = (
        "attempt",
        "call",
        "estimate",
        "model",
        "models",
        "reservations",
        "started",
        "timeout",
        "usage",
    )

    def __init__(
        self,
        *,
        model: str,
        models: tuple[str, ...],
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        started: float,
    ) -> None:
        self.model = model
        self.models = models
        self.usage = usage
        self.estimate = estimate
        self.timeout = timeout
        self.started = started
        self.attempt = 0
        self.reservations: list[BudgetReservation] = []
        self.call: ModelCall | None = None


class Session:
    """One agent task: a worker, a usage tracker, a recovery context and an event log.

    Use as ``with orch.session() as session:`` or ``async with orch.asession()``.
    A session is meant for one task at a time; its counters are still guarded
    by a lock, so a tool called from another thread cannot corrupt them.
    :meth:`summary` keeps working after the block ends.
    """

    def __init__(self, orch: Orchestrator, *, metadata: Mapping[str, object] | None = None) -> None:
        self._orch = orch
        self.id = uuid.uuid4().hex
        self.metadata: Mapping[str, object] = dict(metadata or {})
        self.tracker = UsageTracker()
        self.recovery = RecoveryContext() if orch.retry is None else orch.retry.new_context()
        self.worker: AgentWorker | None = None
        self._budget = None if orch.budget_usd is None else Budget(max_usd=orch.budget_usd)
        self._ring = RingBufferSink(orch.event_capacity)
        self._lock = threading.Lock()
        self._event_counts: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._tool_calls = 0
        self._turns = 0
        self._turns_without_usage = 0
        self._retries = 0
        self._retries_exhausted = False
        self._timed_out = False
        self._budget_warnings = 0
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._outcome: str = "not_started"
        self._failure_class: AgentFailureClass | None = None
        self._handoff: Handoff | None = None

    # -- context management -------------------------------------------------

    def __enter__(self) -> Session:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    async def __aenter__(self) -> Session:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    # -- model turns --------------------------------------------------------

    def run_turn(
        self,
        fn: Callable[..., _T],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
    ) -> tuple[_T, UsageSnapshot]:
        """Call ``fn`` as one model turn and return ``(result, usage)``.

        ``usage`` is charged when given; otherwise it is read from the result
        (``UsageSnapshot.from_response``) or counted as zero and flagged. If
        ``fn`` accepts a ``model`` keyword it receives the model to use, which
        changes to the next of ``fallback_models`` when a retry recipe says
        SWITCH_PROVIDER.
        """
        turn = self._begin_turn(
            model=model,
            usage=usage,
            estimate=estimate,
            timeout=timeout,
            fallback_models=fallback_models,
        )
        wants_model = _accepts_model(fn)
        while True:
            self._before_attempt(turn)
            started = self._orch.clock()
            try:
                result = self._call_sync(fn, turn, wants_model)
            except BaseException as exc:
                delay = self._attempt_failed(turn, exc, self._orch.clock() - started)
                if delay is None:
                    raise
                if delay > 0:
                    self._orch._sleep(delay)
                continue
            return self._attempt_succeeded(turn, result, self._orch.clock() - started)

    async def arun_turn(
        self,
        fn: Callable[..., Awaitable[_T]],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
    ) -> tuple[_T, UsageSnapshot]:
        """Async twin of :meth:`run_turn`: ``fn`` returns an awaitable."""
        turn = self._begin_turn(
            model=model,
            usage=usage,
            estimate=estimate,
            timeout=timeout,
            fallback_models=fallback_models,
        )
        wants_model = _accepts_model(fn)
        while True:
            self._before_attempt(turn)
            started = self._orch.clock()
            try:
                result = await self._call_async(fn, turn, wants_model)
            except BaseException as exc:
                delay = self._attempt_failed(turn, exc, self._orch.clock() - started)
                if delay is None:
                    raise
                if delay > 0:
                    await self._orch._async_sleep(delay)
                continue
            return self._attempt_succeeded(turn, result, self._orch.clock() - started)

    # -- tools --------------------------------------------------------------

    def run_tool(self, name: str, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """Check the role may use tool ``name``, run hooks, then ``fn(*args, **kwargs)``.

        Raises :class:`~techrevati.runtime.permissions.PermissionDeniedError`
        (carrying the outcome) when denied; the tool's own exceptions pass
        through unchanged and are recorded as ``tool_error``.
        """
        call = self._begin_tool(name, args, kwargs)
        started = self._orch.clock()
        try:
            result = fn(*call.args, **call.kwargs)
        except BaseException as exc:
            self._tool_failed(call, exc, self._orch.clock() - started)
            raise
        return self._tool_succeeded(call, result, self._orch.clock() - started)

    async def arun_tool(
        self, name: str, fn: Callable[..., Awaitable[_T]], *args: object, **kwargs: object
    ) -> _T:
        """Async twin of :meth:`run_tool`: ``fn`` returns an awaitable."""
        call = self._begin_tool(name, args, kwargs)
        started = self._orch.clock()
        try:
            result = await fn(*call.args, **call.kwargs)
        except BaseException as exc:
            self._tool_failed(call, exc, self._orch.clock() - started)
            raise
        return self._tool_succeeded(call, result, self._orch.clock() - started)

    # -- input, handoff, policy, gate --------------------------------------

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
        ``failures``, ``retries_exhausted``, ``timed_out`` and, when the
        worker completed, ``completed_roles``.
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

    # -- reading ------------------------------------------------------------

    @property
    def status(self) -> AgentStatus | None:
        """The worker's status, or ``None`` before the session starts."""
        return None if self.worker is None else self.worker.status

    def events(self, last: int | None = None) -> list[AgentEvent]:
        """Return the kept events, oldest first (a ring buffer of ``event_capacity``)."""
        return self._ring.events(last)

    def summary(self, *, last_events: int = DEFAULT_LAST_EVENTS) -> dict[str, object]:
        """Return a JSON-serialisable summary computed from running aggregates."""
        with self._lock:
            failures = dict(self._failures)
            counts = dict(self._event_counts)
            turns = self._turns
            tool_calls = self._tool_calls
            no_usage = self._turns_without_usage
            retries = self._retries
            exhausted = self._retries_exhausted
            budget_warnings = self._budget_warnings
            outcome = self._outcome
            failure_class = self._failure_class
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
            "recovery": {"retries": retries, "retries_exhausted": exhausted},
            "event_counts": counts,
            "events_dropped": self._ring.dropped,
            "sink_failures": self._orch.sinks.failure_count,
            "handoff": None if self._handoff is None else self._handoff.to_dict(),
            "last_events": [e.to_dict() for e in self._ring.events(last_events)],
        }

    # -- lifecycle internals -------------------------------------------------

    def _start(self) -> None:
        if self.worker is not None:
            raise SessionStateError(f"session {self.id} was already started")
        orch = self._orch
        self.worker = orch.registry.create(
            role=orch.role, phase=orch.phase, project_id=orch.project_id
        )
        self._started_at = orch.clock()
        self._outcome = "running"
        self._emit(EventName.SESSION_STARTED, data=dict(self.metadata))
        if orch.circuit_breaker is not None:
            orch.circuit_breaker.add_listener(self._on_breaker_change)
        try:
            self._transition(AgentStatus.INITIALIZING, None)
            self._transition(AgentStatus.RUNNING, None)
        except BaseException:
            self._outcome = "failed"
            raise

    def _finish(self, exc: BaseException | None) -> None:
        worker = self.worker
        if worker is None:
            return
        if self._orch.circuit_breaker is not None:
            self._orch.circuit_breaker.remove_listener(self._on_breaker_change)
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
        elif isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
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

    def _transition(self, status: AgentStatus, detail: str | None) -> None:
        worker = self._require_worker()
        worker.transition(status, detail)
        self._emit(EventName.STATUS_CHANGED, detail=detail, data={"to": status.value})

    def _require_worker(self) -> AgentWorker:
        if self.worker is None:
            raise SessionStateError(
                f"session {self.id} is not started: use it as 'with orch.session() as s:'"
            )
        return self.worker

    def _require_running(self) -> AgentWorker:
        worker = self._require_worker()
        if worker.status is not AgentStatus.RUNNING:
            raise SessionStateError(
                f"session {self.id} is {worker.status.value}; turns need it RUNNING"
            )
        return worker

    # -- turn internals (shared by run_turn and arun_turn) --------------------

    def _begin_turn(
        self,
        *,
        model: str,
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        fallback_models: Sequence[str],
    ) -> _Turn:
        self._require_running()
        model = model or UNNAMED_MODEL
        if timeout is not None and not timeout > 0:
            raise InvalidValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        limit = self._orch.max_iterations
        with self._lock:
            if limit is not None and self._turns >= limit:
                refused = True
            else:
                refused = False
                self._turns += 1
            turn_number = self._turns
        if refused:
            assert limit is not None
            self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
            raise MaxIterationsExceededError(limit)
        turn = _Turn(
            model=model,
            models=tuple(fallback_models),
            usage=usage,
            estimate=estimate,
            timeout=timeout,
            started=self._orch.clock(),
        )
        if self._orch._model_hooks:
            # Only hooks look at the ModelCall; without them it is not built.
            turn.call = ModelCall(
                model=model,
                turn=turn_number,
                attempt=1,
                role=self._orch.role,
                phase=self._orch.phase,
                session_id=self.id,
            )
        return turn

    def _before_attempt(self, turn: _Turn) -> None:
        """Reserve budget and run before_model hooks for the next attempt."""
        turn.attempt += 1
        call = turn.call
        if call is None:
            self._reserve(turn)
            return
        if call.attempt != turn.attempt or call.model != turn.model:
            call = ModelCall(
                model=turn.model,
                turn=call.turn,
                attempt=turn.attempt,
                role=call.role,
                phase=call.phase,
                session_id=call.session_id,
                metadata=call.metadata,
            )
        for hook in self._orch._points["before_model"]:
            replaced = self._run_hook(hook, "before_model", hook.before_model, call)
            if replaced is not None:
                if not isinstance(replaced, ModelCall):
                    raise GuardrailViolatedError(
                        f"before_model returned {type(replaced).__name__}, not ModelCall",
                        hook=type(hook).__name__,
                        point="before_model",
                    )
                call = replaced
        turn.call = call
        turn.model = call.model
        self._reserve(turn)

    def _reserve(self, turn: _Turn) -> None:
        for budget in (self._budget, self._orch.budget):
            if budget is None:
                continue
            try:
                turn.reservations.append(budget.reserve(turn.model, turn.estimate))
            except BudgetExceededError as exc:
                if self._orch.enforce_budget:
                    self._release(turn)
                    self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
                    self._emit(
                        EventName.BUDGET_EXCEEDED,
                        failure_class=AgentFailureClass.BUDGET_EXCEEDED,
                        detail=str(exc),
                        data={"model": turn.model, "enforced": True},
                    )
                    raise
                with self._lock:
                    self._budget_warnings += 1
                self._emit(
                    EventName.BUDGET_EXCEEDED,
                    detail=str(exc),
                    data={"model": turn.model, "enforced": False},
                )
                _log.warning(
                    "budget exceeded (not enforced): %s",
                    exc,
                    extra=self._log_extra(model=turn.model),
                )

    @staticmethod
    def _release(turn: _Turn) -> None:
        reservations, turn.reservations = turn.reservations, []
        for reservation in reservations:
            reservation.release()

    def _call_sync(self, fn: Callable[..., _T], turn: _Turn, wants_model: bool) -> _T:
        target: Callable[[], _T] = (lambda: fn(model=turn.model)) if wants_model else fn
        breaker = self._orch.circuit_breaker
        if breaker is not None:
            inner = target

            def target() -> _T:
                return breaker.call(inner)

        if turn.timeout is None:
            return target()
        try:
            return self._orch._runner_for_timeouts().run(target, turn.timeout)
        except DeadlineExceededError:
            raise TurnTimeoutError(turn.timeout, turn.model) from None

    async def _call_async(
        self, fn: Callable[..., Awaitable[_T]], turn: _Turn, wants_model: bool
    ) -> _T:
        def make() -> Awaitable[_T]:
            return fn(model=turn.model) if wants_model else fn()

        breaker = self._orch.circuit_breaker

        async def guarded() -> _T:
            if breaker is None:
                return await make()
            return await breaker.acall(make)

        if turn.timeout is None:
            return await guarded()
        deadline = asyncio.timeout(turn.timeout)
        try:
            async with deadline:
                return await guarded()
        except TimeoutError:
            if deadline.expired():
                raise TurnTimeoutError(turn.timeout, turn.model) from None
            raise

    def _attempt_succeeded(
        self, turn: _Turn, result: _T, duration: float
    ) -> tuple[_T, UsageSnapshot]:
        usage = turn.usage
        flagged = False
        if usage is None:
            usage = _usage_from(result)
            if usage is None:
                usage = UsageSnapshot()
                flagged = True
        cost = self.tracker.record_turn(turn.model, usage)
        reservations, turn.reservations = turn.reservations, []
        for reservation in reservations:
            reservation.settle(usage)
        if flagged:
            with self._lock:
                self._turns_without_usage += 1
        self._emit(
            EventName.TURN_COMPLETED,
            data={
                "model": turn.model,
                "attempt": turn.attempt,
                "duration_seconds": duration,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "cost_usd": _usd_text(cost.cost_femto_usd),
                "usage_unknown": flagged,
            },
        )
        if self._orch.sinks.has_usage_sinks:
            self._orch.sinks.write_usage(
                UsageRecord(
                    model=turn.model,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost_usd=cost.cost_usd,
                    priced=cost.priced,
                    duration_seconds=duration,
                    role=self._orch.role,
                    phase=self._orch.phase,
                    session_id=self.id,
                    worker_id=self._require_worker().id,
                    project_id=self._orch.project_id,
                    timestamp=self._orch.wall_clock(),
                )
            )
        for hook in self._orch._points["after_model"]:
            assert turn.call is not None
            replaced = self._run_hook(hook, "after_model", hook.after_model, turn.call, result)
            if replaced is not None:
                result = replaced
        return result, usage

    def _attempt_failed(self, turn: _Turn, exc: BaseException, duration: float) -> float | None:
        """Record a failed attempt; return the delay before retrying, or None to re-raise."""
        self._release(turn)
        if isinstance(exc, GuardrailViolatedError):
            return None
        failure = failure_class_of(exc)
        self._record_failure(failure)
        if isinstance(exc, TurnTimeoutError):
            with self._lock:
                self._timed_out = True
        name = EventName.TURN_FAILED
        data: dict[str, object] = {
            "model": turn.model,
            "attempt": turn.attempt,
            "duration_seconds": duration,
            "error_type": type(exc).__name__,
        }
        if isinstance(exc, CircuitOpenError):
            name = EventName.BREAKER_REJECTED
            data["retry_after"] = exc.retry_after
        self._emit(name, failure_class=failure, detail=_short(exc), data=data)
        policy = self._orch.retry
        if policy is None or not _retryable_by_policy(exc):
            return None
        assert isinstance(exc, Exception)
        info = inspect_exception(exc)
        if turn.attempt >= policy.attempt_limit():
            with self._lock:
                self._retries_exhausted = True
            return None
        recovery = attempt_recovery(info.scenario, self.recovery, failure=info, policy=policy)
        if recovery.outcome != "recovered":
            # Escalation, or a partial recovery whose steps (reduce the
            # context, refresh credentials) only the caller can carry out.
            if recovery.outcome == "escalation_required" and info.retryable:
                with self._lock:
                    self._retries_exhausted = True
            return None
        if RecoveryStep.SWITCH_PROVIDER in recovery.recovered_steps and turn.models:
            previous = turn.model
            turn.model, turn.models = turn.models[0], turn.models[1:]
            self._emit(
                EventName.MODEL_SWITCHED,
                detail=f"{previous} -> {turn.model}",
                data={"from_model": previous, "model": turn.model},
            )
        delay = 0.0 if is_testing() else recovery.delay_seconds
        with self._lock:
            self._retries += 1
        self._emit(
            EventName.TURN_RETRIED,
            failure_class=failure,
            detail=recovery.reason,
            data={
                "model": turn.model,
                "attempt": turn.attempt,
                "delay_seconds": delay,
                "scenario": info.scenario.value,
            },
        )
        return delay

    # -- tool internals -------------------------------------------------------

    def _begin_tool(
        self, name: str, args: tuple[object, ...], kwargs: Mapping[str, object]
    ) -> ToolCall:
        self._require_running()
        enforcer = self._orch.permissions
        if enforcer is not None:
            outcome = enforcer.check(self._orch.role, name)
            if not outcome.allowed:
                self._record_failure(AgentFailureClass.PERMISSION_DENIED)
                self._emit(
                    EventName.TOOL_DENIED,
                    failure_class=AgentFailureClass.PERMISSION_DENIED,
                    detail=outcome.reason,
                    data={"tool": name, "rule": outcome.rule},
                )
                raise PermissionDeniedError(outcome)
        call = ToolCall(
            name=name,
            args=args,
            kwargs=dict(kwargs),
            role=self._orch.role,
            phase=self._orch.phase,
            session_id=self.id,
        )
        for hook in self._orch._points["before_tool"]:
            replaced = self._run_hook(hook, "before_tool", hook.before_tool, call)
            if replaced is not None:
                if not isinstance(replaced, ToolCall):
                    raise GuardrailViolatedError(
                        f"before_tool returned {type(replaced).__name__}, not ToolCall",
                        hook=type(hook).__name__,
                        point="before_tool",
                    )
                call = replaced
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
        failure = (
            AgentFailureClass.CANCELLED
            if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
            else AgentFailureClass.TOOL_ERROR
        )
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

    # -- shared helpers -------------------------------------------------------

    def _run_hook(self, hook: object, point: str, method: Callable[..., _T], *args: object) -> _T:
        try:
            return method(*args)
        except GuardrailViolatedError as exc:
            error = exc
            if not error.hook:
                error = GuardrailViolatedError(exc.reason, hook=type(hook).__name__, point=point)
                error.__cause__ = exc
        except Exception as exc:
            error = GuardrailViolatedError(
                f"hook raised {type(exc).__name__}: {exc}", hook=type(hook).__name__, point=point
            )
            error.__cause__ = exc
        self._record_failure(AgentFailureClass.VALIDATION_ERROR)
        self._emit(
            EventName.HOOK_VETOED,
            failure_class=AgentFailureClass.VALIDATION_ERROR,
            detail=error.reason,
            data={"hook": error.hook, "point": error.point},
        )
        raise error

    def _on_breaker_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        self._emit(
            EventName.BREAKER_STATE_CHANGED,
            detail=f"{breaker.name}: {old} -> {new}",
            data={"breaker": breaker.name, "from_state": str(old), "to_state": str(new)},
        )

    def _record_failure(self, failure: AgentFailureClass) -> None:
        with self._lock:
            self._failures[failure.value] += 1

    def _emit(
        self,
        name: EventName,
        *,
        failure_class: AgentFailureClass | None = None,
        detail: str | None = None,
        data: Mapping[str, object] | None = None,
    ) -> None:
        worker = self.worker
        event = AgentEvent(
            name=name,
            role=self._orch.role,
            phase=self._orch.phase,
            status=None if worker is None else worker.status.value,
            failure_class=failure_class,
            detail=detail,
            data={} if data is None else data,
            timestamp=self._orch.wall_clock(),
            session_id=self.id,
            worker_id="" if worker is None else worker.id,
            project_id=self._orch.project_id,
        )
        self._ring.write_event(event)
        with self._lock:
            self._event_counts[name.value] += 1
        _log_event(event)
        self._orch.sinks.write_event(event)

    def _log_extra(self, **more: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "role": self._orch.role,
            "phase": self._orch.phase,
            "project_id": self._orch.project_id,
            "session_id": self.id,
        }
        extra.update(more)
        return extra


def _retryable_by_policy(exc: BaseException) -> bool:
    """Whether a retry policy may look at ``exc`` at all.

    Cancellation, the runtime's own refusals (budget, permissions, guardrails,
    an open breaker) and anything not an ``Exception`` are never retried; a
    turn timeout is.
    """
    if isinstance(exc, TurnTimeoutError):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, TechrevatiError)


def failure_class_of(exc: BaseException) -> AgentFailureClass:
    """Classify any exception a session sees into an :class:`AgentFailureClass`."""
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return AgentFailureClass.CANCELLED
    if isinstance(exc, (BudgetExceededError, MaxIterationsExceededError)):
        return AgentFailureClass.BUDGET_EXCEEDED
    if isinstance(exc, PermissionDeniedError):
        return AgentFailureClass.PERMISSION_DENIED
    if isinstance(exc, GuardrailViolatedError):
        return AgentFailureClass.VALIDATION_ERROR
    if isinstance(exc, CircuitOpenError):
        return AgentFailureClass.DEPENDENCY_FAILED
    if isinstance(exc, TurnTimeoutError):
        return AgentFailureClass.LLM_TIMEOUT
    if isinstance(exc, InvalidValueError):
        return AgentFailureClass.VALIDATION_ERROR
    if not isinstance(exc, Exception):
        return AgentFailureClass.UNKNOWN
    return failure_class_for(inspect_exception(exc).scenario)


_LEVEL_BY_NAME: Final[Mapping[str, int]] = {
    EventName.TURN_FAILED.value: logging.WARNING,
    EventName.TOOL_FAILED.value: logging.WARNING,
    EventName.TOOL_DENIED.value: logging.WARNING,
    EventName.HOOK_VETOED.value: logging.WARNING,
    EventName.BUDGET_EXCEEDED.value: logging.WARNING,
    EventName.BREAKER_STATE_CHANGED.value: logging.WARNING,
    EventName.BREAKER_REJECTED.value: logging.WARNING,
    EventName.SESSION_FAILED.value: logging.ERROR,
    EventName.SESSION_CANCELLED.value: logging.WARNING,
    EventName.TURN_COMPLETED.value: logging.DEBUG,
    EventName.STATUS_CHANGED.value: logging.DEBUG,
    EventName.TOOL_COMPLETED.value: logging.DEBUG,
}


def _log_event(event: AgentEvent) -> None:
    level = _LEVEL_BY_NAME.get(event.name, logging.INFO)
    if not _log.isEnabledFor(level):
        return
    data = event.data
    _log.log(
        level,
        "%s %s",
        event.name,
        event.detail or "",
        extra={
            "event": str(event.name),
            "role": event.role,
            "phase": event.phase,
            "project_id": event.project_id,
            "session_id": event.session_id,
            "worker_id": event.worker_id,
            "model": data.get("model"),
            "cost": data.get("cost_usd"),
            "failure_class": None if event.failure_class is None else event.failure_class.value,
        },
    )


def _hook_table(hooks: Sequence[object]) -> dict[str, tuple[Any, ...]]:
    """For each hook point, the hooks that really implement it (no-ops skipped)."""
    table: dict[str, tuple[Any, ...]] = {}
    for point in ("before_model", "after_model", "before_tool", "after_tool"):
        active = []
        for hook in hooks:
            method = getattr(type(hook), point, None)
            if method is None or method is getattr(BaseHook, point):
                continue
            active.append(hook)
        table[point] = tuple(active)
    return table


_MODEL_PARAM_CACHE: dict[object, bool] = {}


def _accepts_model(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` takes a ``model`` keyword argument (cached per code object)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(getattr(fn, "__func__", None), "__code__", None)
    if code is not None:
        cached = _MODEL_PARAM_CACHE.get(code)
        if cached is not None:
            return cached
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        result = "model" in names
        if len(_MODEL_PARAM_CACHE) < 4096:
            _MODEL_PARAM_CACHE[code] = result
        return result
    try:
        return "model" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _usage_from(result: object) -> UsageSnapshot | None:
    """Read usage from a model response when it carries one; ``None`` otherwise."""
    if result is None or isinstance(result, (str, bytes, int, float, bool)):
        return None
    try:
        return UsageSnapshot.from_response(result)
    except (TechrevatiError, ValueError, TypeError):
        return None


_FEMTO_PER_USD: Final = 10**15


def _usd_text(femto: int) -> str:
    """Format an exact amount of 1e-15 USD as a plain decimal string, fast."""
    whole, fraction = divmod(femto, _FEMTO_PER_USD)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:015d}".rstrip("0")


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
