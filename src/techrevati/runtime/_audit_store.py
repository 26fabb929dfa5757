"""Where the audit chain lives: its SQLite file, schema, tip, checkpoint, and how rows are added.

An audit file carries ``PRAGMA application_id`` :data:`AUDIT_APPLICATION_ID`
(ASCII ``TRAU``) and ``PRAGMA user_version`` :data:`AUDIT_SCHEMA_VERSION`;
it is its own file, never a :class:`~techrevati.runtime.sqlite.SqliteSink`
database. Three tables:

- ``audit_log (id, seq, record, prev_hash, hash, mac)``: one row per record,
  in the order written (``id``); ``seq`` is a plain column, not the key, so
  that a row moved or inserted out of order shows as such.
- ``audit_checkpoint``: at most one row, the point the file's chain starts
  after once older records were archived.
- ``audit_meta (name, value)``: ``key_id``, the id of the HMAC key the chain
  is written with, so a writer refuses a missing or wrong key.

:func:`chain_rows` chains records after the tip read inside the caller's
transaction, so several writers (threads, processes) share one gap-free chain.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from techrevati.runtime._audit_chain import (
    GENESIS,
    AuditCheckpoint,
    Signer,
    key_id,
    link,
)
from techrevati.runtime._sqlite_rows import write_transaction
from techrevati.runtime.errors import SchemaError, TechrevatiError

AUDIT_APPLICATION_ID: Final = 0x54524155
"""``PRAGMA application_id`` of an audit file (ASCII ``TRAU``)."""

AUDIT_SCHEMA_VERSION: Final = 1
"""The audit file's schema version (``PRAGMA user_version``)."""

_SCHEMA: Final = (
    """CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        record TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT
    )""",
    """CREATE TABLE audit_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        records INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        archive TEXT,
        check_hash TEXT NOT NULL,
        mac TEXT
    )""",
    "CREATE TABLE audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_TABLES: Final = frozenset({"audit_log", "audit_checkpoint", "audit_meta"})
_INSERT: Final = "INSERT INTO audit_log (seq, record, prev_hash, hash, mac) VALUES (?, ?, ?, ?, ?)"
_CHECKPOINT_COLUMNS: Final = "seq, hash, records, created_at, archive, check_hash, mac"
ROW_COLUMNS: Final = "seq, CAST(record AS BLOB), prev_hash, hash, mac"
"""The columns :class:`~techrevati.runtime._audit_chain.ChainWalk.row` takes, in order."""


class AuditChainError(TechrevatiError, ValueError):
    """An audit chain that cannot be continued or archived as asked: broken, or not in one line.

    ``verdict`` is the :class:`~techrevati.runtime.audit.AuditVerdict` that
    found it broken, when a verification did (``None`` otherwise).
    """

    def __init__(self, message: str, verdict: object = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class AuditKeyError(TechrevatiError, ValueError):
    """The HMAC key does not fit the audit file: missing for a keyed file, or not its key."""


def connect(path: Path, *, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open (creating) an audit file for writing, in WAL mode; refuse a file that is not one."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        with write_transaction(conn):
            if check_schema(conn, str(path)) == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {AUDIT_SCHEMA_VERSION}")
                conn.execute(f"PRAGMA application_id = {AUDIT_APPLICATION_ID}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SchemaError(f"{path} is not a usable SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def connect_read_only(path: Path, *, busy_timeout: float) -> sqlite3.Connection:
    """Open an existing audit file read-only; FileNotFoundError or SchemaError if it is none."""
    if not path.is_file():
        raise FileNotFoundError(2, "no such audit file", str(path))
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(
        uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        if check_schema(conn, str(path)) == 0:
            raise SchemaError(f"{path} is empty: not an audit file")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SchemaError(f"{path} is not a SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version (0 for an empty file), or raise :class:`SchemaError`."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if app_id == 0 and version == 0 and not tables:
        return 0
    if app_id != AUDIT_APPLICATION_ID:
        raise SchemaError(
            f"{path} is not an audit file (application_id {app_id:#x}, tables {sorted(tables)!r})"
        )
    if version != AUDIT_SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has audit schema version {version}; this library knows {AUDIT_SCHEMA_VERSION}"
        )
    missing = _TABLES - tables
    if missing:
        raise SchemaError(f"{path} is not a whole audit file (missing {sorted(missing)!r})")
    return version


def check_writer_key(conn: sqlite3.Connection, path: str, key: bytes | None) -> None:
    """Refuse a key that is not the file's (or none for a keyed file); record it in a new file."""
    with write_transaction(conn):
        row = conn.execute("SELECT value FROM audit_meta WHERE name = 'key_id'").fetchone()
        recorded = None if row is None else str(row[0])
        if recorded is None and key is not None:
            if has_records(conn):
                raise AuditKeyError(
                    f"{path} was started without a key; a keyed chain needs a new file"
                )
            conn.execute(
                "INSERT INTO audit_meta (name, value) VALUES ('key_id', ?)", (key_id(key),)
            )
        elif recorded is not None and key is None:
            raise AuditKeyError(f"{path} is written with an HMAC key: pass key=")
        elif recorded is not None and key is not None and recorded != key_id(key):
            raise AuditKeyError(f"the key given is not the HMAC key of {path}")


def recorded_key_id(conn: sqlite3.Connection) -> str | None:
    """Return the id of the key the file is written with, or None for an unkeyed file."""
    row = conn.execute("SELECT value FROM audit_meta WHERE name = 'key_id'").fetchone()
    return None if row is None else str(row[0])


def has_records(conn: sqlite3.Connection) -> bool:
    """Whether the file holds a record or a checkpoint."""
    return (
        conn.execute("SELECT 1 FROM audit_log LIMIT 1").fetchone() is not None
        or conn.execute("SELECT 1 FROM audit_checkpoint").fetchone() is not None
    )


def read_checkpoint(conn: sqlite3.Connection) -> AuditCheckpoint | None:
    """Return the file's checkpoint as stored (its fields unchecked), or None."""
    row = conn.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoint").fetchone()
    if row is None:
        return None
    return AuditCheckpoint(*row)


def write_checkpoint(conn: sqlite3.Connection, checkpoint: AuditCheckpoint) -> None:
    """Store ``checkpoint`` as the file's one checkpoint (inside the caller's transaction)."""
    conn.execute(
        f"INSERT OR REPLACE INTO audit_checkpoint (id, {_CHECKPOINT_COLUMNS}) "
        "VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
        (
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.records,
            checkpoint.created_at,
            checkpoint.archive,
            checkpoint.check,
            checkpoint.mac,
        ),
    )


def read_tip(conn: sqlite3.Connection, path: str) -> tuple[int, str]:
    """Return the last record's ``(seq, hash)``; else the checkpoint's; else the genesis."""
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        row = conn.execute("SELECT seq, hash FROM audit_checkpoint").fetchone()
        if row is None:
            return 0, GENESIS.hex()
    seq, digest = row
    if type(seq) is not int or seq < 0 or type(digest) is not str or len(digest) != 64:
        raise AuditChainError(
            f"the last record of {path} is malformed (seq {seq!r:.40}); "
            "verify the file before writing to it"
        )
    return seq, digest


def chain_rows(
    conn: sqlite3.Connection, path: str, texts: Sequence[str], signer: Signer | None
) -> tuple[int, str]:
    """Chain ``texts`` after the tip and insert them (inside the caller's transaction).

    Returns the new tip ``(seq, hash)``.
    """
    seq, prev_hex = read_tip(conn, path)
    try:
        prev = bytes.fromhex(prev_hex)
    except ValueError:
        raise AuditChainError(
            f"the hash of the last record of {path} (seq {seq}) is not hex; verify the file"
        ) from None
    rows: list[tuple[int, str, str, str, str | None]] = []
    append = rows.append
    for text in texts:
        seq += 1
        digest = link(prev, seq, text.encode("ascii"))
        digest_hex = digest.hex()
        append((seq, text, prev_hex, digest_hex, None if signer is None else signer(digest).hex()))
        prev, prev_hex = digest, digest_hex
    conn.executemany(_INSERT, rows)
    return seq, prev_hex


def insert_copied(conn: sqlite3.Connection, rows: Iterator[Sequence[object]]) -> None:
    """Insert rows copied as they are from another audit file (``seq, record, prev, hash, mac``)."""
    conn.executemany(_INSERT, rows)
