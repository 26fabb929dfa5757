"""What every session keeps and how it records what happens: events, failures, hooks.

Private: the base of :class:`~techrevati.runtime.orchestrator.Session`. The
session's event log lives here (a bounded deque; a ``turn.completed`` is kept
as a tuple and built only when read), with the failure counters, hook calls
and state checks that turns, tools and the lifecycle all use.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from techrevati.runtime._clock import utc_now
from techrevati.runtime._log import get_logger
from techrevati.runtime._money import usd_text
from techrevati.runtime._responses import (
    StreamResultError,
)
from techrevati.runtime._threads import turn_key
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.budget import BudgetExceededError
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError
from techrevati.runtime.errors import (
    InvalidValueError,
    MaxIterationsExceededError,
    SessionStateError,
    TransientRuntimeError,
)
from techrevati.runtime.events import (
    AgentEvent,
    AgentFailureClass,
    EventName,
)
from techrevati.runtime.governance import GovernanceBreachedError, GovernanceMeter
from techrevati.runtime.hooks import (
    GuardrailViolatedError,
    ModelCall,
    ToolCall,
)
from techrevati.runtime.lifecycle import AgentStatus, AgentWorker
from techrevati.runtime.permissions import (
    PermissionDeniedError,
)
from techrevati.runtime.retry_policy import (
    FailureScenario,
    RecoveryContext,
    RetriesExhaustedError,
    failure_class_for,
    inspect_exception,
)
from techrevati.runtime.usage import UsageSnapshot, UsageTracker

if TYPE_CHECKING:
    from techrevati.runtime._turns import _Turn
    from techrevati.runtime.approvals import ApprovalToken
    from techrevati.runtime.checkpoints import CheckpointSaver
    from techrevati.runtime.memory import ConversationMemory
    from techrevati.runtime.orchestrator import Handoff, Orchestrator

_T = TypeVar("_T")
_C = TypeVar("_C", ModelCall, ToolCall)
_log = get_logger("techrevati.runtime.orchestrator")
_TURN_COMPLETED: Final = EventName.TURN_COMPLETED.value


class _SessionCore:
    """The state of one session and how it records events, failures and hook calls."""

    def __init__(
        self,
        orch: Orchestrator,
        *,
        metadata: Mapping[str, object] | None = None,
        memory: ConversationMemory | None = None,
        thread_id: str | None = None,
    ) -> None:
        self._orch = orch
        self.id = uuid.uuid4().hex
        self.metadata: Mapping[str, object] = dict(metadata or {})
        self.tracker = UsageTracker()
        self.memory = memory
        """The conversation compacted, and the turn retried once, on a context overflow."""
        governance = orch.governance
        self.governance: GovernanceMeter | None = (
            None if governance is None else GovernanceMeter(governance, clock=orch.clock)
        )
        """This session's count against the orchestrator's ``governance`` (None without)."""
        self._breach: GovernanceBreachedError | None = None
        if thread_id is not None:
            thread_id = non_empty_str("thread_id", thread_id)
            if orch.checkpoints is None:
                raise InvalidValueError(
                    f"thread_id={thread_id!r} needs somewhere to keep the thread: "
                    "pass checkpoints= (InMemorySaver, SqliteSaver) to the Orchestrator"
                )
        self.thread_id = thread_id
        """The checkpointed thread this session goes on (None: no checkpoints)."""
        self._thread_state: object = None
        self._step = 0
        self._step_begun = False  # the step in progress is marked started on the saver
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
        self._approved: set[tuple[str, str]] = set()  # (tool, rule) allowed for the session
        self._presented: list[ApprovalToken] = []  # approval tokens the agent offered
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
        data = {
            "model": model,
            "attempt": attempt,
            "duration_seconds": duration,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost_usd": usd_text(femto),
            "usage_unknown": flagged,
        }
        if usage.service_tier is not None:  # the tier that served the turn, when reported
            data["service_tier"] = usage.service_tier
        return AgentEvent(
            name=EventName.TURN_COMPLETED,
            role=self._orch.role,
            phase=self._orch.phase,
            status=status.value,
            data=data,
            timestamp=datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, float) else stamp,
            session_id=self.id,
            worker_id="" if worker is None else worker.id,
            project_id=self._orch.project_id,
        )

    def _record_failure(self, failure: AgentFailureClass) -> None:
        with self._lock:
            self._failures[failure.value] += 1

    def _hook_emit(self, name: str, detail: str | None, data: Mapping[str, object]) -> None:
        """Add a hook's event (``call.emit``) of a known name to this session."""
        try:
            event = EventName(name)
        except ValueError:
            raise InvalidValueError(
                f"a hook may emit only the runtime's event names, got {name!r}"
            ) from None
        self._emit(event, detail=detail, data=data)

    def _begin_step(self) -> None:
        """Mark the thread's step in progress as started on the saver, once per step."""
        saver, thread, key = self._step_marker()
        saver.begin_turn(thread, key)
        self._step_begun = True

    async def _abegin_step(self) -> None:
        """Async twin of :meth:`_begin_step`."""
        saver, thread, key = self._step_marker()
        await saver.abegin_turn(thread, key)
        self._step_begun = True

    def _step_marker(self) -> tuple[CheckpointSaver, str, str]:
        saver, thread = self._orch.checkpoints, self.thread_id
        assert saver is not None
        assert thread is not None
        return saver, thread, turn_key(thread, self._step + 1)

    def _governance_breached(self, breach: GovernanceBreachedError) -> GovernanceBreachedError:
        """Record a governance refusal and fail the worker at once; return it, to be raised."""
        first = False
        with self._lock:
            if self._breach is None:
                self._breach = breach
                first = True
        self._record_failure(AgentFailureClass.GOVERNANCE_BREACHED)
        self._emit(
            EventName.GOVERNANCE_BREACHED,
            failure_class=AgentFailureClass.GOVERNANCE_BREACHED,
            detail=str(breach),
            data=breach.to_dict(),
        )
        worker = self.worker
        if first and worker is not None and not worker.is_terminal:
            self._transition(AgentStatus.FAILED, f"governance_breached: {breach.limit.value}")
        return breach

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
        raise self._vetoed(error)

    def _vetoed(self, error: GuardrailViolatedError) -> GuardrailViolatedError:
        """Record a hook's veto (a failure and a ``hook.vetoed`` event); return it to raise."""
        self._record_failure(AgentFailureClass.VALIDATION_ERROR)
        self._emit(
            EventName.HOOK_VETOED,
            failure_class=AgentFailureClass.VALIDATION_ERROR,
            detail=error.reason,
            data={"hook": error.hook, "point": error.point},
        )
        return error

    def _replaced_by_hooks(self, point: str, call: _C, kind: type[_C]) -> _C:
        """Pass ``call`` through the ``point`` hooks; each may return a replacement ``kind``.

        A replacement of another type is the hook's veto, recorded as one.
        """
        for hook in self._orch._points[point]:
            replaced = self._run_hook(hook, point, getattr(hook, point), call)
            if replaced is not None:
                if not isinstance(replaced, kind):
                    raise self._vetoed(
                        GuardrailViolatedError(
                            f"{point} returned {type(replaced).__name__}, not {kind.__name__}",
                            hook=type(hook).__name__,
                            point=point,
                        )
                    )
                call = replaced
        return call

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

    def _transition(self, status: AgentStatus, detail: str | None) -> None:
        worker = self._require_worker()
        worker.transition(status, detail)
        self._emit(EventName.STATUS_CHANGED, detail=detail, data={"to": status.value})

    def _log_extra(self, **more: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "role": self._orch.role,
            "phase": self._orch.phase,
            "project_id": self._orch.project_id,
            "session_id": self.id,
        }
        extra.update(more)
        return extra

    def _on_breaker_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        self._emit(
            EventName.BREAKER_STATE_CHANGED,
            detail=f"{breaker.name}: {old} -> {new}",
            data={"breaker": breaker.name, "from_state": str(old), "to_state": str(new)},
        )

    def _on_store_event(self, event: str, data: dict[str, object]) -> None:
        name = EventName(event)
        reason = data.get("reason", data.get("after", ""))
        self._emit(
            name, detail=f"{data.get('store')} ({data.get('primitive')}): {reason}", data=data
        )


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C or an asyncio cancellation (without importing asyncio)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    asyncio = sys.modules.get("asyncio")  # no asyncio loaded: no task to cancel
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def failure_class_of(exc: BaseException) -> AgentFailureClass:
    """Classify any exception a session sees into an :class:`AgentFailureClass`."""
    if _cancelled(exc):
        return AgentFailureClass.CANCELLED
    if isinstance(exc, GovernanceBreachedError):
        return AgentFailureClass.GOVERNANCE_BREACHED
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


_LEVEL_BY_NAME: Final[Mapping[str, int]] = {
    EventName.TURN_FAILED.value: logging.WARNING,
    EventName.TOOL_FAILED.value: logging.WARNING,
    EventName.TOOL_DENIED.value: logging.WARNING,
    EventName.HOOK_VETOED.value: logging.WARNING,
    EventName.BUDGET_EXCEEDED.value: logging.WARNING,
    EventName.BREAKER_STATE_CHANGED.value: logging.WARNING,
    EventName.BREAKER_REJECTED.value: logging.WARNING,
    EventName.STORE_UNAVAILABLE.value: logging.WARNING,
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


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
