"""How records become rows of the SQLite sink's tables and back, and how a batch is stored.

The column lists here fix the order of every row tuple, so the writers
(``*_row``) and the readers (``*_from_row``) cannot disagree. :func:`store_batch`
writes one batch in one ``BEGIN IMMEDIATE`` transaction, all or nothing,
folding ``session.*`` events into the ``sessions`` table as it goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, cast

from techrevati.runtime._record_text import decimal_text, dumps, iso
from techrevati.runtime._sessions import (
    SessionRow,
    SessionStatus,
    fold_session,
    is_session_event,
)
from techrevati.runtime._sink_base import Record
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord

if TYPE_CHECKING:
    import sqlite3

EVENT_COLUMNS: Final = (
    "ts, name, session_id, worker_id, project_id, role, phase, status, failure_class, detail, data"
)
USAGE_COLUMNS: Final = (
    "ts, session_id, worker_id, project_id, role, phase, model, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, reasoning_tokens, cache_write_1h_tokens, cost_usd, "
    "priced, duration_seconds"
)
_SESSION_FIELDS: Final = (
    "session_id",
    "status",
    "started_at",
    "ended_at",
    "duration_seconds",
    "cost_usd",
    "turns",
    "role",
    "phase",
    "project_id",
    "worker_id",
    "failure_class",
    "error_type",
)
SESSION_COLUMNS: Final = ", ".join(_SESSION_FIELDS)
_INSERT_EVENT: Final = (
    "INSERT INTO events (ts, name, session_id, worker_id, project_id, role, phase, status, "
    "failure_class, detail, model, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_USAGE: Final = f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({', '.join('?' * 16)})"
_UPSERT_SESSION: Final = (
    f"INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(_SESSION_FIELDS))})"
)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction: commit it whole, or roll it back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def store_batch(conn: sqlite3.Connection, batch: Sequence[Record]) -> None:
    """Insert a batch of events and usage records, and fold its session events, atomically."""
    events: list[tuple[object, ...]] = []
    usage: list[tuple[object, ...]] = []
    session_events: list[AgentEvent] = []
    for record in batch:
        if isinstance(record, AgentEvent):
            events.append(_event_row(record))
            if is_session_event(record):
                session_events.append(record)
        else:
            usage.append(_usage_row(record))
    with write_transaction(conn):
        if events:
            conn.executemany(_INSERT_EVENT, events)
        if usage:
            conn.executemany(_INSERT_USAGE, usage)
        for event in session_events:
            store_session_event(conn, event)


def store_session_event(conn: sqlite3.Connection, event: AgentEvent) -> None:
    """Fold one ``session.*`` event into its row (inside the caller's transaction)."""
    row = conn.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (event.session_id,)
    ).fetchone()
    merged = fold_session(None if row is None else session_from_row(row), event)
    values = merged.to_dict()
    conn.execute(_UPSERT_SESSION, tuple(values[field] for field in _SESSION_FIELDS))


def event_from_row(row: Sequence[object]) -> AgentEvent:
    """Return the event an ``events`` row in :data:`EVENT_COLUMNS` order holds."""
    ts, name, session_id, worker_id, project_id, role, phase, status, failure, detail, data = row
    return AgentEvent(
        name=cast(str, name),
        role=cast(str, role),
        phase=cast(str, phase),
        status=cast("str | None", status),
        failure_class=None if failure is None else AgentFailureClass(cast(str, failure)),
        detail=cast("str | None", detail),
        data=json_object(data),
        timestamp=datetime.fromisoformat(cast(str, ts)),
        session_id=cast(str, session_id),
        worker_id=cast(str, worker_id),
        project_id=cast("str | int | None", project_id),
    )


def usage_from_row(row: Sequence[object]) -> UsageRecord:
    """Return the usage record a ``usage`` row in :data:`USAGE_COLUMNS` order holds."""
    (ts, session_id, worker_id, project_id, role, phase, model) = row[:7]
    (inp, out, cache_read, cache_write, reasoning, one_hour, cost, priced, duration) = row[7:]
    return UsageRecord(
        model=cast(str, model),
        input_tokens=cast(int, inp),
        output_tokens=cast(int, out),
        cache_read_tokens=cast(int, cache_read),
        cache_write_tokens=cast(int, cache_write),
        reasoning_tokens=cast(int, reasoning),
        cache_write_1h_tokens=cast(int, one_hour),
        cost_usd=Decimal(cast(str, cost)),
        priced=bool(priced),
        duration_seconds=cast("float | None", duration),
        role=cast(str, role),
        phase=cast(str, phase),
        session_id=cast(str, session_id),
        worker_id=cast(str, worker_id),
        project_id=cast("str | int | None", project_id),
        timestamp=datetime.fromisoformat(cast(str, ts)),
    )


def session_from_row(row: Sequence[object]) -> SessionRow:
    """Return the session a ``sessions`` row in :data:`SESSION_COLUMNS` order holds."""
    (session_id, status, started, ended, duration, cost, turns) = row[:7]
    (role, phase, project_id, worker_id, failure, error_type) = row[7:]
    return SessionRow(
        session_id=cast(str, session_id),
        status=SessionStatus(cast(str, status)),
        started_at=None if started is None else datetime.fromisoformat(cast(str, started)),
        ended_at=None if ended is None else datetime.fromisoformat(cast(str, ended)),
        duration_seconds=cast("float | None", duration),
        cost_usd=None if cost is None else Decimal(cast(str, cost)),
        turns=cast("int | None", turns),
        role=cast(str, role),
        phase=cast(str, phase),
        project_id=cast("str | int | None", project_id),
        worker_id=cast(str, worker_id),
        failure_class=None if failure is None else AgentFailureClass(cast(str, failure)),
        error_type=cast("str | None", error_type),
    )


def json_object(text: object) -> dict[str, object]:
    """Return the JSON object a ``data`` column holds (``{}`` for none, or for a non-object)."""
    value = json.loads(cast(str, text)) if text else {}
    return value if isinstance(value, dict) else {}


def model_of(data: Mapping[str, object]) -> str | None:
    """Return the ``model`` an event's data names (stored in its own column, to filter on)."""
    model = data.get("model")
    return model if isinstance(model, str) else None


def _event_row(event: AgentEvent) -> tuple[object, ...]:
    return (
        iso(event.timestamp),
        str(event.name),
        event.session_id,
        event.worker_id,
        event.project_id,
        event.role,
        event.phase,
        event.status,
        None if event.failure_class is None else event.failure_class.value,
        event.detail,
        model_of(event.data),
        dumps(dict(event.data)),
    )


def _usage_row(record: UsageRecord) -> tuple[object, ...]:
    return (
        iso(record.timestamp),
        record.session_id,
        record.worker_id,
        record.project_id,
        record.role,
        record.phase,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        record.reasoning_tokens,
        record.cache_write_1h_tokens,
        decimal_text(record.cost_usd),
        int(record.priced),
        record.duration_seconds,
    )
