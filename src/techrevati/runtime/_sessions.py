"""Sessions folded from their ``session.*`` events: :class:`SessionRow` and :class:`SessionStatus`.

A ``session.started`` event and one end event (``session.completed``,
``session.failed`` or ``session.cancelled``) make one row: the first start and
the last end win, and a blank never erases what an earlier event said.
:func:`sessions_from_events` folds a stream of events (a JSONL file's, say)
exactly as :class:`~techrevati.runtime.sqlite.SqliteSink` folds them into its
``sessions`` table. The public names are re-exported from
:mod:`techrevati.runtime.sinks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Final

from techrevati.runtime._record_text import decimal_text_or_none, iso_or_none
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventName

_SESSION_STARTED: Final = EventName.SESSION_STARTED.value
_SESSION_END: Final[Mapping[str, str]] = {
    EventName.SESSION_COMPLETED.value: "completed",
    EventName.SESSION_FAILED.value: "failed",
    EventName.SESSION_CANCELLED.value: "cancelled",
}

SESSION_EVENT_NAMES: Final = (_SESSION_STARTED, *_SESSION_END)
"""The event names that say something about a session's row."""


class SessionStatus(StrEnum):
    """Where a session stands in the ``sessions`` table."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session, folded from its ``session.*`` events.

    ``cost_usd``, ``duration_seconds``, ``turns`` and ``ended_at`` are ``None``
    until the session's end event is stored; ``started_at`` is ``None`` if its
    ``session.started`` event never was.
    """

    session_id: str
    status: SessionStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    cost_usd: Decimal | None = None
    turns: int | None = None
    role: str = ""
    phase: str = ""
    project_id: str | int | None = None
    worker_id: str = ""
    failure_class: AgentFailureClass | None = None
    error_type: str | None = None

    def __post_init__(self) -> None:
        non_empty_str("session_id", self.session_id)
        if not isinstance(self.status, SessionStatus):
            raise InvalidValueError(f"status must be a SessionStatus, got {self.status!r}")
        for name in ("started_at", "ended_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidValueError(f"{name} must be timezone-aware, got naive {value!r}")
        if self.cost_usd is not None and (
            not isinstance(self.cost_usd, Decimal) or not self.cost_usd.is_finite()
        ):
            raise InvalidValueError(f"cost_usd must be a finite Decimal, got {self.cost_usd!r}")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (cost as an exact decimal string, times as ISO)."""
        return {
            "session_id": self.session_id,
            "status": self.status.value,
            "started_at": iso_or_none(self.started_at),
            "ended_at": iso_or_none(self.ended_at),
            "duration_seconds": self.duration_seconds,
            "cost_usd": decimal_text_or_none(self.cost_usd),
            "turns": self.turns,
            "role": self.role,
            "phase": self.phase,
            "project_id": self.project_id,
            "worker_id": self.worker_id,
            "failure_class": None if self.failure_class is None else self.failure_class.value,
            "error_type": self.error_type,
        }


def sessions_from_events(events: Iterable[AgentEvent]) -> list[SessionRow]:
    """Fold ``session.*`` events into one :class:`SessionRow` per session, as SqliteSink does.

    Rows come in the order their sessions first appear; events without a
    ``session_id`` are skipped.
    """
    rows: dict[str, SessionRow] = {}
    for event in events:
        if is_session_event(event):
            rows[event.session_id] = fold_session(rows.get(event.session_id), event)
    return list(rows.values())


def is_session_event(event: AgentEvent) -> bool:
    """Whether ``event`` names a session and says something about its row."""
    return bool(event.session_id) and (event.name == _SESSION_STARTED or event.name in _SESSION_END)


def fold_session(old: SessionRow | None, event: AgentEvent) -> SessionRow:
    """Fold one ``session.*`` event into its session's row so far (``None``: no row yet)."""
    return _merge(old, _row_from_event(event))


def _row_from_event(event: AgentEvent) -> SessionRow:
    """Return the partial row one ``session.*`` event gives about its session."""
    if event.name == _SESSION_STARTED:
        return SessionRow(
            session_id=event.session_id,
            status=SessionStatus.RUNNING,
            started_at=event.timestamp,
            role=event.role,
            phase=event.phase,
            project_id=event.project_id,
            worker_id=event.worker_id,
        )
    data = event.data
    error_type = data.get("error_type")
    return SessionRow(
        session_id=event.session_id,
        status=SessionStatus(_SESSION_END[event.name]),
        ended_at=event.timestamp,
        duration_seconds=_number_or_none(data.get("duration_seconds")),
        cost_usd=_decimal_or_none(data.get("cost_usd")),
        turns=_int_or_none(data.get("turns")),
        role=event.role,
        phase=event.phase,
        project_id=event.project_id,
        worker_id=event.worker_id,
        failure_class=event.failure_class,
        error_type=error_type if isinstance(error_type, str) else None,
    )


def _merge(old: SessionRow | None, new: SessionRow) -> SessionRow:
    """Fold ``new`` into ``old``: the first start and the last end win; blanks never erase."""
    if old is None:
        return new
    ended = new.ended_at is not None
    return SessionRow(
        session_id=old.session_id,
        status=new.status if ended or old.ended_at is None else old.status,
        started_at=old.started_at if old.started_at is not None else new.started_at,
        ended_at=new.ended_at if ended else old.ended_at,
        duration_seconds=new.duration_seconds if ended else old.duration_seconds,
        cost_usd=new.cost_usd if ended else old.cost_usd,
        turns=new.turns if ended else old.turns,
        role=new.role or old.role,
        phase=new.phase or old.phase,
        project_id=new.project_id if new.project_id is not None else old.project_id,
        worker_id=new.worker_id or old.worker_id,
        failure_class=new.failure_class if ended else old.failure_class,
        error_type=new.error_type if ended else old.error_type,
    )


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _decimal_or_none(value: object) -> Decimal | None:
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None
