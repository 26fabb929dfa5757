"""How records become rows of the SQLite sink's tables and back, and how a batch is stored.

The column lists here fix the order of every row tuple, so the writers
(``*_row``) and the readers (``*_from_row``) cannot disagree. A record becomes
a :data:`SqliteItem` on the caller's thread (:func:`record_item`), checked
value by value against what its column can hold, so that the writer never
meets a row SQLite refuses; :func:`sanitised_item` makes a storable row of one
that is not, and :func:`rejected_item` the ``rejected`` row of one that cannot
be. :func:`store_batch` writes one batch in one ``BEGIN IMMEDIATE``
transaction, all or nothing, folding ``session.*`` events into the
``sessions`` table as it goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, cast

from techrevati.runtime._record_text import (
    INT64_MAX,
    INT64_MIN,
    check_utf8,
    decimal_text,
    dumps,
    escaped,
    iso,
    sanitised,
)
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
    "priced, duration_seconds, service_tier"
)
USAGE_COLUMNS_V3: Final = USAGE_COLUMNS.replace("service_tier", "NULL AS service_tier")
"""What :data:`USAGE_COLUMNS` reads from a schema-3 file, which has no ``service_tier``."""
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
_INSERT_USAGE: Final = f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({', '.join('?' * 17)})"
_UPSERT_SESSION: Final = (
    f"INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(_SESSION_FIELDS))})"
)
_INSERT_REJECTED: Final = "INSERT INTO rejected (ts, kind, reason, record) VALUES (?, ?, ?, ?)"

EVENT_ROW: Final = 0
USAGE_ROW: Final = 1
REJECTED_ROW: Final = 2
SqliteItem = tuple[int, tuple[object, ...], AgentEvent | None]
"""One record as the SQLite sink buffers it: which table, the row, and a session event to fold."""

# What each column of a row holds. T: text; t: text or NULL; I: a 64-bit int;
# i: a 64-bit int or NULL; R: a number or NULL; V: anything SQLite stores (project_id).
_EVENT_KINDS: Final = "TTTTVTTttttT"
_USAGE_KINDS: Final = "TTTVTTTIIIIIITIRt"
_SESSION_KINDS: Final = "TTttRtiTTVTtt"
_TEXT: Final = frozenset("TtV")
_NULL: Final = frozenset("tiRV")
_INT: Final = frozenset("IiRV")
_REAL: Final = frozenset("RV")


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


def record_item(record: Record) -> SqliteItem:
    """Return the row of ``record``; raise if a value is not one its column can hold."""
    if isinstance(record, AgentEvent):
        row = _event_row(record)
        if not _plain_event_row(row):
            check_row(row, _EVENT_KINDS)
        if not is_session_event(record):
            return (EVENT_ROW, row, None)
        values = fold_session(None, record).to_dict()  # the fold at write time merges these
        check_row(tuple(values[field] for field in _SESSION_FIELDS), _SESSION_KINDS)
        return (EVENT_ROW, row, record)
    row = _usage_row(record)
    if not _plain_usage_row(record):
        check_row(row, _USAGE_KINDS)
    return (USAGE_ROW, row, None)


def _plain_event_row(row: tuple[object, ...]) -> bool:
    """Whether an events row is plainly storable: the common case, checked at a glance.

    ``ts``, ``name``, ``failure_class``, ``model`` and ``data`` are text or
    NULL by construction; the rest are typed only by their annotations.
    """
    _, name, session_id, worker_id, project_id, role, phase, status, _, detail, model, data = row
    if not (
        type(session_id) is str
        and type(worker_id) is str
        and type(role) is str
        and type(phase) is str
        and (status is None or type(status) is str)
        and (detail is None or type(detail) is str)
        and (project_id is None or type(project_id) is str or type(project_id) is int)
    ):
        return False
    text = f"{name}{session_id}{worker_id}{role}{phase}{status}{detail}{model}{data}{project_id}"
    return text.isascii() and (type(project_id) is not int or INT64_MIN <= project_id <= INT64_MAX)


def _plain_usage_row(record: UsageRecord) -> bool:
    """Whether a usage record's row is plainly storable (tokens are ints >= 0 by construction)."""
    project_id: object = record.project_id
    duration: object = record.duration_seconds
    tier: object = record.service_tier
    if not (
        (tier is None or (type(tier) is str and tier.isascii()))
        and type(record.session_id) is str
        and type(record.worker_id) is str
        and type(record.role) is str
        and type(record.phase) is str
        and type(record.model) is str
        and (project_id is None or type(project_id) is str or type(project_id) is int)
        and (duration is None or type(duration) is float or type(duration) is int)
    ):
        return False
    text = f"{record.session_id}{record.worker_id}{record.role}{record.phase}{record.model}"
    return (
        text.isascii()
        and (type(project_id) is not str or project_id.isascii())
        and (type(project_id) is not int or INT64_MIN <= project_id <= INT64_MAX)
        and max(
            record.input_tokens,
            record.output_tokens,
            record.cache_read_tokens,
            record.cache_write_tokens,
            record.reasoning_tokens,
            record.cache_write_1h_tokens,
        )
        <= INT64_MAX
        and (type(duration) is not int or INT64_MIN <= duration <= INT64_MAX)
    )


def sanitised_item(record: Record, notes: set[str]) -> SqliteItem:
    """Return the row of a storable copy of ``record``; raise if there is none.

    Text is escaped, ints beyond 64 bits become text where the column takes
    text (``project_id``, ``data``); a token count beyond 64 bits has no
    storable form (the record is then rejected).
    """
    if isinstance(record, AgentEvent):
        data = sanitised(dict(record.data), notes, int64=True)
        clean = AgentEvent(
            name=cast(str, _cell(record.name, "T", notes)),
            role=cast(str, _cell(record.role, "T", notes)),
            phase=cast(str, _cell(record.phase, "T", notes)),
            status=cast("str | None", _cell(record.status, "t", notes)),
            failure_class=record.failure_class,
            detail=cast("str | None", _cell(record.detail, "t", notes)),
            data=cast("dict[str, object]", data),
            timestamp=record.timestamp,
            session_id=cast(str, _cell(record.session_id, "T", notes)),
            worker_id=cast(str, _cell(record.worker_id, "T", notes)),
            project_id=cast("str | int | None", _cell(record.project_id, "V", notes)),
        )
        return record_item(clean)
    row = tuple(_cell(v, k, notes) for v, k in zip(_usage_row(record), _USAGE_KINDS, strict=True))
    check_row(row, _USAGE_KINDS)
    return (USAGE_ROW, row, None)


def rejected_item(record: Record, reason: str) -> SqliteItem:
    """Return the ``rejected`` row that quarantines ``record``, with the reason; never raises."""
    try:
        text = dumps(sanitised(record.to_dict(), set()))
    except Exception:
        try:
            text = escaped(repr(record))
        except Exception:
            text = f"<unprintable {type(record).__name__}>"
    kind = "event" if isinstance(record, AgentEvent) else "usage"
    return (REJECTED_ROW, (iso(record.timestamp), kind, escaped(reason), text), None)


def check_row(row: Sequence[object], kinds: str) -> None:
    """Raise ``TypeError``, ``OverflowError`` or ``UnicodeEncodeError`` for a refused value."""
    for value, kind in zip(row, kinds, strict=True):
        of = type(value)
        if of is str:
            if kind in _TEXT:
                check_utf8(cast(str, value))
                continue
        elif value is None:
            if kind in _NULL:
                continue
        elif of is int:
            if kind in _INT:
                if INT64_MIN <= cast(int, value) <= INT64_MAX:
                    continue
                raise OverflowError(f"{value} does not fit SQLite's 64-bit integers")
        elif of is float and kind in _REAL:
            continue
        raise TypeError(f"{of.__name__} {value!r:.80} is no value for a column of kind {kind}")


def store_batch(conn: sqlite3.Connection, batch: Sequence[SqliteItem]) -> None:
    """Insert a batch of rows, and fold its session events, atomically."""
    events: list[tuple[object, ...]] = []
    usage: list[tuple[object, ...]] = []
    rejected: list[tuple[object, ...]] = []
    session_events: list[AgentEvent] = []
    for table, row, session_event in batch:
        if table == EVENT_ROW:
            events.append(row)
            if session_event is not None:
                session_events.append(session_event)
        elif table == USAGE_ROW:
            usage.append(row)
        else:
            rejected.append(row)
    with write_transaction(conn):
        if events:
            conn.executemany(_INSERT_EVENT, events)
        if usage:
            conn.executemany(_INSERT_USAGE, usage)
        if rejected:
            conn.executemany(_INSERT_REJECTED, rejected)
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
    (inp, out, cache_read, cache_write, reasoning, one_hour, cost, priced, duration) = row[7:16]
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
        service_tier=cast("str | None", row[16]),
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
        record.service_tier,
    )


def _cell(value: object, kind: str, notes: set[str]) -> object:
    """``value`` as its column of ``kind`` can hold it, noting what changed; raise if it cannot."""
    if value is None and kind in _NULL:
        return None
    if isinstance(value, str):
        clean = escaped(value)
        if clean != value:
            notes.add("lone surrogate escaped")
        return clean
    if kind in "Tt" or (kind == "V" and not isinstance(value, (int, float))):
        notes.add("non-text value as text")
        return escaped("" if value is None else str(value))
    if isinstance(value, (int, float)) and kind == "R":
        return float(value)  # OverflowError for an int no float holds: rejected
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX and kind == "V":
        notes.add("int beyond 64 bits as text")
        return str(value) if value.bit_length() < 14_000 else hex(value)
    return value  # an int or float; check_row refuses one its column cannot hold
