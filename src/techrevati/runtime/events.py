"""Runtime events: what happened to an agent, and where those records go.

An :class:`AgentEvent` is one immutable record (a turn finished, a tool was
denied, a breaker opened). Anything that implements :class:`EventSink` can
receive them; :class:`RingBufferSink` is the bounded in-memory default, so a
long-running agent never grows memory without limit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from techrevati.runtime._clock import utc_now
from techrevati.runtime._validate import int_at_least, non_empty_str
from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "DEFAULT_RING_CAPACITY",
    "AgentEvent",
    "AgentFailureClass",
    "EventName",
    "EventSink",
    "RingBufferSink",
    "UsageRecord",
    "UsageSink",
]


DEFAULT_RING_CAPACITY: Final = 1000
"""Events a :class:`RingBufferSink` keeps before dropping the oldest."""


class AgentFailureClass(StrEnum):
    """Why an agent, turn or tool call failed, in words a dashboard can group by."""

    LLM_TIMEOUT = "llm_timeout"
    RATE_LIMIT = "rate_limit"
    CONTEXT_OVERFLOW = "context_overflow"
    OUTPUT_TRUNCATED = "output_truncated"
    PROVIDER_FAILURE = "provider_failure"
    AUTH_FAILURE = "auth_failure"
    BAD_REQUEST = "bad_request"
    CONTENT_POLICY = "content_policy"
    QUOTA_EXHAUSTED = "quota_exhausted"
    TOOL_ERROR = "tool_error"
    DEPENDENCY_FAILED = "dependency_failed"
    MEMORY_CORRUPTION = "memory_corruption"
    VALIDATION_ERROR = "validation_error"
    BUDGET_EXCEEDED = "budget_exceeded"
    PERMISSION_DENIED = "permission_denied"
    GOVERNANCE_BREACHED = "governance_breached"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class EventName(StrEnum):
    """The stable names of the events the runtime emits (also its log event names).

    ``data`` keys used with them: ``model``, ``duration_seconds``, ``attempt``,
    ``tool``, ``error_type``, ``cost_usd`` (a decimal string), ``input_tokens``,
    ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
    ``cache_write_1h_tokens``, ``reasoning_tokens``, ``service_tier`` (the tier
    that served a turn, ``None`` when not reported), ``breaker``, ``from_state``,
    ``to_state``, ``reason``; ``turn.throttled`` has ``wait_seconds`` (and
    ``limit``, ``retry_after`` and ``refused`` when the rate limiter refused);
    a streamed turn's ``turn.completed`` adds ``time_to_first_token_seconds``,
    ``chunks`` and ``abandoned``, and a ``turn.failed`` after its first chunk
    ``time_to_first_token_seconds``, ``chunks`` and ``usage_unknown``;
    ``store.unavailable`` has ``store``, ``primitive`` and ``reason``, and
    ``store.recovered`` ``store``, ``primitive`` and ``after``;
    ``tool.approval_requested`` has ``tool``, ``rule`` and ``approver`` (whether
    there is one), ``tool.approved`` ``tool``, ``rule`` and ``answer``
    (``allow_once``, ``allow_session`` or ``token``);
    ``governance.breached`` has ``limit``, ``maximum``, ``value``, ``refused``
    and ``tool``; ``memory.compacted`` ``model``, ``messages_dropped``,
    ``tokens_dropped``, ``messages_kept`` and ``tokens_kept``;
    ``turn.output_invalid`` ``model``, ``attempt``, ``spec`` and ``feedback``;
    ``turn.routed`` ``model`` and ``route`` (the router's decision);
    ``checkpoint.saved`` ``thread_id``, ``step`` and ``turn_key``;
    ``session.resumed`` ``thread_id``, ``step`` and ``rerun`` (the turn key
    re-run, or ``None``); ``guardrail.fired`` ``point``, ``tool`` or
    ``model``, ``guardrails``, ``actions``, ``rules``, ``fields``,
    ``findings``, ``blocked`` and ``replaced`` (never the matched text).
    """

    SESSION_STARTED = "session.started"
    SESSION_COMPLETED = "session.completed"
    SESSION_FAILED = "session.failed"
    SESSION_CANCELLED = "session.cancelled"
    STATUS_CHANGED = "worker.status_changed"
    TURN_COMPLETED = "turn.completed"
    TURN_FAILED = "turn.failed"
    TURN_RETRIED = "turn.retried"
    TURN_THROTTLED = "turn.throttled"
    MODEL_SWITCHED = "turn.model_switched"
    TOOL_COMPLETED = "tool.completed"
    TOOL_FAILED = "tool.failed"
    TOOL_DENIED = "tool.denied"
    TOOL_APPROVAL_REQUESTED = "tool.approval_requested"
    TOOL_APPROVED = "tool.approved"
    HOOK_VETOED = "hook.vetoed"
    BUDGET_EXCEEDED = "budget.exceeded"
    BREAKER_STATE_CHANGED = "breaker.state_changed"
    BREAKER_REJECTED = "breaker.rejected"
    POLICY_EVALUATED = "policy.evaluated"
    GATE_EVALUATED = "gate.evaluated"
    INPUT_REQUESTED = "input.requested"
    INPUT_PROVIDED = "input.provided"
    HANDOFF = "handoff"
    SINK_FAILED = "sink.failed"
    STORE_UNAVAILABLE = "store.unavailable"
    STORE_RECOVERED = "store.recovered"
    GOVERNANCE_BREACHED = "governance.breached"
    MEMORY_COMPACTED = "memory.compacted"
    OUTPUT_INVALID = "turn.output_invalid"
    TURN_ROUTED = "turn.routed"
    CHECKPOINT_SAVED = "checkpoint.saved"
    SESSION_RESUMED = "session.resumed"
    GUARDRAIL_FIRED = "guardrail.fired"


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One thing that happened to an agent.

    ``status`` is the worker's status when the event was made (a string, so
    this module needs no other); ``data`` holds small JSON-serialisable facts.
    """

    name: str
    role: str = ""
    phase: str = ""
    status: str | None = None
    failure_class: AgentFailureClass | None = None
    detail: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=utc_now)
    session_id: str = ""
    worker_id: str = ""
    project_id: str | int | None = None

    def __post_init__(self) -> None:
        non_empty_str("name", self.name)
        failure: object = self.failure_class
        if failure is not None and not isinstance(failure, AgentFailureClass):
            try:
                object.__setattr__(self, "failure_class", AgentFailureClass(str(failure)))
            except ValueError:
                raise InvalidValueError(
                    f"failure_class must be an AgentFailureClass, got {failure!r}"
                ) from None
        _check_timestamp(self.timestamp)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (timestamp as an ISO 8601 string)."""
        return {
            "name": str(self.name),
            "role": self.role,
            "phase": self.phase,
            "status": self.status,
            "failure_class": None if self.failure_class is None else self.failure_class.value,
            "detail": self.detail,
            "data": dict(self.data),
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "worker_id": self.worker_id,
            "project_id": self.project_id,
        }


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """The tokens and exact cost of one model turn, as durable sinks store it.

    Token fields follow ``usage.UsageSnapshot``'s meaning: ``input_tokens``
    includes cache reads and writes; ``output_tokens`` includes reasoning;
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with
    a one-hour life. ``service_tier`` is the tier that served the turn
    (``UsageSnapshot.service_tier``: ``None`` when not reported).
    """

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    priced: bool = True
    duration_seconds: float | None = None
    role: str = ""
    phase: str = ""
    session_id: str = ""
    worker_id: str = ""
    project_id: str | int | None = None
    timestamp: datetime = field(default_factory=utc_now)
    service_tier: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cache_write_1h_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.cost_usd, Decimal) or not self.cost_usd.is_finite():
            raise InvalidValueError(f"cost_usd must be a finite Decimal, got {self.cost_usd!r}")
        _check_timestamp(self.timestamp)
        tier: object = self.service_tier
        if tier is not None and not isinstance(tier, str):
            raise InvalidValueError(f"service_tier must be a str or None, got {tier!r}")

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (cost as an exact decimal string)."""
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "cost_usd": str(self.cost_usd),
            "priced": self.priced,
            "duration_seconds": self.duration_seconds,
            "role": self.role,
            "phase": self.phase,
            "session_id": self.session_id,
            "worker_id": self.worker_id,
            "project_id": self.project_id,
            "timestamp": self.timestamp.isoformat(),
            "service_tier": self.service_tier,
        }


@runtime_checkable
class EventSink(Protocol):
    """Receives every :class:`AgentEvent` a session emits.

    Implementations should be quick and thread-safe; a sink that raises is
    logged and counted by the caller and never loses the record for the
    other sinks.
    """

    def write_event(self, event: AgentEvent) -> None:
        """Store or forward one event."""


@runtime_checkable
class UsageSink(Protocol):
    """Receives one :class:`UsageRecord` per model turn; same rules as :class:`EventSink`."""

    def write_usage(self, record: UsageRecord) -> None:
        """Store or forward one usage record."""


class RingBufferSink:
    """Keep the last ``capacity`` events in memory; older ones are dropped and counted.

    Safe to share between threads. ``capacity`` defaults to
    :data:`DEFAULT_RING_CAPACITY` (1000).
    """

    __slots__ = ("_buffer", "_capacity", "_dropped", "_lock", "_total")

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        int_at_least("capacity", capacity, 1)
        self._capacity = capacity
        self._buffer: deque[AgentEvent] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._total = 0
        self._dropped = 0

    @property
    def capacity(self) -> int:
        """How many events are kept."""
        return self._capacity

    @property
    def total(self) -> int:
        """How many events were ever written, kept or dropped."""
        return self._total

    @property
    def dropped(self) -> int:
        """How many events were pushed out by newer ones."""
        return self._dropped

    def write_event(self, event: AgentEvent) -> None:
        """Append ``event``, dropping the oldest when full. O(1)."""
        with self._lock:
            if len(self._buffer) == self._capacity:
                self._dropped += 1
            self._buffer.append(event)
            self._total += 1

    def events(self, last: int | None = None) -> list[AgentEvent]:
        """Return the kept events, oldest first (only the ``last`` N if given)."""
        with self._lock:
            items = list(self._buffer)
        if last is not None:
            int_at_least("last", last, 0)
            return items[max(0, len(items) - last) :] if last else []
        return items

    def clear(self) -> None:
        """Forget the kept events (the counters stay)."""
        with self._lock:
            self._buffer.clear()

    def __len__(self) -> int:
        return len(self._buffer)


def _check_timestamp(timestamp: object) -> None:
    if not isinstance(timestamp, datetime) or timestamp.tzinfo is None:
        raise InvalidValueError(f"timestamp must be a timezone-aware datetime, got {timestamp!r}")
