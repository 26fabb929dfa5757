"""The SQLite sink: events, usage and one row per session in a versioned WAL database.

Reach for :class:`SqliteSink` when several threads or processes write the
same records, when they must survive ``kill -9`` up to the last flushed
batch, or when you want to query them: its ``read_*`` methods and
:class:`SqliteReader` (read-only) filter by project, role, phase, model,
session and time and return typed records. This is the only module that
imports :mod:`sqlite3`; everything here is also importable from
:mod:`techrevati.runtime.sinks`, lazily.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, TypeVar

from techrevati.runtime._clock import Clock
from techrevati.runtime._record_text import iso
from techrevati.runtime._sessions import SessionRow, SessionStatus
from techrevati.runtime._sink_base import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WAIT,
    BufferedSink,
    ClosesOnExit,
    Record,
)
from techrevati.runtime._sqlite_rows import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    USAGE_COLUMNS,
    USAGE_COLUMNS_V3,
    SqliteItem,
    event_from_row,
    record_item,
    rejected_item,
    sanitised_item,
    session_from_row,
    store_batch,
    usage_from_row,
)
from techrevati.runtime._sqlite_schema import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    SQLITE_APPLICATION_ID,
    check_schema,
    ensure_schema,
)
from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import InvalidValueError, SchemaError, SinkClosedError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "SQLITE_APPLICATION_ID",
    "SchemaError",
    "SqliteReader",
    "SqliteSink",
]

DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a :class:`SqliteSink` waits for another process's write lock."""

_SYNCHRONOUS: Final = frozenset({"full", "normal"})
_T = TypeVar("_T")


class _SqliteQueries:
    """The typed, filtered readers shared by :class:`SqliteSink` and :class:`SqliteReader`."""

    _usage_columns: str = USAGE_COLUMNS
    """What ``read_usage`` selects: a schema-3 file (read-only) has no ``service_tier``."""

    def read_events(
        self,
        *,
        name: str | None = None,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        failure_class: AgentFailureClass | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AgentEvent]:
        """Return stored events matching every given filter, oldest first.

        ``since`` is inclusive and ``until`` exclusive (aware datetimes);
        ``project`` matches ``42`` and ``"42"`` alike; ``model`` matches the
        event's ``data["model"]``.
        """
        where = _Where()
        where.equal("name", name)
        where.project(project)
        where.equal("role", role)
        where.equal("phase", phase)
        where.equal("model", model)
        where.equal("session_id", session_id)
        where.equal("failure_class", None if failure_class is None else str(failure_class))
        where.time_range("ts", since, until)
        sql = f"SELECT {EVENT_COLUMNS} FROM events{where.sql(limit, newest_first)}"
        return self._select(sql, where, event_from_row)

    def read_usage(
        self,
        *,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[UsageRecord]:
        """Return stored usage records matching every given filter, oldest first."""
        where = _Where()
        where.project(project)
        where.equal("role", role)
        where.equal("phase", phase)
        where.equal("model", model)
        where.equal("session_id", session_id)
        where.time_range("ts", since, until)
        sql = f"SELECT {self._usage_columns} FROM usage{where.sql(limit, newest_first)}"
        return self._select(sql, where, usage_from_row)

    def read_sessions(
        self,
        *,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        session_id: str | None = None,
        status: SessionStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[SessionRow]:
        """Return sessions matching every given filter, by start time (end time if unknown)."""
        where = _Where()
        where.project(project)
        where.equal("role", role)
        where.equal("phase", phase)
        where.equal("session_id", session_id)
        where.equal("status", None if status is None else str(status))
        where.time_range("COALESCE(started_at, ended_at)", since, until)
        order = ("COALESCE(started_at, ended_at)", "session_id")
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions{where.sql(limit, newest_first, order)}"
        return self._select(sql, where, session_from_row)

    def _select(
        self, sql: str, where: _Where, convert: Callable[[Sequence[object]], _T]
    ) -> list[_T]:
        with self._reading() as conn:
            rows = conn.execute(sql, where.params).fetchall()
        return [convert(row) for row in rows]

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError


class SqliteSink(_SqliteQueries, BufferedSink[SqliteItem]):
    """Store events, usage and one row per session in a SQLite database (WAL mode).

    Records are buffered and written in one ``BEGIN IMMEDIATE`` transaction
    per batch: every ``flush_every`` records or ``flush_interval`` seconds
    (measured with ``clock``), on a background thread, or inline on the
    writing thread with ``background=False``. Each batch commits whole or not
    at all, so after ``kill -9`` the file opens cleanly with every record up
    to the last flushed batch.

    ``synchronous="full"`` (default) syncs the write-ahead log at each commit,
    so a power loss keeps every committed batch too; ``"normal"`` skips that
    sync (faster; a power loss may lose the last batches, ``kill -9`` still
    loses none). Opening an older schema migrates it in place; every open
    also creates the ``rejected`` table and the ``turns`` and
    ``session_summary`` views if the file lacks them.

    Each record becomes its row on the caller's thread. A value no column
    can hold as given (a lone surrogate, an int beyond 64 bits as
    ``project_id`` or inside ``data``, a cycle or nesting past the depth
    limit in ``data``, a key JSON refuses) is stored sanitised and counted in
    :attr:`sanitised`; a record with no storable form (a token count beyond
    64 bits) goes to the ``rejected`` table with the reason and its JSON, and
    is counted in :attr:`rejected`.

    Safe to share between threads (one connection guarded by a lock) and
    between processes writing the same file (``busy_timeout``). Writes after
    :meth:`close` raise :class:`~techrevati.runtime.sinks.SinkClosedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Clock = time.monotonic,
        background: bool = True,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_flush: Callable[[int], object] | None = None,
        max_lag: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise InvalidValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if (
            not isinstance(busy_timeout, (int, float))
            or isinstance(busy_timeout, bool)
            or not 0 <= busy_timeout < float("inf")
        ):
            raise InvalidValueError(f"busy_timeout must be a number >= 0, got {busy_timeout!r}")
        file = Path(path)
        self._conn = sqlite3.connect(
            file,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        with _closed_on_error(self._conn, f"{file} is not a usable SQLite database"):
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            ensure_schema(self._conn, str(file))
        super().__init__(
            file,
            flush_every=flush_every,
            flush_interval=flush_interval,
            clock=clock,
            background=background,
            max_pending=max_pending,
            on_flush=on_flush,
            max_lag=max_lag,
            max_wait=max_wait,
        )

    def _encode(self, record: Record) -> SqliteItem:
        return record_item(record)

    def _encode_sanitised(self, record: Record, notes: set[str]) -> SqliteItem:
        return sanitised_item(record, notes)

    def _encode_rejected(self, record: Record, reason: str) -> SqliteItem:
        return rejected_item(record, reason)

    def _write_batch(self, batch: Sequence[SqliteItem]) -> None:
        store_batch(self._conn, batch)

    def _release(self) -> None:
        self._conn.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise SinkClosedError(
                f"SqliteSink({self._target!r}) is closed; read with SqliteReader(path)"
            )
        self.flush()
        with self._io_lock:
            yield self._conn


class SqliteReader(_SqliteQueries, ClosesOnExit):
    """Read a database written by :class:`SqliteSink`, read-only.

    Raises ``FileNotFoundError`` for a missing file and :class:`SchemaError`
    for a file that is not a database, not ours, or of a schema version it
    cannot read: it reads the current one and version 3 (whose usage records
    read with ``service_tier=None``); open an older one once with
    :class:`SqliteSink` to migrate it. Safe to share between threads.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self._path = Path(path)
        if not self._path.is_file():
            raise FileNotFoundError(2, "no such database file", str(self._path))
        uri = "file:" + urllib.parse.quote(str(self._path.resolve())) + "?mode=ro"
        self._conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with _closed_on_error(self._conn, f"{self._path} is not a SQLite database"):
            version = check_schema(self._conn, str(self._path))
            if version not in READABLE_VERSIONS:
                raise SchemaError(
                    f"{self._path} has schema version {version}, this reader needs "
                    f"{SCHEMA_VERSION} (or 3); open it once with SqliteSink to migrate it"
                )
        if version != SCHEMA_VERSION:
            self._usage_columns = USAGE_COLUMNS_V3

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn


@contextmanager
def _closed_on_error(conn: sqlite3.Connection, not_a_database: str) -> Iterator[None]:
    """Close ``conn`` if the block fails; report a file SQLite cannot read as :class:`SchemaError`.

    ``not_a_database`` starts the message of that :class:`SchemaError`; the
    ``sqlite3.DatabaseError`` is its cause.
    """
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SchemaError(f"{not_a_database}: {exc}") from exc
    except BaseException:
        conn.close()
        raise


class _Where:
    """Build a parameterised WHERE clause from optional filters."""

    __slots__ = ("clauses", "params")

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []

    def equal(self, column: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise InvalidValueError(f"{column} filter must be a str, got {value!r}")
        self.clauses.append(f"{column} = ?")
        self.params.append(value)

    def project(self, project: str | int | None) -> None:
        if project is None:
            return
        if isinstance(project, bool) or not isinstance(project, (str, int)):
            raise InvalidValueError(f"project filter must be a str or int, got {project!r}")
        text = str(project)
        other: object = text
        if isinstance(project, str) and text.strip().lstrip("-").isdigit():
            other = int(text)
        self.clauses.append("project_id IN (?, ?)")
        self.params.extend((project, other))

    def time_range(self, column: str, since: datetime | None, until: datetime | None) -> None:
        for label, value, op in (("since", since, ">="), ("until", until, "<")):
            if value is None:
                continue
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidValueError(f"{label} must be an aware datetime, got {value!r}")
            self.clauses.append(f"{column} {op} ?")
            self.params.append(iso(value))

    def sql(
        self, limit: int | None, newest_first: bool, order: tuple[str, str] = ("ts", "id")
    ) -> str:
        where = f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""
        direction = " DESC" if newest_first else ""
        text = f"{where} ORDER BY {order[0]}{direction}, {order[1]}{direction}"
        if limit is not None:
            self.params.append(int_at_least("limit", limit, 1))
            text += " LIMIT ?"
        return text
