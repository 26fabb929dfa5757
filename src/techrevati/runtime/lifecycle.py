"""Agent lifecycle: one explicit status machine per worker, and a registry to find workers.

Reach for :class:`AgentWorker` when you need to know, at any moment, what an
agent is doing (idle, initialising, running, waiting for input, or finished)
and to refuse impossible moves such as "completed, then running again". Every
move is checked against the single table :data:`TRANSITIONS` and recorded as
an immutable, timestamped :class:`StatusEvent`. :class:`AgentRegistry` creates
and tracks workers and answers "which workers of project 42 / role writer /
status failed?" from indexes it keeps current on every transition;
:meth:`AgentRegistry.prune_terminal` keeps a long-lived registry bounded.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol, TypeVar

from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._log import get_logger
from techrevati.runtime._validate import enum_member, int_at_least, non_empty_str, required_callable
from techrevati.runtime.errors import InvalidValueError, TechrevatiError, UnknownWorkerError

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "AgentRegistry",
    "AgentStatus",
    "AgentWorker",
    "InvalidTransitionError",
    "StatusEvent",
    "StatusListener",
    "UnknownWorkerError",
]

DEFAULT_MAX_EVENTS: Final = 1000
"""Status events an :class:`AgentWorker` keeps before dropping the oldest."""

_LOG: Final = get_logger(__name__)

_K = TypeVar("_K")


# -- values ---------------------------------------------------------------------


class AgentStatus(StrEnum):
    """Where a worker is in its life; the values are lowercase strings."""

    IDLE = "idle"
    """Created, nothing started yet."""
    INITIALIZING = "initializing"
    """Loading context, tools, credentials."""
    RUNNING = "running"
    """Doing turns."""
    WAITING_FOR_INPUT = "waiting_for_input"
    """Paused until a human or another agent answers."""
    COMPLETED = "completed"
    """Finished successfully (terminal)."""
    FAILED = "failed"
    """Finished with an error (terminal)."""
    CANCELLED = "cancelled"
    """Stopped on request before finishing (terminal)."""

    @classmethod
    def parse(cls, value: AgentStatus | str) -> AgentStatus:
        """Return the status for a member, its value or its name (any case, trimmed).

        Raises :class:`~techrevati.runtime.errors.InvalidValueError` naming the
        value for anything else.
        """
        return enum_member(cls, value, "agent status")

    @property
    def is_terminal(self) -> bool:
        """Whether no transition leaves this status (COMPLETED, FAILED, CANCELLED)."""
        return not _TRANSITIONS[self]

    def can_transition_to(self, target: AgentStatus) -> bool:
        """Whether :data:`TRANSITIONS` allows moving from this status to ``target``."""
        return target in _TRANSITIONS[self]


_TRANSITIONS: Final[dict[AgentStatus, frozenset[AgentStatus]]] = {
    AgentStatus.IDLE: frozenset({AgentStatus.INITIALIZING, AgentStatus.CANCELLED}),
    AgentStatus.INITIALIZING: frozenset(
        {AgentStatus.RUNNING, AgentStatus.FAILED, AgentStatus.CANCELLED}
    ),
    AgentStatus.RUNNING: frozenset(
        {
            AgentStatus.WAITING_FOR_INPUT,
            AgentStatus.COMPLETED,
            AgentStatus.FAILED,
            AgentStatus.CANCELLED,
        }
    ),
    AgentStatus.WAITING_FOR_INPUT: frozenset(
        {AgentStatus.RUNNING, AgentStatus.FAILED, AgentStatus.CANCELLED}
    ),
    AgentStatus.COMPLETED: frozenset(),
    AgentStatus.FAILED: frozenset(),
    AgentStatus.CANCELLED: frozenset(),
}

TRANSITIONS: Final[Mapping[AgentStatus, frozenset[AgentStatus]]] = MappingProxyType(_TRANSITIONS)
"""The one table of legal moves: status -> the statuses it may move to next.

``IDLE -> INITIALIZING | CANCELLED``;
``INITIALIZING -> RUNNING | FAILED | CANCELLED``;
``RUNNING -> WAITING_FOR_INPUT | COMPLETED | FAILED | CANCELLED``;
``WAITING_FOR_INPUT -> RUNNING | FAILED | CANCELLED``; the terminal statuses
accept nothing. No status moves to itself.
"""

TERMINAL_STATUSES: Final[frozenset[AgentStatus]] = frozenset(
    status for status, targets in _TRANSITIONS.items() if not targets
)
"""COMPLETED, FAILED and CANCELLED: the statuses nothing leaves."""


class InvalidTransitionError(TechrevatiError, ValueError):
    """A worker was asked to make a move :data:`TRANSITIONS` forbids.

    Carries ``worker_id``, ``from_status`` and ``to_status``; the worker is
    left unchanged.
    """

    def __init__(self, worker_id: str, from_status: AgentStatus, to_status: AgentStatus) -> None:
        self.worker_id = worker_id
        self.from_status = from_status
        self.to_status = to_status
        allowed = sorted(target.value for target in _TRANSITIONS[from_status])
        after = f"allowed next: {', '.join(allowed)}" if allowed else "it is terminal"
        super().__init__(
            f"worker {worker_id!r} cannot go from {from_status.value} to "
            f"{to_status.value} ({after})"
        )

    def __reduce__(
        self,
    ) -> tuple[type[InvalidTransitionError], tuple[str, AgentStatus, AgentStatus]]:
        return (type(self), (self.worker_id, self.from_status, self.to_status))


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One transition of one worker: when, to what, from what, and why.

    ``timestamp`` is an aware UTC datetime from the worker's wall clock.
    """

    timestamp: datetime
    status: AgentStatus
    previous_status: AgentStatus
    detail: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.timestamp, datetime) or self.timestamp.utcoffset() is None:
            raise InvalidValueError(
                f"timestamp must be a timezone-aware datetime, got {self.timestamp!r}"
            )
        if not isinstance(self.status, AgentStatus):
            raise InvalidValueError(f"status must be an AgentStatus, got {self.status!r}")
        if not isinstance(self.previous_status, AgentStatus):
            raise InvalidValueError(
                f"previous_status must be an AgentStatus, got {self.previous_status!r}"
            )
        if self.detail is not None and not isinstance(self.detail, str):
            raise InvalidValueError(f"detail must be a str or None, got {self.detail!r}")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (timestamp as an ISO 8601 string)."""
        return {
            "timestamp": self.timestamp.isoformat(),
            "status": self.status.value,
            "previous_status": self.previous_status.value,
            "detail": self.detail,
        }


class StatusListener(Protocol):
    """Called after every transition of a worker it was added to.

    Runs outside the worker's lock, in the transitioning thread. A listener
    that raises is logged and skipped; it never undoes or blocks the
    transition, nor the other listeners.
    """

    def __call__(self, worker: AgentWorker, event: StatusEvent) -> None:
        """React to ``event``, which ``worker`` has just recorded."""


# -- the worker -----------------------------------------------------------------


class AgentWorker:
    """One agent's identity and status, moved only along :data:`TRANSITIONS`.

    A new worker is IDLE and its event log is empty: creation is not an
    event (``created_at`` records it); each successful :meth:`transition`
    appends exactly one :class:`StatusEvent`. The log keeps the last
    ``max_events`` (default 1000, far more than a normal life needs; a worker
    that pauses for input over and over keeps the newest) and counts the rest
    in ``dropped_events``.

    Safe to share between threads: a transition's check, state change and
    log append happen under one lock, so concurrent transitions never lose
    an event or pass through an illegal state.
    """

    __slots__ = (
        "__weakref__",
        "_changed_at",
        "_clock",
        "_created_at",
        "_dropped",
        "_events",
        "_id",
        "_listeners",
        "_lock",
        "_max_events",
        "_phase",
        "_project_id",
        "_registry",
        "_role",
        "_status",
    )

    def __init__(
        self,
        *,
        role: str,
        phase: str,
        project_id: str | int | None = None,
        worker_id: str | None = None,
        clock: WallClock = utc_now,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        non_empty_str("role", role)
        if not isinstance(phase, str):
            raise InvalidValueError(f"phase must be a str, got {phase!r}")
        if project_id is not None and (
            not isinstance(project_id, (str, int)) or isinstance(project_id, bool)
        ):
            raise InvalidValueError(f"project_id must be a str, an int or None, got {project_id!r}")
        if worker_id is None:
            worker_id = uuid.uuid4().hex
        else:
            non_empty_str("worker_id", worker_id)
        required_callable("clock", clock)
        int_at_least("max_events", max_events, 1)
        created_at = clock()
        if not isinstance(created_at, datetime) or created_at.utcoffset() is None:
            raise InvalidValueError(
                f"clock must return a timezone-aware datetime, got {created_at!r}"
            )
        self._id = worker_id
        self._role = role
        self._phase = phase
        self._project_id = project_id
        self._clock = clock
        self._max_events = max_events
        self._created_at = created_at
        self._changed_at = created_at
        self._status = AgentStatus.IDLE
        self._events: deque[StatusEvent] = deque(maxlen=max_events)
        self._dropped = 0
        self._listeners: tuple[StatusListener, ...] = ()
        self._registry: AgentRegistry | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        """The worker's id (a uuid4 hex string unless one was given)."""
        return self._id

    @property
    def role(self) -> str:
        """The role this worker plays, e.g. ``"writer"``."""
        return self._role

    @property
    def phase(self) -> str:
        """The phase this worker works in, e.g. ``"draft"``."""
        return self._phase

    @property
    def project_id(self) -> str | int | None:
        """The project this worker belongs to, if any."""
        return self._project_id

    @property
    def status(self) -> AgentStatus:
        """The current status."""
        return self._status

    @property
    def is_terminal(self) -> bool:
        """Whether the worker is COMPLETED, FAILED or CANCELLED."""
        return self._status in TERMINAL_STATUSES

    @property
    def created_at(self) -> datetime:
        """When the worker was created (aware UTC, from its clock)."""
        return self._created_at

    @property
    def changed_at(self) -> datetime:
        """When the status last changed (``created_at`` until the first transition)."""
        return self._changed_at

    @property
    def events(self) -> tuple[StatusEvent, ...]:
        """A snapshot of the recorded transitions, oldest first."""
        with self._lock:
            return tuple(self._events)

    @property
    def dropped_events(self) -> int:
        """How many old events were pushed out of the log by newer ones."""
        return self._dropped

    def transition(self, status: AgentStatus | str, detail: str | None = None) -> StatusEvent:
        """Move to ``status`` and return the recorded :class:`StatusEvent`.

        ``status`` may be a member or its name/value. Raises
        :class:`InvalidTransitionError` (and changes nothing) when
        :data:`TRANSITIONS` forbids the move.
        """
        target = status if type(status) is AgentStatus else AgentStatus.parse(status)
        if detail is not None and not isinstance(detail, str):
            raise InvalidValueError(f"detail must be a str or None, got {detail!r}")
        with self._lock:
            current = self._status
            if target not in _TRANSITIONS[current]:
                raise InvalidTransitionError(self._id, current, target)
            event = StatusEvent(self._clock(), target, current, detail)
            self._status = target
            self._changed_at = event.timestamp
            if len(self._events) == self._max_events:
                self._dropped += 1
            self._events.append(event)
            registry = self._registry
            if registry is not None:
                registry._observe(self, target)
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(self, event)
            except Exception:
                _LOG.exception("status listener %r failed for worker %s", listener, self._id)
        return event

    def can_transition_to(self, status: AgentStatus | str) -> bool:
        """Whether a :meth:`transition` to ``status`` would be legal right now."""
        return AgentStatus.parse(status) in _TRANSITIONS[self._status]

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(worker, event)`` after every future transition."""
        required_callable("listener", listener)
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: StatusListener) -> None:
        """Stop calling ``listener``; raises ``InvalidValueError`` if it was never added."""
        with self._lock:
            listeners = list(self._listeners)
            if listener not in listeners:
                raise InvalidValueError(f"listener {listener!r} is not registered")
            listeners.remove(listener)
            self._listeners = tuple(listeners)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable snapshot (timestamps as ISO 8601 strings)."""
        with self._lock:
            events = [event.to_dict() for event in self._events]
            status = self._status
            dropped = self._dropped
        return {
            "id": self._id,
            "role": self._role,
            "phase": self._phase,
            "project_id": self._project_id,
            "status": status.value,
            "created_at": self._created_at.isoformat(),
            "events": events,
            "dropped_events": dropped,
        }

    def __repr__(self) -> str:
        return (
            f"AgentWorker(id={self._id!r}, role={self._role!r}, phase={self._phase!r}, "
            f"project_id={self._project_id!r}, status={self._status.value})"
        )


# -- the registry ---------------------------------------------------------------


class AgentRegistry:
    """Creates workers and finds them by id, project, role or status.

    The by-project, by-role and by-status indexes are updated on every
    transition of a registered worker (the worker tells its registry while
    holding its own lock), so each query costs O(size of its result).
    :meth:`get` raises :class:`UnknownWorkerError`; :meth:`find` returns
    ``None`` instead. Workers stay until :meth:`remove` or
    :meth:`prune_terminal`; call the latter now and then in a long-lived
    process.

    Safe to share between threads. Lock order is always worker, then
    registry; the registry never takes a worker's lock while holding its own.
    """

    __slots__ = (
        "_by_project",
        "_by_role",
        "_by_status",
        "_clock",
        "_indexed",
        "_lock",
        "_max_events",
        "_workers",
    )

    def __init__(self, *, clock: WallClock = utc_now, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        required_callable("clock", clock)
        int_at_least("max_events", max_events, 1)
        self._clock = clock
        self._max_events = max_events
        self._lock = threading.Lock()
        self._workers: dict[str, AgentWorker] = {}
        # The status each worker is indexed under: read by _drop and _observe
        # instead of worker.status, which may already be ahead of the index.
        self._indexed: dict[str, AgentStatus] = {}
        self._by_status: dict[AgentStatus, dict[str, AgentWorker]] = {s: {} for s in AgentStatus}
        self._by_project: dict[str | int | None, dict[str, AgentWorker]] = {}
        self._by_role: dict[str, dict[str, AgentWorker]] = {}

    def create(
        self,
        *,
        role: str,
        phase: str,
        project_id: str | int | None = None,
        worker_id: str | None = None,
    ) -> AgentWorker:
        """Create an IDLE worker with this registry's clock, register it and return it."""
        worker = AgentWorker(
            role=role,
            phase=phase,
            project_id=project_id,
            worker_id=worker_id,
            clock=self._clock,
            max_events=self._max_events,
        )
        with self._lock:
            self._add(worker)
        return worker

    def register(self, worker: AgentWorker) -> AgentWorker:
        """Track a worker built elsewhere (in any status) and return it.

        Raises ``InvalidValueError`` if it already belongs to a registry or
        its id is taken here.
        """
        if not isinstance(worker, AgentWorker):
            raise InvalidValueError(f"worker must be an AgentWorker, got {worker!r}")
        with worker._lock, self._lock:
            self._add(worker)
        return worker

    def get(self, worker_id: str) -> AgentWorker:
        """Return the worker with this id; raise :class:`UnknownWorkerError` if none."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise UnknownWorkerError(worker_id)
        return worker

    def find(self, worker_id: str) -> AgentWorker | None:
        """Return the worker with this id, or ``None``."""
        return self._workers.get(worker_id)

    def by_project(self, project_id: str | int | None) -> list[AgentWorker]:
        """Workers of ``project_id``, oldest registration first."""
        with self._lock:
            bucket = self._by_project.get(project_id)
            return [] if bucket is None else list(bucket.values())

    def by_role(self, role: str) -> list[AgentWorker]:
        """Workers playing ``role``, oldest registration first."""
        with self._lock:
            bucket = self._by_role.get(role)
            return [] if bucket is None else list(bucket.values())

    def by_status(self, status: AgentStatus | str) -> list[AgentWorker]:
        """Workers currently in ``status`` (a member or its name/value)."""
        target = AgentStatus.parse(status)
        with self._lock:
            return list(self._by_status[target].values())

    def status_counts(self) -> dict[AgentStatus, int]:
        """How many workers are in each status (every status present)."""
        with self._lock:
            return {status: len(bucket) for status, bucket in self._by_status.items()}

    def remove(self, worker_id: str) -> AgentWorker:
        """Stop tracking a worker and return it; raise :class:`UnknownWorkerError` if none."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                raise UnknownWorkerError(worker_id)
            self._drop(worker)
        return worker

    def prune_terminal(self, older_than: timedelta | float | None = None) -> int:
        """Remove terminal workers and return how many were removed.

        With ``older_than`` (a ``timedelta`` or seconds), only those whose
        status last changed at least that long ago by the registry's clock.
        """
        cutoff: datetime | None = None
        if older_than is not None:
            cutoff = self._clock() - _as_timedelta(older_than)
        with self._lock:
            victims = [
                worker
                for status in TERMINAL_STATUSES
                for worker in self._by_status[status].values()
                if cutoff is None or worker._changed_at <= cutoff
            ]
            for worker in victims:
                self._drop(worker)
        return len(victims)

    def __len__(self) -> int:
        return len(self._workers)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, AgentWorker):
            return self._workers.get(item.id) is item
        return isinstance(item, str) and item in self._workers

    def __iter__(self) -> Iterator[AgentWorker]:
        with self._lock:
            return iter(list(self._workers.values()))

    def __repr__(self) -> str:
        return f"AgentRegistry(workers={len(self._workers)})"

    # -- internals (callers hold self._lock) -----------------------------------

    def _add(self, worker: AgentWorker) -> None:
        if worker._registry is not None:
            raise InvalidValueError(f"worker {worker.id!r} already belongs to a registry")
        if worker.id in self._workers:
            raise InvalidValueError(f"worker id {worker.id!r} is already registered")
        worker_id = worker.id
        status = worker._status
        self._workers[worker_id] = worker
        self._indexed[worker_id] = status
        self._by_status[status][worker_id] = worker
        self._by_project.setdefault(worker.project_id, {})[worker_id] = worker
        self._by_role.setdefault(worker.role, {})[worker_id] = worker
        worker._registry = self

    def _drop(self, worker: AgentWorker) -> None:
        worker_id = worker.id
        del self._workers[worker_id]
        del self._by_status[self._indexed.pop(worker_id)][worker_id]
        _discard(self._by_project, worker.project_id, worker_id)
        _discard(self._by_role, worker.role, worker_id)
        worker._registry = None

    def _observe(self, worker: AgentWorker, new: AgentStatus) -> None:
        """Move ``worker`` to the ``new`` status bucket; called by the worker under its lock."""
        with self._lock:
            worker_id = worker.id
            if self._workers.get(worker_id) is not worker:
                return  # removed while the transition was under way
            del self._by_status[self._indexed[worker_id]][worker_id]
            self._indexed[worker_id] = new
            self._by_status[new][worker_id] = worker


def _discard(index: dict[_K, dict[str, AgentWorker]], key: _K, worker_id: str) -> None:
    bucket = index[key]
    del bucket[worker_id]
    if not bucket:
        del index[key]


def _as_timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        delta = timedelta(seconds=value)
    else:
        raise InvalidValueError(f"older_than must be a timedelta or finite seconds, got {value!r}")
    if delta < timedelta(0):
        raise InvalidValueError(f"older_than must be >= 0, got {value!r}")
    return delta
