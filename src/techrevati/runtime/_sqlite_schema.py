"""The SQLite sink's schema: its tables, its version, and the migration from older versions.

A database of ours carries ``PRAGMA application_id`` :data:`SQLITE_APPLICATION_ID`
and ``PRAGMA user_version`` :data:`SCHEMA_VERSION`. :func:`ensure_schema`
creates the tables in an empty file, migrates an older version in place and
refuses a file that is not ours (:class:`SchemaError`); :func:`check_schema`
only reads the version, for a read-only reader, which reads a version-3 file
as it is (:data:`READABLE_VERSIONS`: version 4 only added ``usage.service_tier``,
read as NULL there). The public names are
re-exported from :mod:`techrevati.runtime.sqlite`.

The ``rejected`` table (records quarantined because no column could hold
them) and the views ``turns`` and ``session_summary`` (for sqlite3, pandas,
DuckDB) are additions no reader of schema 3 depends on: every sink creates
them when it opens a file that lacks them, without a new schema version, so
files written before them still open in any reader of version 3 or 4. The views
select ``*`` so that a migration can still add or drop a table's columns; a
view whose definition changes must come with a new version and a migration
that drops the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from techrevati.runtime._sessions import SESSION_EVENT_NAMES
from techrevati.runtime._sink_base import log_event
from techrevati.runtime._sqlite_rows import (
    EVENT_COLUMNS,
    event_from_row,
    json_object,
    model_of,
    store_session_event,
    write_transaction,
)
from techrevati.runtime.errors import SchemaError

if TYPE_CHECKING:
    import sqlite3

SCHEMA_VERSION: Final = 4
"""The SQLite schema version this library writes (``PRAGMA user_version``)."""

SQLITE_APPLICATION_ID: Final = 0x54524556
"""``PRAGMA application_id`` of our databases (ASCII ``TREV``)."""


# Version 4 (current). ``project_id`` has no declared type on purpose: SQLite
# keeps 42 an integer and "42" a string, so records read back unchanged.
_SCHEMA_V4: Final = (
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        name TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '',
        worker_id TEXT NOT NULL DEFAULT '',
        project_id,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        status TEXT,
        failure_class TEXT,
        detail TEXT,
        model TEXT,
        data TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '',
        worker_id TEXT NOT NULL DEFAULT '',
        project_id,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd TEXT NOT NULL DEFAULT '0',
        priced INTEGER NOT NULL DEFAULT 1,
        duration_seconds REAL,
        service_tier TEXT
    )""",
)
_SESSIONS_TABLE: Final = """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        duration_seconds REAL,
        cost_usd TEXT,
        turns INTEGER,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        project_id,
        worker_id TEXT NOT NULL DEFAULT '',
        failure_class TEXT,
        error_type TEXT
    )"""
_EXTRAS: Final = (
    """CREATE TABLE IF NOT EXISTS rejected (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    # One row per model turn that reported usage: the usage table with the sums tools want.
    # "*" rather than a column list, so that a migration may still add or drop a column.
    """CREATE VIEW IF NOT EXISTS turns AS SELECT
        *, substr(ts, 1, 10) AS day, input_tokens + output_tokens AS total_tokens,
        CAST(cost_usd AS REAL) AS cost_usd_float
    FROM usage""",
    # One row per session: its sessions row, and what its turns' usage adds up to.
    """CREATE VIEW IF NOT EXISTS session_summary AS SELECT
        s.*, CAST(s.cost_usd AS REAL) AS cost_usd_float,
        COALESCE(u.model_turns, 0) AS model_turns,
        COALESCE(u.input_tokens, 0) AS input_tokens,
        COALESCE(u.output_tokens, 0) AS output_tokens,
        COALESCE(u.input_tokens + u.output_tokens, 0) AS total_tokens,
        COALESCE(u.usage_cost_usd_float, 0.0) AS usage_cost_usd_float
    FROM sessions AS s LEFT JOIN (
        SELECT session_id, count(*) AS model_turns, sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens,
            sum(CAST(cost_usd AS REAL)) AS usage_cost_usd_float
        FROM usage GROUP BY session_id
    ) AS u ON u.session_id = s.session_id""",
)
"""Created IF NOT EXISTS at every open, after any migration (see the module docstring)."""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    "CREATE INDEX IF NOT EXISTS events_session ON events (session_id)",
    "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)",
    "CREATE INDEX IF NOT EXISTS usage_session ON usage (session_id)",
    "CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at)",
)
# Version 1 had no sessions table, no events.model and no cache/reasoning
# token or priced columns in usage; _migrate_1_to_2 adds them and backfills.
_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE events ADD COLUMN model TEXT",
    "ALTER TABLE usage ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN priced INTEGER NOT NULL DEFAULT 1",
    _SESSIONS_TABLE,
)
# Version 2 had no usage.cache_write_1h_tokens; old rows read as 0 one-hour writes.
_MIGRATE_2_TO_3: Final = (
    "ALTER TABLE usage ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0",
)
# Version 3 had no usage.service_tier; old rows read as NULL (no tier reported).
_MIGRATE_3_TO_4: Final = ("ALTER TABLE usage ADD COLUMN service_tier TEXT",)
_REQUIRED_TABLES: Final[Mapping[int, frozenset[str]]] = {
    1: frozenset({"events", "usage"}),
    2: frozenset({"events", "usage", "sessions"}),
    3: frozenset({"events", "usage", "sessions"}),
    4: frozenset({"events", "usage", "sessions"}),
}
READABLE_VERSIONS: Final = frozenset({3, SCHEMA_VERSION})
"""Schema versions a read-only reader reads as they are (3 lacks only ``usage.service_tier``)."""


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the current schema, migrate an older one, or refuse a foreign file."""
    with write_transaction(conn):
        version = check_schema(conn, path)
        if version == 0:
            for statement in (*_SCHEMA_V4, _SESSIONS_TABLE, *_INDEXES):
                conn.execute(statement)
        if version == 1:
            _migrate_1_to_2(conn)
        if version in (1, 2):
            for statement in _MIGRATE_2_TO_3:
                conn.execute(statement)
        if version in (1, 2, 3):
            for statement in _MIGRATE_3_TO_4:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
        for statement in _EXTRAS:
            conn.execute(statement)
    if version not in (0, SCHEMA_VERSION):
        log_event(
            logging.INFO,
            "sink.migrated",
            "%s from schema %d to %d",
            path,
            version,
            SCHEMA_VERSION,
            sink="SqliteSink",
            path=path,
            from_version=version,
            to_version=SCHEMA_VERSION,
        )


def check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version (0 for an empty database), or raise :class:`SchemaError`."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if app_id not in (0, SQLITE_APPLICATION_ID):
        raise SchemaError(f"{path} belongs to another application (application_id {app_id})")
    if version == 0:
        if tables:
            raise SchemaError(f"{path} has tables {sorted(tables)!r} but no techrevati sink schema")
        return 0
    required = _REQUIRED_TABLES.get(version)
    if required is None:
        raise SchemaError(
            f"{path} has schema version {version}; this library knows 1 to {SCHEMA_VERSION}"
        )
    missing = required - tables
    if missing:
        raise SchemaError(f"{path} has no techrevati sink schema (missing {sorted(missing)!r})")
    return version


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    for statement in _MIGRATE_1_TO_2:
        conn.execute(statement)
    for statement in _INDEXES:
        conn.execute(statement)
    updates = []
    for row_id, data in conn.execute("SELECT id, data FROM events"):
        model = model_of(json_object(data))
        if model is not None:
            updates.append((model, row_id))
    conn.executemany("UPDATE events SET model = ? WHERE id = ?", updates)
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE session_id != '' AND name IN (?, ?, ?, ?) "
        "ORDER BY id",
        SESSION_EVENT_NAMES,
    ).fetchall()
    for row in rows:
        store_session_event(conn, event_from_row(row))
