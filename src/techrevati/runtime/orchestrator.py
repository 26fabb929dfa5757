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
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, TypeVar

from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._money import usd_text
from techrevati.runtime._responses import (
    EmptyResponseError,
    StreamResultError,
    aclose_refused,
    check_response,
    usage_from_exception,
    usage_from_result,
)
from techrevati.runtime._runner import DeadlineExceededError, DeadlineRunner, default_runner
from techrevati.runtime._validate import (
    callable_or_none,
    instance_or_none,
    int_at_least,
    non_empty_str,
    optional_int_at_least,
    seconds_or_none,
    strict_bool,
)
from techrevati.runtime.budget import Budget, BudgetExceededError, UsageLimits, _limit_error
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError
from techrevati.runtime.errors import InvalidValueError, TechrevatiError, TransientRuntimeError
from techrevati.runtime.events import (
    DEFAULT_RING_CAPACITY,
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    UsageRecord,
    UsageSink,
)
from techrevati.runtime.hooks import (
    HOOK_POINTS,
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
from techrevati.runtime.pricing import _cost_femto
from techrevati.runtime.quality_gate import QualityGate, QualityGateOutcome, QualityLevel
from techrevati.runtime.retry_policy import (
    FailureScenario,
    RecoveryContext,
    RecoveryStep,
    RetriesExhaustedError,
    RetryAttempt,
    RetryPolicy,
    RetryRun,
    failure_class_for,
    inspect_exception,
)
from techrevati.runtime.sinks import SinkFanout
from techrevati.runtime.usage import TurnCost, UsageSnapshot, UsageTracker

__all__ = [
    "DEFAULT_LAST_EVENTS",
    "UNNAMED_MODEL",
    "EmptyResponseError",
    "Handoff",
    "MaxIterationsExceededError",
    "Orchestrator",
    "Session",
    "SessionStateError",
    "StreamResultError",
    "TurnTimeoutError",
]

DEFAULT_LAST_EVENTS: Final = 20
"""How many of the newest events :meth:`Session.summary` includes."""

UNNAMED_MODEL: Final = "unnamed-model"
"""The model name a turn is recorded under when ``run_turn`` is given none."""

_T = TypeVar("_T")
_C = TypeVar("_C", ModelCall, ToolCall)
_log = logging.getLogger("techrevati.runtime.orchestrator")
_TURN_COMPLETED: Final = EventName.TURN_COMPLETED.value
_PLAIN_RESULTS: Final = frozenset({str, bytes, int, float, bool, type(None)})


class TurnTimeoutError(TransientRuntimeError, TimeoutError):
    """A turn did not finish within its ``timeout``.

    For sync turns the callable keeps running on its worker thread (a thread
    cannot be killed); its result, when it comes, is dropped. ``started`` is
    False when the call never began because every worker thread was still
    busy with earlier calls that outlived their deadlines. A retry policy
    treats it as ``llm_timeout``; a circuit breaker counts it as a failure.
    """

    scenario = "llm_timeout"

    def __init__(self, timeout: float, model: str, *, started: bool = True) -> None:
        self.timeout = timeout
        self.model = model
        self.started = started
        where = "" if started else " (no worker thread was free: earlier calls still hang)"
        super().__init__(f"turn on model {model!r} did not finish within {timeout} seconds{where}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (self.timeout, self.model, self.started))


def _rebuild_timeout(timeout: float, model: str, started: bool) -> TurnTimeoutError:
    return TurnTimeoutError(timeout, model, started=started)


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
    that uses it (a project-wide cap). Every argument is checked here, so a
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
        circuit_breaker: CircuitBreaker | None = None,
        policy_engine: PolicyEngine | None = None,
        quality_gate: QualityGate | None = None,
        budget_usd: Decimal | float | int | str | None = None,
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
        self.circuit_breaker = instance_or_none("circuit_breaker", circuit_breaker, CircuitBreaker)
        self.policy_engine = instance_or_none("policy_engine", policy_engine, PolicyEngine)
        self.quality_gate = instance_or_none("quality_gate", quality_gate, QualityGate)
        limits = None if budget_usd is None else UsageLimits(max_usd=budget_usd)
        self.budget_usd = None if limits is None else limits.max_usd
        self._budget_femto = None if limits is None else limits._max_femto
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
        ) or (self.retry.async_sleep if self.retry is not None else asyncio.sleep)
        self.event_capacity = int_at_least("event_capacity", event_capacity, 1)
        self._runner = instance_or_none("runner", runner, DeadlineRunner)
        self.hooks: tuple[Hook | BaseHook, ...] = _checked_hooks(hooks)
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
        "cap_held",
        "estimate",
        "holds",
        "model",
        "models",
        "read_usage",
        "run",
        "timeout",
        "unreserved",
        "usage",
    )

    def __init__(
        self,
        model: str,
        models: tuple[str, ...],
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
    ) -> None:
        self.model = model
        self.models = models
        self.usage = usage
        self.estimate = estimate
        self.timeout = timeout
        self.attempt = 0
        self.cap_held: int | None = None  # held on the session cap; None: nothing held
        # Held on shared budgets: (budget, model name, femto, tokens), each given back once.
        self.holds: list[tuple[Budget, str, int, int]] = []
        self.unreserved: list[Budget] = []  # budgets that refused, not enforced: charge after
        self.read_usage: UsageSnapshot | None = None
        self.call: ModelCall | None = None
        self.run: RetryRun | None = None


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
        policy = orch.retry
        self.recovery = RecoveryContext(
            recipes=None if policy is None else policy.recipes,
            max_total_attempts=orch.max_total_retries,
        )
        """Retries of the whole session: their counts, and ``max_total_retries`` as its cap."""
        self.worker: AgentWorker | None = None
        # The session's own cap (budget_usd) is kept in integer femto-dollars under the
        # session's lock, held and settled like a Budget's; the shared budget is a Budget.
        self._cap = orch._budget_femto
        self._cap_spent = 0
        self._cap_held = 0
        self._cap_expect: dict[str, int] = {}  # per model: its last actual cost
        self._budgets = () if orch.budget is None else (orch.budget,)
        # The kept events, newest last: AgentEvents, or a turn.completed kept as a
        # tuple and built only when read (the hot path's event; see _turn_done).
        self._log: deque[AgentEvent | tuple[Any, ...]] = deque(maxlen=orch.event_capacity)
        self._written = 0
        self._stamp_floats = orch.wall_clock is utc_now
        # Read once per session on every turn's path: the orchestrator's wiring is fixed.
        self._eager_events = orch.sinks.has_event_sinks
        self._usage_sinks = orch.sinks.has_usage_sinks
        self._stats = None if policy is None else policy.stats
        self._after_model = orch._points["after_model"]
        self._turns_completed = 0  # turn.completed events, counted apart: the hot one
        self._lock = threading.Lock()
        self._claimed = False
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
        SWITCH_PROVIDER. With a retry policy, failures are retried by the
        same engine as :func:`~techrevati.runtime.retry_policy.retry_call`,
        with a fresh attempt budget each turn.
        """
        turn = self._begin_turn(model, usage, estimate, timeout, fallback_models)
        target = fn if turn.timeout is None and not _accepts_model(fn) else self._timed(fn, turn)
        breaker = self._orch.circuit_breaker
        clock = self._orch.clock
        while True:
            self._before_attempt(turn)
            started = clock()
            try:
                if breaker is None:
                    result = _inspected(target, turn)
                else:  # around the deadline too: a timeout is the dependency's failure
                    result = breaker.call(_inspected, target, turn)
            except BaseException as exc:
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    self._orch._sleep(retry.delay_seconds)
                continue
            return self._attempt_succeeded(turn, result, clock() - started)

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
        turn = self._begin_turn(model, usage, estimate, timeout, fallback_models)
        attempt = self._async_attempt(fn, turn)
        clock = self._orch.clock
        while True:
            self._before_attempt(turn)
            started = clock()
            try:
                result = await attempt()
            except BaseException as exc:
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    await self._orch._async_sleep(retry.delay_seconds)
                continue
            return self._attempt_succeeded(turn, result, clock() - started)

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

    # -- lifecycle internals -------------------------------------------------

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
        model: str,
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        fallback_models: Sequence[str],
    ) -> _Turn:
        """Check the arguments and the session, count the turn, and make its state."""
        if type(model) is not str:
            raise InvalidValueError(f"model must be a str, got {model!r}")
        if usage is not None and type(usage) is not UsageSnapshot:
            raise InvalidValueError(f"usage must be a UsageSnapshot or None, got {usage!r}")
        if estimate is not None and type(estimate) is not UsageSnapshot:
            raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")
        if timeout is not None:
            timeout = seconds_or_none("timeout", timeout)
        models = _fallbacks(fallback_models) if fallback_models else ()
        worker = self.worker
        if worker is None or worker.status is not AgentStatus.RUNNING:
            self._require_running()  # raises, saying why
        model = model or UNNAMED_MODEL
        limit = self._orch.max_iterations
        with self._lock:
            refused = limit is not None and self._turns >= limit
            if not refused:
                self._turns += 1
            turn_number = self._turns
        if refused:
            assert limit is not None
            self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
            raise MaxIterationsExceededError(limit)
        if self._stats is not None:
            self._stats._started()
        turn = _Turn(model, models, usage, estimate, timeout)
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
        """Run before_model hooks for the next attempt, then reserve its budget."""
        turn.attempt += 1
        call = turn.call
        if call is not None:  # only built when hooks look at it
            if call.attempt != turn.attempt or call.model != turn.model:
                call = replace(call, model=turn.model, attempt=turn.attempt)
            call = self._replaced_by_hooks("before_model", call, ModelCall)
            turn.call = call
            turn.model = call.model
        if self._cap is not None:
            self._hold_cap(turn)
        if self._budgets:
            self._reserve(turn)

    def _hold_cap(self, turn: _Turn) -> None:
        """Hold the attempt's expected cost on the session's cap (``budget_usd``)."""
        cap = self._cap
        assert cap is not None
        model = turn.model
        estimate = turn.estimate
        if estimate is not None:
            femto = _cost_femto(model, estimate)
        else:
            expected = self._cap_expect.get(model)
            if expected is not None:
                femto = expected
            elif self._orch.default_estimate is not None:
                femto = _cost_femto(model, self._orch.default_estimate)
            else:
                femto = 0
        with self._lock:
            spent, held = self._cap_spent, self._cap_held
            if spent + held + (femto or 1) <= cap:
                self._cap_held = held + femto
                turn.cap_held = femto
                return
        error = _limit_error(
            "usd",
            cap,
            spent,
            reserved=held,
            wanted=femto,
            model=model,
            after=False,
            limit_femto=cap,
            spent_femto=spent,
        )
        self._budget_refused(turn, error)
        turn.cap_held = 0  # not enforced: charged after the call all the same

    def _budget_refused(self, turn: _Turn, exc: BudgetExceededError) -> None:
        """Raise ``exc`` when budgets are enforced, else record the overrun and go on."""
        if self._orch.enforce_budget:
            self._release(turn)
            self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
            self._emit(
                EventName.BUDGET_EXCEEDED,
                failure_class=AgentFailureClass.BUDGET_EXCEEDED,
                detail=str(exc),
                data={"model": turn.model, "enforced": True},
            )
            raise exc
        with self._lock:
            self._budget_warnings += 1
        self._emit(
            EventName.BUDGET_EXCEEDED,
            detail=str(exc),
            data={"model": turn.model, "enforced": False},
        )
        _log.warning(
            "budget exceeded (not enforced): %s", exc, extra=self._log_extra(model=turn.model)
        )

    def _reserve(self, turn: _Turn) -> None:
        """Hold the attempt's estimate on every budget; release them all if one refuses."""
        for budget in self._budgets:
            try:
                turn.holds.append((budget, *budget._hold(turn.model, turn.estimate)))
            except BudgetExceededError as exc:
                self._budget_refused(turn, exc)
                turn.unreserved.append(budget)
            except BaseException:
                self._release(turn)
                raise

    def _release(self, turn: _Turn) -> None:
        """Drop the attempt's holds: nothing was billed (or nothing is known of it)."""
        held, turn.cap_held = turn.cap_held, None
        if held:
            with self._lock:
                self._cap_held -= held
        holds, turn.holds = turn.holds, []
        turn.unreserved.clear()
        for budget, _, femto, tokens in holds:
            budget._release_hold(femto, tokens)

    def _charge(self, turn: _Turn, usage: UsageSnapshot, *, settle_cap: bool = True) -> TurnCost:
        """Record a billed attempt: the tracker, then every budget, exactly once.

        ``settle_cap=False`` leaves the session cap to the caller, who settles
        it in a locked section it takes anyway (:meth:`_turn_done`).
        """
        cost = self.tracker.record_turn(turn.model, usage)
        if settle_cap and turn.cap_held is not None:
            with self._lock:
                self._settle_cap_locked(turn, cost.cost_femto_usd)
        holds, turn.holds = turn.holds, []
        if holds:
            femto = cost.cost_femto_usd  # priced once, by the tracker: the same registry
            tokens = usage.input_tokens + usage.output_tokens
            try:
                while holds:
                    budget, name, held_femto, held_tokens = holds[-1]
                    budget._settle_hold(name, held_femto, held_tokens, femto, tokens)
                    holds.pop()
            except BaseException:
                for budget, _, held_femto, held_tokens in holds:
                    budget._release_hold(held_femto, held_tokens)
                raise
        unreserved, turn.unreserved = turn.unreserved, []
        for budget in unreserved:
            budget.charge(turn.model, usage)
        return cost

    def _timed(self, fn: Callable[..., _T], turn: _Turn) -> Callable[[], _T]:
        """``fn`` as a zero-argument call: given the turn's model, within its deadline."""
        target: Callable[[], _T] = (lambda: fn(model=turn.model)) if _accepts_model(fn) else fn
        timeout = turn.timeout
        if timeout is None:
            return target
        runner = self._orch._runner_for_timeouts()
        untimed = target

        def timed() -> _T:
            try:
                return runner.run(untimed, timeout)
            except DeadlineExceededError as exc:
                raise TurnTimeoutError(timeout, turn.model, started=exc.started) from None

        return timed

    def _async_attempt(
        self, fn: Callable[..., Awaitable[_T]], turn: _Turn
    ) -> Callable[[], Awaitable[_T]]:
        """Async twin of :meth:`_sync_attempt`; the deadline holds even if ``fn`` ignores it."""
        wants_model = _accepts_model(fn)
        timeout = turn.timeout

        async def attempt() -> _T:
            awaitable = fn(model=turn.model) if wants_model else fn()
            if timeout is None:
                result = await awaitable
            else:
                result = await _within(awaitable, timeout, turn.model)
            try:
                _inspect(turn, result)
            except StreamResultError as exc:
                await aclose_refused(exc)
                raise
            return result

        breaker = self._orch.circuit_breaker
        if breaker is None:
            return attempt
        return lambda: breaker.acall(attempt)

    def _attempt_succeeded(
        self, turn: _Turn, result: _T, duration: float
    ) -> tuple[_T, UsageSnapshot]:
        usage = turn.usage or turn.read_usage
        flagged = usage is None
        if usage is None:
            usage = UsageSnapshot.ZERO
        try:
            cost = self._charge(turn, usage, settle_cap=False)
        except BaseException:
            self._release(turn)
            raise
        self._turn_done(turn, usage, cost.cost_femto_usd, flagged, duration)
        if self._usage_sinks:
            self._write_usage(turn, usage, cost, duration)
        if self._stats is not None:
            self._stats._succeeded()
        for hook in self._after_model:
            assert turn.call is not None
            replaced = self._run_hook(hook, "after_model", hook.after_model, turn.call, result)
            if replaced is not None:
                result = replaced
        return result, usage

    def _write_usage(
        self, turn: _Turn, usage: UsageSnapshot, cost: TurnCost, duration: float
    ) -> None:
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

    def _attempt_failed(
        self, turn: _Turn, exc: BaseException, duration: float
    ) -> RetryAttempt | None:
        """Settle and record a failed attempt; return the retry to make, or None to re-raise.

        Raises :class:`RetriesExhaustedError` from ``exc`` when attempts run out.
        """
        billed = usage_from_exception(exc) if isinstance(exc, Exception) else None
        if billed is None:
            self._release(turn)
            cost = None
        else:
            cost = self._charge(turn, billed)
            if self._usage_sinks:
                self._write_usage(turn, billed, cost, duration)
        failure = failure_class_of(exc)
        self._record_failure(failure)
        if isinstance(exc, TurnTimeoutError):
            with self._lock:
                self._timed_out = True
        self._emit_failure(
            turn=turn, exc=exc, failure=failure, duration=duration, billed=billed, cost=cost
        )
        policy = self._orch.retry
        if policy is None or not isinstance(exc, Exception):
            return None
        run = turn.run
        if run is None:
            run = turn.run = RetryRun(policy, cap=self.recovery)
        try:
            retry = run.failed(exc)
        except RetriesExhaustedError:
            with self._lock:
                self._retries_exhausted = True
            raise
        if retry is None:
            return None
        if RecoveryStep.SWITCH_PROVIDER in retry.steps and turn.models:
            previous = turn.model
            turn.model, turn.models = turn.models[0], turn.models[1:]
            self._emit(
                EventName.MODEL_SWITCHED,
                detail=f"{previous} -> {turn.model}",
                data={"from_model": previous, "model": turn.model},
            )
        with self._lock:
            self._retries += 1
        self._emit(
            EventName.TURN_RETRIED,
            failure_class=failure,
            detail=retry.reason,
            data={
                "model": turn.model,
                "attempt": turn.attempt,
                "delay_seconds": retry.delay_seconds,
                "scenario": retry.failure.scenario.value,
            },
        )
        return retry

    def _emit_failure(
        self,
        *,
        turn: _Turn,
        exc: BaseException,
        failure: AgentFailureClass,
        duration: float,
        billed: UsageSnapshot | None,
        cost: TurnCost | None,
    ) -> None:
        name = EventName.TURN_FAILED
        data: dict[str, object] = {
            "model": turn.model,
            "attempt": turn.attempt,
            "duration_seconds": duration,
            "error_type": type(exc).__name__,
        }
        if billed is not None and cost is not None:
            data["input_tokens"] = billed.input_tokens
            data["output_tokens"] = billed.output_tokens
            data["cost_usd"] = usd_text(cost.cost_femto_usd)
        if isinstance(exc, CircuitOpenError):
            name = EventName.BREAKER_REJECTED
            data["retry_after"] = exc.retry_after
        self._emit(name, failure_class=failure, detail=_short(exc), data=data)

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

    def _replaced_by_hooks(self, point: str, call: _C, kind: type[_C]) -> _C:
        """Pass ``call`` through the ``point`` hooks; each may return a replacement ``kind``."""
        for hook in self._orch._points[point]:
            replaced = self._run_hook(hook, point, getattr(hook, point), call)
            if replaced is not None:
                if not isinstance(replaced, kind):
                    raise GuardrailViolatedError(
                        f"{point} returned {type(replaced).__name__}, not {kind.__name__}",
                        hook=type(hook).__name__,
                        point=point,
                    )
                call = replaced
        return call

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
        self._log.append(event)
        with self._lock:
            self._event_counts[name.value] += 1
            self._written += 1
        _log_event(event)
        self._orch.sinks.write_event(event)

    def _turn_done(
        self, turn: _Turn, usage: UsageSnapshot, femto: int, flagged: bool, duration: float
    ) -> None:
        """Emit turn.completed: kept unbuilt unless a sink or the debug log wants it now."""
        worker = self.worker
        assert worker is not None
        record = (
            turn.model,
            turn.attempt,
            duration,
            usage,
            femto,
            flagged,
            worker.status,
            time.time() if self._stamp_floats else self._orch.wall_clock(),
        )
        with self._lock:
            if turn.cap_held is not None:
                self._settle_cap_locked(turn, femto)
            self._turns_completed += 1
            self._written += 1
            if flagged:
                self._turns_without_usage += 1
        self._log.append(record)
        if self._eager_events or _log.isEnabledFor(logging.DEBUG):
            event = self._built(record)
            _log_event(event)
            self._orch.sinks.write_event(event)

    def _settle_cap_locked(self, turn: _Turn, femto: int) -> None:
        """Replace the attempt's hold on the session cap by its actual cost (lock held)."""
        self._cap_held -= turn.cap_held or 0
        turn.cap_held = None
        self._cap_spent += femto
        self._cap_expect[turn.model] = femto

    def _built(self, entry: AgentEvent | tuple[Any, ...]) -> AgentEvent:
        """Return the event a log entry stands for (building a kept turn.completed)."""
        if not isinstance(entry, tuple):
            return entry
        model, attempt, duration, usage, femto, flagged, status, stamp = entry
        worker = self.worker
        return AgentEvent(
            name=EventName.TURN_COMPLETED,
            role=self._orch.role,
            phase=self._orch.phase,
            status=status.value,
            data={
                "model": model,
                "attempt": attempt,
                "duration_seconds": duration,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "cost_usd": usd_text(femto),
                "usage_unknown": flagged,
            },
            timestamp=datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, float) else stamp,
            session_id=self.id,
            worker_id="" if worker is None else worker.id,
            project_id=self._orch.project_id,
        )

    def _log_extra(self, **more: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "role": self._orch.role,
            "phase": self._orch.phase,
            "project_id": self._orch.project_id,
            "session_id": self.id,
        }
        extra.update(more)
        return extra


def failure_class_of(exc: BaseException) -> AgentFailureClass:
    """Classify any exception a session sees into an :class:`AgentFailureClass`."""
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return AgentFailureClass.CANCELLED
    if isinstance(exc, (BudgetExceededError, MaxIterationsExceededError)):
        return AgentFailureClass.BUDGET_EXCEEDED
    if isinstance(exc, PermissionDeniedError):
        return AgentFailureClass.PERMISSION_DENIED
    if isinstance(exc, (GuardrailViolatedError, InvalidValueError, StreamResultError)):
        return AgentFailureClass.VALIDATION_ERROR
    if isinstance(exc, CircuitOpenError):
        return AgentFailureClass.DEPENDENCY_FAILED
    if isinstance(exc, TransientRuntimeError):
        return failure_class_for(FailureScenario(exc.scenario))
    if isinstance(exc, RetriesExhaustedError):
        return failure_class_for(exc.scenario)
    if not isinstance(exc, Exception):
        return AgentFailureClass.UNKNOWN
    return failure_class_for(inspect_exception(exc).scenario)


def _inspected(target: Callable[[], _T], turn: _Turn) -> _T:
    """Call ``target``; read the usage of its result and refuse a stream or a silent failure."""
    result = target()
    if type(result) not in _PLAIN_RESULTS:  # a str or a number is no response to read
        _inspect(turn, result)
    return result


def _inspect(turn: _Turn, result: object) -> None:
    usage = turn.usage
    if usage is None:
        usage = turn.read_usage = usage_from_result(result)
    check_response(result, usage)


async def _within(awaitable: Awaitable[_T], timeout: float, model: str) -> _T:
    """Await ``awaitable`` for at most ``timeout`` seconds, even if it ignores cancellation.

    At the deadline the task is cancelled and the caller moves on at once. A
    coroutine that swallows the cancellation keeps running in the background:
    that is logged (when it ends, or if it is still running another
    ``timeout`` later) and its result is dropped.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:  # the caller was cancelled meanwhile
        task.cancel()
        task.add_done_callback(_forget_late)
        raise
    if done:
        return task.result()
    task.cancel()
    _watch_late(task, timeout, model)
    raise TurnTimeoutError(timeout, model)


def _watch_late(task: asyncio.Future[Any], timeout: float, model: str) -> None:
    """Report a cancelled turn that does not stop; retrieve its outcome when it ends."""

    def still_running() -> None:
        if not task.done():
            _log.warning(
                "turn on model %r passed its %ss deadline and did not stop when cancelled; "
                "it runs on in the background and its result will be dropped",
                model,
                timeout,
            )

    timer = asyncio.get_running_loop().call_later(timeout, still_running)

    def ended(task: asyncio.Future[Any]) -> None:
        timer.cancel()
        if not task.cancelled():
            _log.warning(
                "turn on model %r passed its %ss deadline and ignored the cancellation; "
                "it finished later and its result was dropped",
                model,
                timeout,
            )
        _forget_late(task)

    task.add_done_callback(ended)


def _forget_late(task: asyncio.Future[Any]) -> None:
    """Retrieve a late task's outcome so asyncio does not report it as lost."""
    if not task.cancelled() and task.exception() is not None:
        _log.debug("a turn's late call failed after its deadline", exc_info=task.exception())


def _fallbacks(models: object) -> tuple[str, ...]:
    if isinstance(models, str | bytes) or not isinstance(models, Sequence):
        raise InvalidValueError(
            f"fallback_models must be a sequence of model names (a list, not a str), got {models!r}"
        )
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(
                f"fallback_models must hold non-empty str model names, got {name!r} in {models!r}"
            )
    return tuple(models)


def _checked_hooks(hooks: Iterable[object]) -> tuple[Any, ...]:
    """Return the hooks as a tuple; each must implement at least one hook point."""
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Iterable):
        raise InvalidValueError(f"hooks must be an iterable of hook objects, got {hooks!r}")
    checked = tuple(hooks)
    for hook in checked:
        if not any(callable(getattr(hook, point, None)) for point in HOOK_POINTS):
            raise InvalidValueError(
                f"each hook must implement one of {', '.join(HOOK_POINTS)} "
                f"(subclass BaseHook), got {hook!r}"
            )
    return checked


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


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
