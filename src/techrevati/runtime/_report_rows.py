"""The report command's tolerant readers: each row of a sink's file as a record or a reason.

The sinks' own readers (:func:`~techrevati.runtime.sinks.read_jsonl`,
:class:`~techrevati.runtime.sinks.SqliteReader`) raise at the first bad row;
the report skips it instead and says why. Each row is checked field by field
(types; counts within SQLite's integers; times with a UTC offset; durations
from 0 to 1e10 s; costs from 0 to below 1e15 USD with an exponent from -15 to
15, the money grid) and then built with the public constructors, so every
record read here is one the sinks could have written and prints in bounded
space. Both readers stream: one row in memory at a time. Private to
:mod:`techrevati.runtime.report`.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final, Literal

from techrevati.runtime._sessions import SESSION_EVENT_NAMES, SessionRow, SessionStatus
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventName, UsageRecord
from techrevati.runtime.sqlite import DEFAULT_BUSY_TIMEOUT

__all__ = ["MAX_COST_USD", "Malformed", "read_jsonl_rows", "read_sqlite_rows"]

MAX_COST_USD: Final = Decimal("1e15")
"""Costs must be below this; a larger one is a malformed row, not a figure."""

_MONEY_EXPONENT: Final = 15
"""A cost's exponent must lie in [-15, 15]: the 1e-15 USD grid, and no padding beyond 1e15."""
_MAX_INT: Final = 2**63 - 1
"""SQLite's largest integer: counts and numeric project ids must fit in it."""
_MAX_SECONDS: Final = 1e10
"""Durations must be below this (about 317 years)."""
_MAX_NUMBER_TEXT: Final = 64
"""A cost written as text longer than this is refused before it is parsed."""
_MAX_REASON: Final = 200
_MAX_TIER: Final = 64
_SHOWN: Final = 40
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SESSION_ENDS: Final = frozenset(
    {
        EventName.SESSION_COMPLETED.value,
        EventName.SESSION_FAILED.value,
        EventName.SESSION_CANCELLED.value,
    }
)
_EVENT_COLUMNS: Final = (
    ("timestamp", "ts"),
    ("name", "name"),
    ("session_id", "session_id"),
    ("worker_id", "worker_id"),
    ("project_id", "project_id"),
    ("role", "role"),
    ("phase", "phase"),
    ("status", "status"),
    ("failure_class", "failure_class"),
    ("detail", "detail"),
    ("data", "data"),
)
_USAGE_FIELDS: Final = (
    "session_id",
    "worker_id",
    "project_id",
    "role",
    "phase",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
    "cost_usd",
    "priced",
    "duration_seconds",
    "service_tier",
)
_USAGE_COLUMNS: Final = (("timestamp", "ts"), *((name, name) for name in _USAGE_FIELDS))
_USAGE_COLUMNS_V3: Final = (*_USAGE_COLUMNS[:-1], ("service_tier", "NULL"))
"""A schema-3 file's usage table has no ``service_tier``: read as NULL (no tier reported)."""
_SESSION_COLUMNS: Final = tuple((f.name, f.name) for f in dataclasses.fields(SessionRow))
_TOKEN_FIELDS: Final = _USAGE_FIELDS[6:12]

Record = AgentEvent | UsageRecord | SessionRow
Source = Literal["events", "usage", "sessions", "event", "other"]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A row that is not a record: its table or kind, its rowid or line number, and why.

    ``source`` is the SQLite table (``events``, ``usage``, ``sessions``) or
    the JSONL line's kind (``event``, ``usage``; ``other`` for a line that is
    not JSON, not an object, or of no known kind). ``reason`` is at most 200
    characters and shows at most 40 characters of any value.
    """

    source: Source
    row: int
    reason: str


class _BadFieldError(ValueError):
    """One field of a row is wrong; the message names it and shows the value, shortened."""


def read_jsonl_rows(path: Path) -> Generator[AgentEvent | UsageRecord | Malformed, None, None]:
    """Yield each line of a JsonlSink file as a record or a :class:`Malformed`, in order.

    Blank lines are ignored and a last line without its newline (cut by a
    crash mid-write) is dropped, as :func:`~techrevati.runtime.sinks.read_jsonl` does.
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return
            if not line.isspace():
                yield _jsonl_record(line, number)


def read_sqlite_rows(path: Path) -> Generator[Record | Malformed, None, None]:
    """Yield every row of the events, usage and sessions tables as a record or a :class:`Malformed`.

    Events and usage come in ``(ts, id)`` order, as the sinks' readers return
    them. The file must already have passed the schema check (open it with
    :class:`~techrevati.runtime.sinks.SqliteReader` first). Close the
    generator to close its connection.
    """
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=DEFAULT_BUSY_TIMEOUT, isolation_level=None)
    try:
        # Text that is not UTF-8 arrives with surrogates (refused per field), not as an error
        # that would end the whole query; a BLOB arrives as bytes (refused per field too).
        conn.text_factory = operator.methodcaller("decode", "utf-8", "surrogateescape")
        for fields in _select(conn, "events", "id", _EVENT_COLUMNS, "ts, id"):
            yield _checked("events", fields, _event_from_row)
        tiered = any(row[1] == "service_tier" for row in conn.execute("PRAGMA table_info(usage)"))
        columns = _USAGE_COLUMNS if tiered else _USAGE_COLUMNS_V3
        for fields in _select(conn, "usage", "id", columns, "ts, id"):
            yield _checked("usage", fields, _usage_from)
        for fields in _select(conn, "sessions", "rowid", _SESSION_COLUMNS, "rowid"):
            yield _checked("sessions", fields, _session_from_row)
    finally:
        conn.close()


def _select(
    conn: sqlite3.Connection,
    table: str,
    rowid: str,
    columns: tuple[tuple[str, str], ...],
    order: str,
) -> Iterator[dict[str, object]]:
    names = [name for name, _ in columns]
    sql = f"SELECT {rowid}, {', '.join(column for _, column in columns)} FROM {table}"
    for row in conn.execute(f"{sql} ORDER BY {order}"):
        yield {"#": row[0], **dict(zip(names, row[1:], strict=True))}


def _checked(
    source: Source, fields: dict[str, object], build: Callable[[Mapping[str, object]], Record]
) -> Record | Malformed:
    row = fields.pop("#")
    try:
        return build(fields)
    except ValueError as exc:
        return Malformed(source, row if isinstance(row, int) else 0, _clip(str(exc)))


def _jsonl_record(line: bytes, number: int) -> AgentEvent | UsageRecord | Malformed:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return Malformed("other", number, _clip(f"not JSON: {exc}"))
    if not isinstance(obj, dict):
        return Malformed("other", number, f"not a JSON object but {_kind_of(obj)}")
    kind = obj.get("kind")
    try:
        if kind == "event":
            return _event_from_json(obj)
        if kind == "usage":
            return _usage_from(obj)
    except ValueError as exc:
        return Malformed("event" if kind == "event" else "usage", number, _clip(str(exc)))
    return Malformed("other", number, f"kind must be 'event' or 'usage', got {_shown(kind)}")


def _event_from_row(fields: Mapping[str, object]) -> AgentEvent:
    """Build an ``events`` row's event; ``data`` must be JSON text (or empty), and is not kept.

    The report reads nothing from a stored event's data (sessions come from
    their own table), so only its shape is checked, as the sinks' reader
    parses it; a non-object reads as ``{}`` there too.
    """
    text = fields["data"]
    if text is not None and text != "":
        try:
            json.loads(_text("data", text))
        except (RecursionError, ValueError) as exc:
            raise _BadFieldError(f"data is not JSON: {exc}") from None
    return _event(fields, {})


def _event_from_json(obj: Mapping[str, object]) -> AgentEvent:
    """Build a JSONL event: ``data`` must be an object, a session end's figures good."""
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise _BadFieldError(f"data must be an object, got {_kind_of(data)}")
    name = obj.get("name")
    session_id = obj.get("session_id")
    # "" names no session; "  " names one that could have no row in the sessions table.
    blank = isinstance(session_id, str) and session_id and not session_id.strip()
    if blank and name in SESSION_EVENT_NAMES:
        raise _BadFieldError(f"session_id must not be blank, got {_shown(session_id)}")
    if isinstance(name, str) and name in _SESSION_ENDS:
        _seconds("data.duration_seconds", data.get("duration_seconds"))
        if data.get("cost_usd") is not None:
            _cost("data.cost_usd", data["cost_usd"])
        if data.get("turns") is not None:
            _count("data.turns", data["turns"])
    return _event(obj, data)


def _event(fields: Mapping[str, object], data: Mapping[str, object]) -> AgentEvent:
    return AgentEvent(
        name=_name("name", fields.get("name")),
        role=_text("role", fields.get("role", "")),
        phase=_text("phase", fields.get("phase", "")),
        status=_text_or_none("status", fields.get("status")),
        failure_class=_failure(fields.get("failure_class")),
        detail=_text_or_none("detail", fields.get("detail")),
        data=data,
        timestamp=_when("timestamp", fields.get("timestamp")),
        session_id=_text("session_id", fields.get("session_id", "")),
        worker_id=_text("worker_id", fields.get("worker_id", "")),
        project_id=_project(fields.get("project_id")),
    )


def _usage_from(fields: Mapping[str, object]) -> UsageRecord:
    """Build the usage record of a ``usage`` row or a JSONL line (the same field names)."""
    tokens = {name: _count(name, fields.get(name, 0)) for name in _TOKEN_FIELDS}
    return UsageRecord(
        model=_text("model", fields.get("model")),
        **tokens,
        cost_usd=_cost("cost_usd", fields.get("cost_usd", "0")),
        priced=_flag("priced", fields.get("priced", True)),
        duration_seconds=_seconds("duration_seconds", fields.get("duration_seconds")),
        role=_text("role", fields.get("role", "")),
        phase=_text("phase", fields.get("phase", "")),
        session_id=_text("session_id", fields.get("session_id", "")),
        worker_id=_text("worker_id", fields.get("worker_id", "")),
        project_id=_project(fields.get("project_id")),
        timestamp=_when("timestamp", fields.get("timestamp")),
        service_tier=_tier(fields.get("service_tier")),
    )


def _tier(value: object) -> str | None:
    """Return a service tier: a name of at most 64 characters, or null (none reported)."""
    if value is None:
        return None
    text = _text("service_tier", value)
    if not text.strip() or len(text) > _MAX_TIER:
        raise _BadFieldError(
            f"service_tier must be a name of 1 to {_MAX_TIER} characters, got {_shown(value)}"
        )
    return text


def _session_from_row(fields: Mapping[str, object]) -> SessionRow:
    status = _text("status", fields["status"])
    try:
        session_status = SessionStatus(status)
    except ValueError:
        raise _BadFieldError(f"status must be a session status, got {_shown(status)}") from None
    cost = fields["cost_usd"]
    turns = fields["turns"]
    return SessionRow(
        session_id=_name("session_id", fields["session_id"]),
        status=session_status,
        started_at=_when_or_none("started_at", fields["started_at"]),
        ended_at=_when_or_none("ended_at", fields["ended_at"]),
        duration_seconds=_seconds("duration_seconds", fields["duration_seconds"]),
        cost_usd=None if cost is None else _cost("cost_usd", cost),
        turns=None if turns is None else _count("turns", turns),
        role=_text("role", fields["role"]),
        phase=_text("phase", fields["phase"]),
        project_id=_project(fields["project_id"]),
        worker_id=_text("worker_id", fields["worker_id"]),
        failure_class=_failure(fields["failure_class"]),
        error_type=_text_or_none("error_type", fields["error_type"]),
    )


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _BadFieldError(f"{name} must be a string, got {_shown(value)}")
    if not value.isascii() and _SURROGATE.search(value):
        raise _BadFieldError(f"{name} is not UTF-8 text, got {_shown(value)}")
    return value


def _text_or_none(name: str, value: object) -> str | None:
    return None if value is None else _text(name, value)


def _name(name: str, value: object) -> str:
    if not _text(name, value).strip():
        raise _BadFieldError(f"{name} must not be blank, got {_shown(value)}")
    return str(value)


def _project(value: object) -> str | int | None:
    if value is None or isinstance(value, str):
        return None if value is None else _text("project_id", value)
    if isinstance(value, int) and not isinstance(value, bool):
        if -_MAX_INT - 1 <= value <= _MAX_INT:
            return value
        raise _BadFieldError(f"project_id must fit in 64 bits, got {_shown(value)}")
    raise _BadFieldError(f"project_id must be a string, an integer or null, got {_shown(value)}")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadFieldError(f"{name} must be an integer, got {_shown(value)}")
    if not 0 <= value <= _MAX_INT:
        raise _BadFieldError(f"{name} must be from 0 to 2**63 - 1, got {_shown(value)}")
    return value


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise _BadFieldError(f"{name} must be true or false, got {_shown(value)}")


def _seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadFieldError(f"{name} must be a number of seconds, got {_shown(value)}")
    if not 0 <= value < _MAX_SECONDS:  # NaN fails this too
        raise _BadFieldError(f"{name} must be from 0 to below 1e10 seconds, got {_shown(value)}")
    return float(value)


def _cost(name: str, value: object) -> Decimal:
    """Return a cost: a decimal from 0 to below 1e15 USD, its exponent on the money grid."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _BadFieldError(f"{name} must be a decimal string, got {_shown(value)}")
    if isinstance(value, str) and len(value) > _MAX_NUMBER_TEXT:
        raise _BadFieldError(f"{name} is too long for a cost ({len(value)} characters)")
    try:
        number = Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, ValueError):
        raise _BadFieldError(f"{name} must be a decimal number, got {_shown(value)}") from None
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int) or (number.is_signed() and number):
        raise _BadFieldError(f"{name} must be a finite amount >= 0, got {_shown(value)}")
    if number >= MAX_COST_USD or not -_MONEY_EXPONENT <= exponent <= _MONEY_EXPONENT:
        raise _BadFieldError(
            f"{name} must be below 1e15 USD with an exponent from -15 to 15, got {_shown(value)}"
        )
    return number


def _when(name: str, value: object) -> datetime:
    text = _text(name, value)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _BadFieldError(f"{name} must be an ISO 8601 time, got {_shown(value)}") from None
    if when.tzinfo is None:
        raise _BadFieldError(f"{name} must have a UTC offset, got {_shown(value)}")
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise _BadFieldError(f"{name} is out of range in UTC, got {_shown(value)}") from None
    return when


def _when_or_none(name: str, value: object) -> datetime | None:
    return None if value is None else _when(name, value)


def _failure(value: object) -> AgentFailureClass | None:
    if value is None:
        return None
    try:
        return AgentFailureClass(_text("failure_class", value))
    except ValueError:
        raise _BadFieldError(f"failure_class must be a known class, got {_shown(value)}") from None


def _kind_of(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _shown(value: object) -> str:
    """Show a bad value in a reason: its first 40 characters, or what kind of value it is."""
    if isinstance(value, str):
        return repr(value) if len(value) <= _SHOWN else f"{value[:_SHOWN]!r}..."
    if isinstance(value, bytes):
        return f"a BLOB of {len(value)} bytes"
    if isinstance(value, (bool, float)) or value is None:
        return repr(value)
    if isinstance(value, int):
        big = f"an integer of {value.bit_length()} bits"
        return repr(value) if abs(value) < 10**_SHOWN else big
    return _kind_of(value)


def _clip(reason: str) -> str:
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
