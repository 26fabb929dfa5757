"""A tamper-evident audit trail: every record hash-chained to the one before it, in SQLite.

Reach for :class:`AuditSink` when you must later show that the log of what
your agents did was not edited, cut or reordered after the fact: give it to
an :class:`~techrevati.runtime.orchestrator.Orchestrator` like any sink
(``sinks=[AuditSink("audit.db")]``) and every event and usage record becomes
one row that carries the SHA-256 hash of its predecessor. Records that are
not runtime events (a reviewer's decision, an incident) go into the same
chain with :meth:`AuditLog.append` (or :meth:`AuditSink.append`).
:func:`verify` walks a chain in constant memory and names the first broken
record and why; with ``key=`` every row also carries an HMAC, so a consistent
rewrite of the whole chain is detected too. :func:`archive` moves old
records to an archive file and leaves a signed checkpoint, so the live file
still verifies; :func:`anchor` exports the tip to keep elsewhere. The
command line is :func:`main` (``python -m techrevati.runtime audit verify
audit.db``).

These are technical building blocks for record-keeping, not legal advice:
whether a log like this meets an obligation (the EU AI Act's, or any other)
is for you and your counsel to judge. The chain format is in
:mod:`techrevati.runtime._audit_chain` and docs/compliance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, Protocol, runtime_checkable

from techrevati.runtime._audit_chain import (
    GENESIS_HASH,
    MIN_KEY_BYTES,
    RESERVED_KINDS,
    AuditCheckpoint,
    AuditProblem,
    ChainWalk,
    Failure,
    Signer,
    check_key,
    entry_text,
    record_text,
    rejected_text,
    sanitised_text,
)
from techrevati.runtime._audit_store import (
    AUDIT_APPLICATION_ID,
    AUDIT_SCHEMA_VERSION,
    ROW_COLUMNS,
    AuditChainError,
    AuditKeyError,
    chain_rows,
    check_writer_key,
    connect,
    connect_read_only,
    has_records,
    insert_copied,
    read_checkpoint,
    read_tip,
    recorded_key_id,
    write_checkpoint,
)
from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._sink_base import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WAIT,
    BufferedSink,
    ClosesOnExit,
    Record,
)
from techrevati.runtime._sqlite_rows import write_transaction
from techrevati.runtime._validate import int_at_least, non_empty_str, required_callable
from techrevati.runtime.errors import InvalidValueError, SchemaError, SinkClosedError

__all__ = [
    "AUDIT_APPLICATION_ID",
    "AUDIT_SCHEMA_VERSION",
    "DEFAULT_BUSY_TIMEOUT",
    "GENESIS_HASH",
    "MIN_KEY_BYTES",
    "RESERVED_KINDS",
    "AuditChainError",
    "AuditCheckpoint",
    "AuditAppender",
    "AuditEntry",
    "AuditKeyError",
    "AuditLog",
    "AuditProblem",
    "AuditRecord",
    "AuditSink",
    "AuditVerdict",
    "anchor",
    "archive",
    "chain_status",
    "main",
    "read_key_file",
    "read_records",
    "verify",
]

DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a writer waits for another connection's write lock on the audit file."""

_SYNCHRONOUS: Final = frozenset({"full", "normal"})
_PROG: Final = "python -m techrevati.runtime audit"

Path_ = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Where an appended record landed in the chain: its ``seq`` and ``hash`` (hex)."""

    seq: int
    hash: str
    kind: str


@runtime_checkable
class AuditAppender(Protocol):
    """What takes records of your own into a chain: :class:`AuditLog` and :class:`AuditSink`.

    Type a parameter with it (``audit: AuditAppender``) to accept either: a
    log used alone, or the sink that also chains the runtime's events.
    """

    def append(self, kind: str, payload: Mapping[str, object]) -> AuditEntry:
        """Add one record and commit it; return where it landed."""
        ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored record as :func:`read_records` returns it: seq, kind, the record, its hash."""

    seq: int
    kind: str
    record: dict[str, object]
    hash: str


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """What :func:`verify` found.

    ``ok`` is True when every record checked; then ``first_bad_seq``,
    ``problem``, ``reason`` and ``path`` are ``None``. Otherwise
    ``first_bad_seq`` is the seq of the first record that is wrong (for a
    deletion, the first missing seq), ``problem`` the kind of damage,
    ``reason`` a sentence, and ``path`` the file it is in. ``records`` counts
    the records that checked good, ``tip_seq`` and ``tip_hash`` are the last
    of them (the chain's tip when ``ok``), ``start_seq`` the seq the chain
    was checked from (0: the genesis; else the first file's checkpoint), and
    ``keyed`` whether HMACs were checked (a key was given).
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    problem: AuditProblem | None
    reason: str | None
    path: str | None
    tip_seq: int
    tip_hash: str
    start_seq: int
    keyed: bool

    @property
    def summary(self) -> str:
        """One line: ``ok: ...`` with the span and tip, or ``broken at seq N (problem): why``."""
        if self.ok:
            start = (
                "from the genesis"
                if self.start_seq == 0
                else f"after the checkpoint at seq {self.start_seq}"
            )
            span = f"seq {self.start_seq + 1} to {self.tip_seq}" if self.records else "no records"
            macs = ", HMACs checked" if self.keyed else ""
            noun = "record" if self.records == 1 else "records"
            return (
                f"ok: {self.records} {noun} ({span}) {start}{macs}; "
                f"tip seq {self.tip_seq} {self.tip_hash}"
            )
        return f"broken at seq {self.first_bad_seq} ({self.problem}): {self.path}: {self.reason}"


class AuditLog(ClosesOnExit):
    """Append records to an audit chain one at a time, each durable when ``append`` returns.

    Use it alone for records that are not runtime events (a reviewer's
    decision, an incident), or through :class:`AuditSink`, which buffers
    events and usage records into the same chain. Each :meth:`append` is one
    transaction that reads the chain's tip and adds one row after it, so
    threads sharing a log, and processes and sinks sharing the file, keep one
    gap-free chain. Safe to share between threads.

    ``key`` (bytes, at least 16; 32 random bytes recommended) adds an
    HMAC-SHA256 to every row; the file records the key's id, so opening a
    keyed file without its key, or with another key, raises
    :class:`AuditKeyError`. ``wall_clock`` stamps appended records.
    """

    def __init__(
        self,
        path: Path_,
        *,
        key: bytes | None = None,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wall_clock: WallClock = utc_now,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise InvalidValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        _check_busy_timeout(busy_timeout)
        self._key = check_key(key)
        self._signer = None if self._key is None else Signer(self._key)
        self._now = required_callable("wall_clock", wall_clock)
        self._path = Path(path)
        self._target = str(self._path)
        self._lock = threading.Lock()
        self._closed = False
        self._conn = connect(self._path, busy_timeout=busy_timeout, synchronous=synchronous)
        try:
            check_writer_key(self._conn, self._target, self._key)
            self._tip = read_tip(self._conn, self._target)
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        """The audit file."""
        return self._path

    @property
    def keyed(self) -> bool:
        """Whether rows carry an HMAC."""
        return self._key is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def tip(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last record this log wrote or read at open."""
        with self._lock:
            return self._tip

    def append(self, kind: str, payload: Mapping[str, object]) -> AuditEntry:
        """Add one record ``{"kind": kind, "timestamp": now, "data": payload}`` and commit it.

        ``kind`` names what it is (``"review.decision"``, ``"incident"``);
        the library's own kinds (:data:`RESERVED_KINDS`) are refused.
        ``payload`` must be JSON-serialisable (str keys, or numbers JSON
        writes as text; ``Decimal`` is written as an exact string,
        ``datetime`` as UTC ISO 8601); anything else raises
        :class:`~techrevati.runtime.errors.InvalidValueError` at once.
        Returns where it landed. Raises
        :class:`~techrevati.runtime.errors.SinkClosedError` after :meth:`close`.
        """
        self._check_open()
        non_empty_str("kind", kind)
        if kind in RESERVED_KINDS:
            raise InvalidValueError(
                f"kind {kind!r} is the library's own; use another (such as 'review.decision')"
            )
        if not isinstance(payload, Mapping):
            raise InvalidValueError(f"payload must be a mapping, got {type(payload).__name__}")
        text = entry_text(kind, self._timestamp(), payload)
        seq, digest = self._store([text])
        return AuditEntry(seq, digest, kind)

    def anchor(self) -> AuditCheckpoint:
        """Return the current tip as a checkpoint (signed under the key) to keep elsewhere."""
        with self._lock:
            self._check_open()
            seq, digest = read_tip(self._conn, self._target)
        return AuditCheckpoint.make(seq, digest, self._timestamp(), key=self._key)

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"tip={self._tip[0]}"
        return f"AuditLog({self._target!r}, {state})"

    def _store(self, texts: Sequence[str]) -> tuple[int, str]:
        """Chain ``texts`` after the tip in one transaction; return the new tip."""
        with self._lock:
            self._check_open()
            with write_transaction(self._conn):
                tip = chain_rows(self._conn, self._target, texts, self._signer)
            self._tip = tip
            return tip

    def _check_open(self) -> None:
        if self._closed:
            raise SinkClosedError(f"AuditLog({self._target!r}) is closed")

    def _timestamp(self) -> datetime:
        now = self._now()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise InvalidValueError(f"wall_clock must return an aware datetime, got {now!r}")
        return now


class AuditSink(BufferedSink[str]):
    """An event and usage sink that writes every record into a hash-chained audit file.

    Works wherever a :class:`~techrevati.runtime.sqlite.SqliteSink` does
    (``Orchestrator(sinks=[AuditSink("audit.db")])``) and batches the same
    way: each record is encoded as canonical JSON on the caller's thread and
    buffered; every ``flush_every`` records or ``flush_interval`` seconds a
    batch is chained after the file's tip and committed in one transaction,
    on a background thread (or inline with ``background=False``). The loss
    bound is the buffered sinks': at most ``max_lag`` records to ``kill
    -9``. The chain continues across batches, reopenings and other writers
    of the file (the tip is read in each batch's transaction).

    A record that cannot be encoded as given is stored sanitised, or as a
    ``rejected`` record with the reason, and counted; records dropped
    because ``max_pending`` were waiting for a failing disk are noted in
    the chain by a ``dropped`` record with their count, in the next batch
    that is written. :meth:`append` adds a record of your own after
    everything handed over before it. ``key``: see :class:`AuditLog`.
    """

    def __init__(
        self,
        path: Path_,
        *,
        key: bytes | None = None,
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
        wall_clock: WallClock = utc_now,
    ) -> None:
        self._log = AuditLog(
            path,
            key=key,
            synchronous=synchronous,
            busy_timeout=busy_timeout,
            wall_clock=wall_clock,
        )
        self._chained_drops = 0
        super().__init__(
            self._log.path,
            flush_every=flush_every,
            flush_interval=flush_interval,
            clock=clock,
            background=background,
            max_pending=max_pending,
            on_flush=on_flush,
            max_lag=max_lag,
            max_wait=max_wait,
        )

    @property
    def keyed(self) -> bool:
        """Whether rows carry an HMAC."""
        return self._log.keyed

    @property
    def tip(self) -> tuple[int, str]:
        """The ``(seq, hash)`` of the last record written (not counting buffered ones)."""
        return self._log.tip

    def append(self, kind: str, payload: Mapping[str, object]) -> AuditEntry:
        """Write what is buffered, then add one record of your own; see :meth:`AuditLog.append`.

        Durable when it returns, and after every record handed over before it.
        """
        self.flush()
        return self._log.append(kind, payload)

    def anchor(self) -> AuditCheckpoint:
        """Write what is buffered; return the tip as a checkpoint (see :meth:`AuditLog.anchor`)."""
        self.flush()
        return self._log.anchor()

    def _encode(self, record: Record) -> str:
        return record_text(record)

    def _encode_sanitised(self, record: Record, notes: set[str]) -> str:
        return sanitised_text(record, notes)

    def _encode_rejected(self, record: Record, reason: str) -> str:
        return rejected_text(record, reason)

    def _write_batch(self, batch: Sequence[str]) -> None:
        dropped = self.dropped
        texts = batch
        if dropped > self._chained_drops:
            note = entry_text(
                "dropped",
                self._log._timestamp(),
                {"records": dropped - self._chained_drops, "dropped_total": dropped},
            )
            texts = [note, *batch]
        self._log._store(texts)
        self._chained_drops = dropped

    def _release(self) -> None:
        self._log.close()


def verify(
    path: Path_,
    *more: Path_,
    key: bytes | None = None,
    anchor: AuditCheckpoint | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> AuditVerdict:
    """Check an audit chain, in constant memory; the verdict names the first broken record.

    ``path`` and any ``more`` files are checked in order as one chain (an
    archive, then the live file: each must start where the one before ends).
    The first file's chain starts at the genesis, or at its checkpoint if
    older records were archived (the checkpoint is checked, and with a key
    its HMAC). With ``key`` every row's HMAC is checked too. ``anchor`` (from
    :func:`anchor`, kept elsewhere) must lie on the chain: the hash at its
    seq must be its hash, and the chain must reach it (else its last records
    were cut off).

    Raises ``FileNotFoundError`` for a missing file, :class:`SchemaError`
    for a file that is not an audit file, and
    :class:`~techrevati.runtime.errors.InvalidValueError` for a bad key or
    an anchor that fails its own check or lies before the first file.
    """
    checked_key = check_key(key)
    _check_busy_timeout(busy_timeout)
    if anchor is not None:
        if not isinstance(anchor, AuditCheckpoint):
            raise InvalidValueError(
                f"anchor must be an AuditCheckpoint or None, got {type(anchor).__name__}"
            )
        why = anchor.problem(checked_key)
        if why is not None:
            raise InvalidValueError(f"the anchor cannot be trusted: {why}")
    walk = ChainWalk(checked_key, anchor)
    for index, file in enumerate((Path(path), *map(Path, more))):
        failure = _walk_file(walk, file, first=index == 0, busy_timeout=busy_timeout)
        if failure is not None:
            return _verdict(walk, failure, str(file))
    failure = walk.finish()
    if failure is not None:
        return _verdict(walk, failure, str(Path(path) if not more else Path(more[-1])))
    return _verdict(walk, None, None)


def anchor(path: Path_, *, key: bytes | None = None) -> AuditCheckpoint:
    """Verify ``path`` and return its tip as a checkpoint to keep somewhere else.

    Hand it back later as ``verify(path, anchor=...)``: that detects records
    cut off the end, and (without a key) a consistent rewrite of the chain,
    which the chain alone cannot show. Signed with ``key`` when given.
    Raises :class:`AuditChainError` if the chain does not verify.
    """
    verdict = verify(path, key=key)
    if not verdict.ok:
        raise AuditChainError(f"{path} does not verify, so it is not anchored: {verdict.summary}")
    return AuditCheckpoint.make(verdict.tip_seq, verdict.tip_hash, utc_now(), key=check_key(key))


def archive(
    path: Path_,
    before_seq: int,
    archive_path: Path_,
    *,
    key: bytes | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    wall_clock: WallClock = utc_now,
) -> AuditCheckpoint:
    """Move the records before ``before_seq`` into ``archive_path``; leave a checkpoint in ``path``.

    The live file must verify first (under ``key``, which a keyed file
    needs), else :class:`AuditChainError`. The records go into the archive
    file (created, or continued if it ends where they start: one archive
    file can take every archiving in turn), which then verifies on its own.
    The live file keeps a checkpoint for the last moved record (its seq and
    hash, signed under ``key``) that its chain now starts after, and gains an
    ``archive`` record saying what moved where; ``verify(path)`` and
    ``verify(archive_path, path)`` both pass. Returns the checkpoint.
    SQLite reuses the freed pages; run ``VACUUM`` to shrink the file.

    ``before_seq`` must leave something to move and at most everything
    (``first live seq < before_seq <= tip + 1``). If the move stops half way
    (a crash between the two files' commits) run it again: the archive is
    continued where it ends.
    """
    checked_key = check_key(key)
    int_at_least("before_seq", before_seq, 2)
    required_callable("wall_clock", wall_clock)
    now = wall_clock()
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidValueError(f"wall_clock must return an aware datetime, got {now!r}")
    live_path, into = Path(path), Path(archive_path)
    if not live_path.is_file():
        raise FileNotFoundError(2, "no such audit file", str(live_path))
    if into.exists() and into.resolve() == live_path.resolve():
        raise InvalidValueError(f"archive_path must be another file than {path}")
    verdict = verify(live_path, key=checked_key, busy_timeout=busy_timeout)
    if not verdict.ok:
        raise AuditChainError(
            f"{path} does not verify, so nothing was archived: {verdict.summary}", verdict
        )
    first, through = verdict.start_seq + 1, before_seq - 1
    if not first < before_seq <= verdict.tip_seq + 1:
        raise InvalidValueError(
            f"before_seq must be > {first} (the first live seq) and <= "
            f"{verdict.tip_seq + 1} (one past the tip), got {before_seq}"
        )
    with closing(connect(live_path, busy_timeout=busy_timeout, synchronous="full")) as live:
        check_writer_key(live, str(live_path), checked_key)
        digest = _copy_to_archive(live, into, first, through, checked_key, busy_timeout)
        copied = verify(into, key=checked_key, busy_timeout=busy_timeout)
        if not copied.ok or (copied.tip_seq, copied.tip_hash) != (through, digest):
            raise AuditChainError(
                f"the archive {into} does not verify after the copy: {copied.summary}", copied
            )
        checkpoint = AuditCheckpoint.make(through, digest, now, archive=into.name, key=checked_key)
        note = entry_text(
            "archive",
            now,
            {
                "through_seq": through,
                "hash": digest,
                "archive": into.name,
                "records": through - first + 1,
            },
        )
        with write_transaction(live):
            row = live.execute("SELECT hash FROM audit_log WHERE seq = ?", (through,)).fetchone()
            if row is None or row[0] != digest:
                raise AuditChainError(f"seq {through} of {path} changed during the archiving")
            write_checkpoint(live, checkpoint)
            live.execute("DELETE FROM audit_log WHERE seq <= ?", (through,))
            chain_rows(
                live, str(live_path), [note], None if checked_key is None else Signer(checked_key)
            )
    return checkpoint


def chain_status(
    path: Path_, *, key: bytes | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> dict[str, object]:
    """Return the audit chain's status as a JSON-serialisable dict (for the report command).

    Keys: ``path``, ``ok``, ``records``, ``first_seq``, ``tip_seq``,
    ``tip_hash``, ``checkpoint_seq`` (``None`` if the chain starts at the
    genesis), ``keyed`` (the file is written with an HMAC key),
    ``hmac_checked`` (a key was given), ``first_bad_seq``, ``problem``,
    ``reason`` and ``summary`` (one line). Raises as :func:`verify` does.
    """
    verdict = verify(path, key=key, busy_timeout=busy_timeout)
    with closing(connect_read_only(Path(path), busy_timeout=busy_timeout)) as conn:
        keyed = recorded_key_id(conn) is not None
    return {
        "path": str(path),
        "ok": verdict.ok,
        "records": verdict.records,
        "first_seq": verdict.start_seq + 1,
        "tip_seq": verdict.tip_seq,
        "tip_hash": verdict.tip_hash,
        "checkpoint_seq": verdict.start_seq or None,
        "keyed": keyed,
        "hmac_checked": verdict.keyed,
        "first_bad_seq": verdict.first_bad_seq,
        "problem": None if verdict.problem is None else verdict.problem.value,
        "reason": verdict.reason,
        "summary": verdict.summary,
    }


def read_records(
    path: Path_,
    *,
    kind: str | None = None,
    after_seq: int = 0,
    limit: int | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> list[AuditRecord]:
    """Return stored records in chain order, of ``kind`` if given, after ``after_seq``.

    This reads; it does not verify (call :func:`verify` for that). A row
    whose record is not a JSON object is returned with ``kind`` ``""`` and
    the text under ``"text"``.
    """
    int_at_least("after_seq", after_seq, 0)
    if limit is not None:
        int_at_least("limit", limit, 1)
    found: list[AuditRecord] = []
    with closing(connect_read_only(Path(path), busy_timeout=busy_timeout)) as conn:
        rows = conn.execute(
            "SELECT seq, record, hash FROM audit_log WHERE seq > ? ORDER BY id", (after_seq,)
        )
        for seq, text, digest in rows:
            try:
                value = json.loads(text)
            except (TypeError, ValueError, RecursionError):
                value = None
            record: dict[str, object] = value if isinstance(value, dict) else {"text": str(text)}
            got = record.get("kind") if isinstance(value, dict) else ""
            name = got if isinstance(got, str) else ""
            if kind is None or name == kind:
                found.append(AuditRecord(int(seq), name, record, str(digest)))
                if limit is not None and len(found) >= limit:
                    break
    return found


def read_key_file(path: Path_) -> bytes:
    """Return the key a key file holds: its bytes, less one trailing newline (LF or CRLF)."""
    raw = Path(path).read_bytes()
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw


def main(argv: Sequence[str]) -> int:
    """Run ``verify PATH [PATH ...]``, ``archive PATH --before SEQ --to FILE`` or ``anchor PATH``.

    ``verify`` prints one line, ``ok: ...`` (exit 0) or ``broken at seq N
    (problem): ...`` (exit 2); ``--key-file`` checks HMACs, ``--anchor``
    checks the chain against an anchor file written by ``anchor`` (which
    prints the tip as one line of JSON). Bad input (a missing file, a file
    that is not an audit file, bad arguments) prints one line on stderr
    and exits 2.
    """
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Verify, archive or anchor a tamper-evident audit chain."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check the chain; name the first broken record")
    check.add_argument("paths", nargs="+", metavar="PATH", help="audit files, oldest first")
    check.add_argument("--anchor", metavar="FILE", help="an anchor written by 'anchor'")
    move = commands.add_parser("archive", help="move old records out, leaving a checkpoint")
    move.add_argument("path", metavar="PATH")
    move.add_argument("--before", type=int, required=True, metavar="SEQ", help="first seq kept")
    move.add_argument("--to", required=True, metavar="ARCHIVE", help="the archive file")
    tip = commands.add_parser("anchor", help="print the tip as a checkpoint to keep elsewhere")
    tip.add_argument("path", metavar="PATH")
    for sub in (check, move, tip):
        sub.add_argument("--key-file", metavar="FILE", help="the HMAC key (the file's bytes)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        key = None if args.key_file is None else read_key_file(args.key_file)
        if args.command == "verify":
            mark = (
                None
                if args.anchor is None
                else AuditCheckpoint.from_json(Path(args.anchor).read_bytes())
            )
            verdict = verify(*args.paths, key=key, anchor=mark)
            print(_printable(verdict.summary))
            return 0 if verdict.ok else 2
        if args.command == "archive":
            done = archive(args.path, args.before, args.to, key=key)
            print(
                _printable(
                    f"archived seq {done.seq} and before to {args.to}; "
                    f"{args.path} now starts after the checkpoint at seq {done.seq}"
                )
            )
            return 0
        print(anchor(args.path, key=key).to_json())
        return 0
    except FileNotFoundError as exc:
        return _fail(f"no such file: {exc.filename}")
    except (
        AuditChainError,
        AuditKeyError,
        InvalidValueError,
        SchemaError,
        OSError,
        sqlite3.Error,
    ) as exc:
        return _fail(str(exc))


def _walk_file(walk: ChainWalk, file: Path, *, first: bool, busy_timeout: float) -> Failure | None:
    """Feed one file's checkpoint and rows to ``walk``; return the first failure, or None."""
    with closing(connect_read_only(file, busy_timeout=busy_timeout)) as conn:
        conn.execute("BEGIN")  # one snapshot: a writer or an archiving meanwhile is not seen
        try:
            return _walk_snapshot(walk, conn, file, first=first)
        finally:
            conn.execute("ROLLBACK")


def _walk_snapshot(
    walk: ChainWalk, conn: sqlite3.Connection, file: Path, *, first: bool
) -> Failure | None:
    checkpoint = read_checkpoint(conn)
    mark = walk.anchor
    start = 0 if checkpoint is None else checkpoint.seq
    if first and mark is not None and type(start) is int and mark.seq < start:
        raise InvalidValueError(
            f"the anchor's seq {mark.seq} is before the records of {file} (they start after "
            f"seq {start}); verify the archive first: verify(archive, {file.name!r}, ...)"
        )
    failure = walk.start(checkpoint)
    if failure is not None:
        return failure
    at = [0]

    def later(seq: int) -> bool:
        found = conn.execute(
            "SELECT 1 FROM audit_log WHERE seq = ? AND id > ? LIMIT 1", (seq, at[0])
        ).fetchone()
        return found is not None

    row = walk.row
    for seq, text, prev, digest, mac, row_id in conn.execute(
        f"SELECT {ROW_COLUMNS}, id FROM audit_log ORDER BY id"
    ):
        at[0] = row_id
        failure = row(seq, text, prev, digest, mac, later=later)
        if failure is not None:
            return failure
    return None


def _verdict(walk: ChainWalk, failure: Failure | None, path: str | None) -> AuditVerdict:
    return AuditVerdict(
        ok=failure is None,
        records=walk.records,
        first_bad_seq=None if failure is None else failure.seq,
        problem=None if failure is None else failure.problem,
        reason=None if failure is None else failure.reason,
        path=path,
        tip_seq=walk.seq,
        tip_hash=walk.prev,
        start_seq=walk.start_seq,
        keyed=walk.key is not None,
    )


def _copy_to_archive(  # noqa: PLR0917 (one private call site)
    live: sqlite3.Connection,
    into: Path,
    first: int,
    through: int,
    key: bytes | None,
    busy_timeout: float,
) -> str:
    """Copy the live records up to ``through`` into the archive; return the hash at ``through``."""
    with closing(connect(into, busy_timeout=busy_timeout, synchronous="full")) as dest:
        check_writer_key(dest, str(into), key)
        with write_transaction(dest):
            checkpoint = read_checkpoint(live)
            if not has_records(dest):
                if checkpoint is not None:
                    write_checkpoint(dest, checkpoint)
                ends = first - 1
            else:
                ends, ends_hash = read_tip(dest, str(into))
                expected: str | None
                if ends == first - 1:
                    expected = GENESIS_HASH if checkpoint is None else checkpoint.hash
                else:
                    row = live.execute(
                        "SELECT hash FROM audit_log WHERE seq = ?", (ends,)
                    ).fetchone()
                    expected = None if row is None else str(row[0])
                if not first - 1 <= ends <= through or ends_hash != expected:
                    raise AuditChainError(
                        f"the archive {into} ends at seq {ends}, which is not where the records "
                        f"to archive (seq {first} to {through}) continue it"
                    )
            insert_copied(
                dest,
                live.execute(
                    "SELECT seq, record, prev_hash, hash, mac FROM audit_log "
                    "WHERE seq > ? AND seq <= ? ORDER BY id",
                    (ends, through),
                ),
            )
        row = live.execute("SELECT hash FROM audit_log WHERE seq = ?", (through,)).fetchone()
    return str(row[0])


def _check_busy_timeout(busy_timeout: object) -> None:
    if (
        not isinstance(busy_timeout, (int, float))
        or isinstance(busy_timeout, bool)
        or not 0 <= busy_timeout < float("inf")
    ):
        raise InvalidValueError(f"busy_timeout must be a number >= 0, got {busy_timeout!r}")


def _printable(text: str) -> str:
    r"""``text`` with every character a terminal would act on written as ``\xNN``."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}"
        for c in text
    )


def _fail(message: str) -> int:
    print(f"audit: {_printable(message)}", file=sys.stderr)
    return 2
