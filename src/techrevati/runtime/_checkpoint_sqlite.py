"""The SQLite checkpoint saver: checkpoints and turn markers in a versioned WAL database.

Private module: :class:`SqliteSaver` is public as
``techrevati.runtime.checkpoints.SqliteSaver`` (loaded on first use, so
importing that module does not load :mod:`sqlite3`). A checkpoint file is
its own database, told apart from the event log of
:class:`~techrevati.runtime.sqlite.SqliteSink` by ``PRAGMA application_id``
:data:`CHECKPOINT_APPLICATION_ID` and versioned by ``PRAGMA user_version``
:data:`CHECKPOINT_SCHEMA_VERSION`; it opens like the sink's (WAL,
``busy_timeout``, ``synchronous`` ``full`` or ``normal``) and writes each
checkpoint in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

from techrevati.runtime._checkpoint_delta import SNAPSHOT, GrowthCheck, Write, decode, rebuild
from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._record_text import iso
from techrevati.runtime._sqlite_rows import write_transaction
from techrevati.runtime._validate import non_empty_str, non_negative_number, optional_int_at_least
from techrevati.runtime.checkpoints import (
    DEFAULT_HISTORY,
    Checkpoint,
    CheckpointWrite,
    PendingTurn,
    SaverClosedError,
    TurnStatus,
    _BaseSaver,
    _committed_twice,
    _conflict_of,
    _stored,
)
from techrevati.runtime.errors import InvalidValueError, SchemaError
from techrevati.runtime.sqlite import DEFAULT_BUSY_TIMEOUT, SQLITE_APPLICATION_ID, _closed_on_error

__all__ = ["CHECKPOINT_APPLICATION_ID", "CHECKPOINT_SCHEMA_VERSION", "SqliteSaver"]

CHECKPOINT_SCHEMA_VERSION: Final = 1
"""The checkpoint file's schema version (``PRAGMA user_version``)."""

CHECKPOINT_APPLICATION_ID: Final = 0x54524350
"""``PRAGMA application_id`` of a checkpoint file (ASCII ``TRCP``)."""

_P = ParamSpec("_P")
_T = TypeVar("_T")

_SCHEMA_V1: Final = (
    # kind: 0 a snapshot (state is the whole caller state), 1 a list's appended items,
    # 2 a dict's [appends, sets]; snapshot_step is the step of the snapshot a row builds on.
    """CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        thread_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        snapshot_step INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        state BLOB NOT NULL,
        runtime BLOB NOT NULL,
        turn_key TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (thread_id, step)
    )""",
    # One row per turn begun or committed; status 'started' or 'committed'.
    """CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        thread_id TEXT NOT NULL,
        turn_key TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        started_at TEXT,
        step INTEGER,
        UNIQUE (thread_id, turn_key)
    )""",
    "CREATE INDEX turns_started ON turns (thread_id, id) WHERE status = 'started'",
)
_TABLES: Final = frozenset({"checkpoints", "turns"})
_SYNCHRONOUS: Final = frozenset({"full", "normal"})
_LATEST: Final = (
    "SELECT step, turn_key, snapshot_step FROM checkpoints WHERE thread_id = ? "
    "ORDER BY step DESC LIMIT 1"
)
_COLUMNS: Final = "step, snapshot_step, kind, state, runtime, turn_key, created_at"


class SqliteSaver(_BaseSaver):
    """Store checkpoints and turn markers in a SQLite database (WAL mode).

    Each ``put`` is one ``BEGIN IMMEDIATE`` transaction (the checkpoint row
    and its turn's ``committed`` marker), so after ``kill -9`` the file holds
    every checkpoint whose ``put`` returned and nothing of one that did not;
    ``begin_turn`` commits its marker the same way before the turn runs.
    ``synchronous="full"`` (default) syncs the write-ahead log at each commit,
    so a power loss keeps them too; ``"normal"`` skips that sync (a power loss
    may lose the last commits, ``kill -9`` loses none).

    ``growth_check`` says how a list state that only grew is recognised
    (``"prefix"``: its first items compare ``==`` to the saver's copy of the
    last state; ``"tail"``: only the last item of the last state is compared,
    so a put costs the same at any length, but an older item edited in place
    is not seen). ``keep`` (``None``: all) prunes a thread to its newest
    ``keep`` checkpoints and the ones before them back to a snapshot;
    ``clock`` stamps ``created_at``.

    Opening a file that is not a checkpoint file of this schema (an event log
    of ``SqliteSink``, another application's database, another version)
    raises :class:`~techrevati.runtime.errors.SchemaError`. Safe to share
    between threads (one connection, one lock) and between processes
    (``busy_timeout``): a put planned as a delta on a state another writer
    has since replaced is stored whole instead. The async twins run the
    SQLite work on a worker thread (``asyncio.to_thread``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        growth_check: GrowthCheck = "prefix",
        keep: int | None = None,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: WallClock = utc_now,
    ) -> None:
        super().__init__(growth_check=growth_check, keep=keep, clock=clock)
        if synchronous not in _SYNCHRONOUS:
            raise InvalidValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        timeout = non_negative_number("busy_timeout", busy_timeout)
        self._path = Path(path)
        self._conn = sqlite3.connect(
            self._path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._closed = False
        with _closed_on_error(self._conn, f"{self._path} is not a usable SQLite database"):
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            _ensure_schema(self._conn, str(self._path))

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def latest(self, thread_id: str) -> Checkpoint | None:
        """Return the thread's last checkpoint, or ``None`` if it has none."""
        non_empty_str("thread_id", thread_id)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND step >= "
                "(SELECT snapshot_step FROM checkpoints WHERE thread_id = ? "
                "ORDER BY step DESC LIMIT 1) ORDER BY step",
                (thread_id, thread_id),
            ).fetchall()
        if not rows:
            return None
        return _checkpoint(thread_id, rows, len(rows) - 1, self._path)

    def history(self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY) -> list[Checkpoint]:
        """Return the thread's checkpoints, newest first, at most ``limit`` (``None``: all)."""
        non_empty_str("thread_id", thread_id)
        optional_int_at_least("limit", limit, 1)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM checkpoints WHERE thread_id = ? AND step >= "
                "(SELECT min(snapshot_step) FROM (SELECT snapshot_step FROM checkpoints "
                "WHERE thread_id = ? ORDER BY step DESC LIMIT ?)) ORDER BY step",
                (thread_id, thread_id, -1 if limit is None else limit),
            ).fetchall()
        count = len(rows) if limit is None else min(limit, len(rows))
        return [_checkpoint(thread_id, rows, len(rows) - 1 - n, self._path) for n in range(count)]

    def begin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Mark the turn as started (committed before this returns); return its status before.

        ``UNKNOWN``: its first start. ``STARTED``: it was begun before and not
        committed (the process died in it, or it failed): this is a re-run,
        counted in :attr:`PendingTurn.attempts`. ``COMMITTED``: nothing changes.
        """
        non_empty_str("thread_id", thread_id)
        non_empty_str("turn_key", turn_key)
        with self._connection() as conn, write_transaction(conn):
            row = conn.execute(
                "SELECT status FROM turns WHERE thread_id = ? AND turn_key = ?",
                (thread_id, turn_key),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO turns (thread_id, turn_key, status, attempts, started_at) "
                    "VALUES (?, ?, 'started', 1, ?)",
                    (thread_id, turn_key, iso(self._clock())),
                )
                return TurnStatus.UNKNOWN
            if row[0] == TurnStatus.COMMITTED:
                return TurnStatus.COMMITTED
            conn.execute(
                "UPDATE turns SET attempts = attempts + 1 WHERE thread_id = ? AND turn_key = ?",
                (thread_id, turn_key),
            )
            return TurnStatus.STARTED

    def turn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Return the turn's status."""
        non_empty_str("thread_id", thread_id)
        non_empty_str("turn_key", turn_key)
        with self._connection() as conn:
            row = conn.execute(
                "SELECT status FROM turns WHERE thread_id = ? AND turn_key = ?",
                (thread_id, turn_key),
            ).fetchone()
        return TurnStatus.UNKNOWN if row is None else TurnStatus(row[0])

    def pending_turn(self, thread_id: str) -> PendingTurn | None:
        """Return the turn most recently begun and not committed, if any."""
        non_empty_str("thread_id", thread_id)
        with self._connection() as conn:
            row = conn.execute(
                "SELECT turn_key, attempts, started_at FROM turns "
                "WHERE thread_id = ? AND status = 'started' ORDER BY id DESC LIMIT 1",
                (thread_id,),
            ).fetchone()
        if row is None:
            return None
        return PendingTurn(thread_id, row[0], row[1], datetime.fromisoformat(row[2]))

    def delete_thread(self, thread_id: str) -> None:
        """Remove the thread's checkpoints and markers."""
        non_empty_str("thread_id", thread_id)
        with self._connection() as conn, write_transaction(conn):
            conn.execute("DELETE FROM checkpoints WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM turns WHERE thread_id = ?", (thread_id,))
            self._tips.forget(thread_id)

    def close(self) -> None:
        """Close the connection; idempotent. Any use afterwards raises :class:`SaverClosedError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _commit(self, write: Write) -> CheckpointWrite:
        with self._connection() as conn:
            with write_transaction(conn):
                last = conn.execute(_LATEST, (write.thread_id,)).fetchone()
                _conflict_of(write, None if last is None else (last[0], last[1]))
                marker = conn.execute(
                    "SELECT status, step FROM turns WHERE thread_id = ? AND turn_key = ?",
                    (write.thread_id, write.turn_key),
                ).fetchone()
                if marker is not None and marker[0] == TurnStatus.COMMITTED:
                    raise _committed_twice(write, marker[1], None if last is None else last[0])
                snapshot_step = write.step if last is None or write.kind == SNAPSHOT else last[2]
                conn.execute(
                    f"INSERT INTO checkpoints (thread_id, {_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        write.thread_id,
                        write.step,
                        snapshot_step,
                        write.kind,
                        write.state,
                        write.runtime,
                        write.turn_key,
                        iso(self._clock()),
                    ),
                )
                conn.execute(
                    "INSERT INTO turns (thread_id, turn_key, status, attempts, step) "
                    "VALUES (?, ?, 'committed', 0, ?) ON CONFLICT (thread_id, turn_key) "
                    "DO UPDATE SET status = 'committed', step = excluded.step",
                    (write.thread_id, write.turn_key, write.step),
                )
                if self._keep is not None:
                    _prune(conn, write.thread_id, self._keep)
            self._tips.advance(write)  # under the connection's lock: tips move in commit order
        return _stored(write)

    async def _in_thread(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise SaverClosedError(f"SqliteSaver({os.fspath(self._path)!r}) is closed")
            yield self._conn


def _checkpoint(thread_id: str, rows: list[Any], index: int, path: Path) -> Checkpoint:
    """Rebuild the checkpoint of ``rows[index]`` from its snapshot and the deltas after it."""
    step, snapshot_step, _, _, runtime, turn_key, created_at = rows[index]
    start = index
    while rows[start][0] != snapshot_step:
        start -= 1
        if start < 0:
            raise SchemaError(
                f"{path}: checkpoint {step} of thread {thread_id!r} has no snapshot "
                f"(step {snapshot_step}) to rebuild it from"
            )
    state = rebuild((row[2], row[3]) for row in rows[start : index + 1])
    return Checkpoint(
        thread_id, step, state, decode(runtime), turn_key, datetime.fromisoformat(created_at)
    )


def _prune(conn: sqlite3.Connection, thread_id: str, keep: int) -> None:
    """Drop the rows (and committed markers) older than the snapshot the newest ``keep`` need."""
    row = conn.execute(
        "SELECT snapshot_step FROM checkpoints WHERE thread_id = ? "
        "ORDER BY step DESC LIMIT 1 OFFSET ?",
        (thread_id, keep - 1),
    ).fetchone()
    if row is None:
        return
    boundary = row[0]
    oldest = conn.execute(
        "SELECT min(step) FROM checkpoints WHERE thread_id = ?", (thread_id,)
    ).fetchone()[0]
    if oldest < boundary:
        conn.execute(
            "DELETE FROM checkpoints WHERE thread_id = ? AND step < ?", (thread_id, boundary)
        )
        conn.execute(
            "DELETE FROM turns WHERE thread_id = ? AND status = 'committed' AND step < ?",
            (thread_id, boundary),
        )


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in an empty file, or refuse one that is not a checkpoint file of ours."""
    with write_transaction(conn):
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if app_id == SQLITE_APPLICATION_ID:
            raise SchemaError(
                f"{path} is an event log of SqliteSink, not a checkpoint file: give "
                "SqliteSaver a file of its own"
            )
        if app_id not in (0, CHECKPOINT_APPLICATION_ID):
            raise SchemaError(f"{path} belongs to another application (application_id {app_id})")
        if app_id == 0 and version == 0:
            if tables:
                raise SchemaError(
                    f"{path} has tables {sorted(tables)!r} but no techrevati checkpoint schema"
                )
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {CHECKPOINT_SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {CHECKPOINT_APPLICATION_ID}")
            return
        if version != CHECKPOINT_SCHEMA_VERSION:
            raise SchemaError(
                f"{path} has checkpoint schema version {version}; this library knows "
                f"{CHECKPOINT_SCHEMA_VERSION}"
            )
        missing = _TABLES - tables
        if missing:
            raise SchemaError(
                f"{path} has no techrevati checkpoint schema (missing {sorted(missing)!r})"
            )
